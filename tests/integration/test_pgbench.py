"""pgbench through pgwarden: many concurrent sessions in every query mode complete cleanly.

Proves:
- ``pgbench -i`` (DDL, client-side COPY of 100 000 rows, VACUUM, primary keys) succeeds with a
  ddl-scope token;
- the TPC-B-like workload under a write token, with ``-M simple``, ``-M extended`` and
  ``-M prepared`` (4 clients, 2 threads, 50 transactions each), processes every transaction
  with no failures, and the rows it wrote are really there;
- the select-only workload (``-S``) runs under a read token.

The pgbench tables live in a schema of their own (created by the superuser, CREATE granted to
the ddl role) selected with ``PGOPTIONS=-c search_path=...``, so they cannot collide with
other tests sharing the server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid

import pytest

PGBENCH = shutil.which("pgbench")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(PGBENCH is None, reason="pgbench is not installed")]

CLIENTS, THREADS, TXNS = 4, 2, 50


@pytest.fixture(scope="module")
def bench_schema(proxy, admin):
    schema = f"pgb_{uuid.uuid4().hex[:10]}"
    admin(f"create schema {schema}")
    admin(f"grant usage, create on schema {schema} to pgw_ddl")
    admin(f"grant usage on schema {schema} to pgw_read, pgw_write")
    proc = pgbench(proxy, "ddl", schema, "-i", "-s", "1")
    assert proc.returncode == 0, proc.stderr
    yield schema
    admin(f"drop schema {schema} cascade")


def pgbench(proxy, scope: str, schema: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = proxy.env(scope)
    env["PGOPTIONS"] = f"-c search_path={schema}"
    return subprocess.run([PGBENCH, *args], env=env, capture_output=True, text=True, timeout=timeout)


def check_run(proc: subprocess.CompletedProcess, expected: int) -> str:
    out = proc.stdout
    assert proc.returncode == 0, f"pgbench exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr}"
    m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
    assert m, out
    assert (int(m.group(1)), int(m.group(2))) == (expected, expected), out
    assert "number of failed transactions: 0 " in out, out
    return out


def test_init_created_the_tables(bench_schema, admin):
    counts = dict(admin(
        f"select 'accounts', count(*) from {bench_schema}.pgbench_accounts union all "
        f"select 'branches', count(*) from {bench_schema}.pgbench_branches union all "
        f"select 'tellers', count(*) from {bench_schema}.pgbench_tellers"))
    assert counts == {"accounts": 100_000, "branches": 1, "tellers": 10}
    owner = admin("select tableowner from pg_tables where schemaname = %s and tablename = 'pgbench_accounts'",
                  (bench_schema,))
    assert owner == [("pgw_ddl",)]


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_tpcb_workload_under_write_scope(proxy, bench_schema, admin, mode):
    before = admin(f"select count(*) from {bench_schema}.pgbench_history")[0][0]
    proc = pgbench(proxy, "write", bench_schema, "-n", "-M", mode,
                   "-c", str(CLIENTS), "-j", str(THREADS), "-t", str(TXNS))
    out = check_run(proc, CLIENTS * TXNS)
    assert f"query mode: {mode}" in out
    # Every committed transaction inserted one history row, through the proxy.
    after = admin(f"select count(*) from {bench_schema}.pgbench_history")[0][0]
    assert after - before == CLIENTS * TXNS
    # The balances stay consistent: each transaction applied the same delta to all three tables.
    sums = admin(f"select (select sum(abalance) from {bench_schema}.pgbench_accounts), "
                 f"(select sum(bbalance) from {bench_schema}.pgbench_branches), "
                 f"(select sum(tbalance) from {bench_schema}.pgbench_tellers), "
                 f"(select sum(delta) from {bench_schema}.pgbench_history)")[0]
    assert len(set(sums)) == 1, sums


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_select_only_under_read_scope(proxy, bench_schema, mode):
    proc = pgbench(proxy, "read", bench_schema, "-n", "-S", "-M", mode,
                   "-c", str(CLIENTS), "-j", str(THREADS), "-t", str(TXNS))
    out = check_run(proc, CLIENTS * TXNS)
    assert "select only" in out


def test_tpcb_refused_under_read_scope(proxy, bench_schema):
    """The read scope really is read-only: the write workload fails on its first UPDATE."""
    proc = pgbench(proxy, "read", bench_schema, "-n", "-c", "1", "-t", "1")
    assert proc.returncode != 0
    assert "pgwarden: UPDATE is write class; this grant's scope is read" in proc.stderr, proc.stderr

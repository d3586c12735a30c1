"""pg_dump runs through pgwarden under the read scope (DESIGN.md, "Decisions since the first issues").

pg_dump's catalog queries, ``SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY``,
its harmless ``SET``/``set_config`` calls, its ACCESS SHARE locks, the catalog functions it
calls (``pg_get_viewdef``, ``pg_get_functiondef``, ``format_type``, ...) and its
``COPY ... TO stdout`` must all be allowed.  A schema with a table (with data), a view, a
function and a sequence is dumped in plain and custom format with default options; the dump
must contain the data and the definitions.  When pg_dump fails, the assertion message quotes
pgwarden's denial (statement and rule) from its stderr and the proxy's log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

pytestmark = [pytest.mark.integration]

PG_DUMP = shutil.which("pg_dump")
PG_RESTORE = shutil.which("pg_restore")
needs_pg_dump = pytest.mark.skipif(PG_DUMP is None, reason="pg_dump is not installed")


@pytest.fixture(scope="module")
def dump_schema(admin):
    """A schema with a table (3 rows), a view, a SQL and a plpgsql function, a sequence, an index,
    a comment and a grant; dropped afterwards."""
    schema = f"dump_{uuid.uuid4().hex[:10]}"
    admin(f"""
        create schema {schema};
        create sequence {schema}.order_seq start 100;
        create table {schema}.orders (
            id int primary key default nextval('{schema}.order_seq'),
            customer text not null,
            amount numeric(10, 2) check (amount >= 0),
            tags text[],
            created timestamptz default now()
        );
        alter sequence {schema}.order_seq owned by {schema}.orders.id;
        create index orders_customer_idx on {schema}.orders (customer);
        insert into {schema}.orders (customer, amount, tags) values
            ('ada', 12.50, '{{a,b}}'), ('grace', 99.99, null), ('tab\there', 0, '{{}}');
        create view {schema}.big_orders as
            select id, customer from {schema}.orders where amount > 50;
        create function {schema}.order_total(c text) returns numeric
            language sql stable as $$ select coalesce(sum(amount), 0) from {schema}.orders where customer = c $$;
        create function {schema}.touch() returns trigger language plpgsql as
            $$ begin new.created := now(); return new; end $$;
        create trigger orders_touch before update on {schema}.orders
            for each row execute function {schema}.touch();
        comment on table {schema}.orders is 'orders for the dump test';
        grant usage on schema {schema} to pgw_read;
    """)
    yield schema
    admin(f"drop schema if exists {schema} cascade")


def run_dump(proxy, schema: str, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = proxy.env("read")
    return subprocess.run([PG_DUMP, "-d", "appdb", "--schema", schema, *extra], env=env, capture_output=True,
                          timeout=timeout)


def explain_failure(proxy, proc: subprocess.CompletedProcess) -> str:
    """pg_dump's stderr plus the proxy's denial log lines: which statement, which rule."""
    denials = []
    for line in proxy.log().splitlines():
        if "statement_denied" in line:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            denials.append({k: rec.get(k) for k in ("rule", "statement_class", "via")})
    return (f"pg_dump exited {proc.returncode}\nstderr:\n{proc.stderr.decode(errors='replace')}\n"
            f"recent proxy denials: {denials[-5:]}")


@needs_pg_dump
def test_pg_dump_plain_under_read_scope(proxy, dump_schema):
    proc = run_dump(proxy, dump_schema)
    assert proc.returncode == 0, explain_failure(proxy, proc)
    out = proc.stdout.decode()
    # the table, its data (COPY ... FROM stdin block), the view, the function, the sequence
    assert f"CREATE TABLE {dump_schema}.orders" in out, out[:3000]
    assert f"COPY {dump_schema}.orders (id, customer, amount, tags, created) FROM stdin;" in out, out[:3000]
    for row in ("100\tada\t12.50\t{a,b}\t", "101\tgrace\t99.99\t\\N\t", "102\ttab\\there\t0.00\t{}\t"):
        assert row in out, row
    assert f"CREATE VIEW {dump_schema}.big_orders AS" in out
    assert "WHERE (orders.amount > (50)::numeric)" in out
    assert f"CREATE FUNCTION {dump_schema}.order_total(c text) RETURNS numeric" in out
    assert f"CREATE FUNCTION {dump_schema}.touch() RETURNS trigger" in out
    assert f"CREATE SEQUENCE {dump_schema}.order_seq" in out
    assert f"SELECT pg_catalog.setval('{dump_schema}.order_seq', 102, true);" in out
    assert "CREATE INDEX orders_customer_idx" in out
    assert "CREATE TRIGGER orders_touch" in out
    assert "orders for the dump test" in out
    assert "GRANT USAGE ON SCHEMA" in out


@needs_pg_dump
def test_pg_dump_custom_format_under_read_scope(proxy, dump_schema, tmp_path):
    target = tmp_path / "dump.custom"
    proc = run_dump(proxy, dump_schema, "-Fc", "-f", str(target))
    assert proc.returncode == 0, explain_failure(proxy, proc)
    assert target.read_bytes()[:5] == b"PGDMP"
    if PG_RESTORE is None:
        pytest.skip("pg_restore is not installed: custom dump written but not read back")
    listing = subprocess.run([PG_RESTORE, "-l", str(target)], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for kind, name in (("TABLE", "orders"), ("VIEW", "big_orders"), ("FUNCTION", "order_total"),
                       ("SEQUENCE", "order_seq"), ("TABLE DATA", "orders")):
        assert any(f" {kind} {dump_schema} {name}" in line for line in listing.stdout.splitlines()), \
            (kind, name, listing.stdout)
    sql = subprocess.run([PG_RESTORE, "-f", "-", str(target)], capture_output=True, text=True, timeout=60)
    assert sql.returncode == 0, sql.stderr
    assert "100\tada\t12.50" in sql.stdout
    assert f"CREATE VIEW {dump_schema}.big_orders AS" in sql.stdout


@needs_pg_dump
def test_pg_dump_did_not_change_anything(proxy, admin, dump_schema):
    before = admin(f"select last_value, is_called from {dump_schema}.order_seq")
    rows = admin(f"select count(*) from {dump_schema}.orders")
    proc = run_dump(proxy, dump_schema, "--data-only")
    assert proc.returncode == 0, explain_failure(proxy, proc)
    assert admin(f"select last_value, is_called from {dump_schema}.order_seq") == before
    assert admin(f"select count(*) from {dump_schema}.orders") == rows


@needs_pg_dump
def test_pg_dump_directory_format_parallel_jobs(proxy, dump_schema, tmp_path):
    """-Fd -j 2: pg_dump's worker connections use pg_export_snapshot / SET TRANSACTION SNAPSHOT."""
    target = tmp_path / "dir"
    proc = run_dump(proxy, dump_schema, "-Fd", "-j", "2", "-f", str(target))
    assert proc.returncode == 0, explain_failure(proxy, proc)
    assert (target / "toc.dat").exists()


@needs_pg_dump
def test_pg_dump_whole_database_default_options(proxy, dump_schema):
    """No --schema: every schema of appdb (whatever else the test session created there)."""
    env = proxy.env("read")
    proc = subprocess.run([PG_DUMP, "-d", "appdb"], env=env, capture_output=True, timeout=180)
    assert proc.returncode == 0, explain_failure(proxy, proc)
    out = proc.stdout.decode()
    assert f"CREATE VIEW {dump_schema}.big_orders AS" in out
    assert "100\tada\t12.50" in out


@needs_pg_dump
@pytest.mark.parametrize("extra", [["--inserts"], ["--column-inserts", "--quote-all-identifiers"],
                                   ["--serializable-deferrable"], ["-Ft"]])
def test_pg_dump_common_options(proxy, dump_schema, extra):
    proc = run_dump(proxy, dump_schema, *extra)
    assert proc.returncode == 0, explain_failure(proxy, proc)
    out = proc.stdout.decode(errors="replace")
    assert "ada" in out and "big_orders" in out

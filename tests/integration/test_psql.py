"""psql, the client most people reach for, works through pgwarden as it does directly.

Proves, with the real `psql` binary and a token as the password:
- catalog meta-commands (``\\l``, ``\\dt``, ``\\d table``) list what is there;
- COPY in both directions: ``\\copy ... from stdin`` and ``COPY ... FROM STDIN`` fed on psql's
  stdin, read back with ``COPY ... TO STDOUT``;
- transactions: ROLLBACK leaves nothing behind, COMMIT keeps the row;
- Ctrl-C (SIGINT) cancels a running statement: psql's CancelRequest reaches the upstream
  backend, the statement ends with "canceling statement due to user request" and the
  backend stops sleeping;
- ``\\watch`` re-runs a query repeatedly on one session;
- TLS: with ``PGSSLMODE=require`` ``\\conninfo`` reports an SSL connection;
- an error does not end the session: the next statement in the same run succeeds.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid

import pytest

PSQL = shutil.which("psql")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(PSQL is None, reason="psql is not installed")]


def psql(proxy, scope: str, *args: str, stdin: str | None = None, stop_on_error: bool = True,
         env_extra: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = proxy.env(scope)
    env.update(env_extra or {})
    cmd = [PSQL, "-X", "-v", f"ON_ERROR_STOP={'1' if stop_on_error else '0'}", *args]
    return subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"psql exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def table(admin):
    """A fresh table public.psql_<hex> (id int primary key, name text), dropped afterwards."""
    name = f"psql_{uuid.uuid4().hex[:12]}"
    admin(f"create table public.{name} (id int primary key, name text)")
    yield name
    admin(f"drop table if exists public.{name}")


# --------------------------------------------------------------------------- meta-commands


def test_list_databases_shows_appdb(proxy):
    out = ok(psql(proxy, "read", "-A", "-t", "-c", r"\l"))
    names = {line.split("|")[0] for line in out.splitlines() if "|" in line}
    assert "appdb" in names, out


def test_dt_lists_the_table(proxy, table):
    out = ok(psql(proxy, "read", "-c", r"\dt"))
    assert table in out, out
    assert "public" in out


def test_d_table_describes_columns_and_index(proxy, table):
    out = ok(psql(proxy, "read", "-c", rf"\d {table}"))
    assert f'Table "public.{table}"' in out, out
    assert "id" in out and "integer" in out and "not null" in out
    assert "name" in out and "text" in out
    assert f"{table}_pkey" in out and "PRIMARY KEY" in out


# --------------------------------------------------------------------------- COPY


def test_backslash_copy_from_stdin_then_copy_to_stdout(proxy, table, admin):
    script = (
        f"\\copy {table} (id, name) from stdin\n"
        "1\tone\n"
        "2\ttwo\n"
        "3\t\\N\n"
        "\\.\n"
        f"select count(*) as n from {table};\n"
    )
    out = ok(psql(proxy, "write", "-A", "-t", stdin=script))
    assert out.strip().splitlines()[-1] == "3", out
    assert admin(f"select id, name from {table} order by id") == [(1, "one"), (2, "two"), (3, None)]

    out = ok(psql(proxy, "read", "-c", f"COPY (select * from {table} order by id) TO STDOUT"))
    assert out == "1\tone\n2\ttwo\n3\t\\N\n"


def test_sql_copy_from_stdin_fed_on_stdin(proxy, table, admin):
    script = (
        f"COPY {table} (id, name) FROM STDIN WITH (FORMAT csv);\n"
        "10,ten\n"
        '11,"eleven, with a comma"\n'
        "\\.\n"
    )
    out = ok(psql(proxy, "write", stdin=script))
    assert "COPY 2" in out, out
    assert admin(f"select id, name from {table} order by id") == [(10, "ten"), (11, "eleven, with a comma")]

    out = ok(psql(proxy, "write", "-c", f"COPY {table} TO STDOUT WITH (FORMAT csv)"))
    assert sorted(out.splitlines()) == ["10,ten", '11,"eleven, with a comma"']


def test_copy_to_stdout_matches_direct_connection(proxy, table, admin, pg):
    admin(f"insert into {table} select g, repeat('x', g % 50) || E'\\t\\\\' from generate_series(1, 2000) g")
    sql = f"COPY (select * from {table} order by id) TO STDOUT"
    via_proxy = ok(psql(proxy, "read", "-c", sql))
    direct = subprocess.run([PSQL, "-X", "-v", "ON_ERROR_STOP=1", pg.dsn("appdb"), "-c", sql],
                            capture_output=True, text=True, timeout=60)
    assert direct.returncode == 0, direct.stderr
    assert via_proxy == direct.stdout
    assert len(via_proxy.splitlines()) == 2000


# --------------------------------------------------------------------------- transactions


def test_rollback_leaves_no_row_commit_keeps_one(proxy, table, admin):
    ok(psql(proxy, "write", stdin=f"BEGIN;\nINSERT INTO {table} VALUES (1, 'rolled back');\nROLLBACK;\n"))
    assert admin(f"select count(*) from {table}") == [(0,)]

    ok(psql(proxy, "write", stdin=f"BEGIN;\nINSERT INTO {table} VALUES (2, 'committed');\nCOMMIT;\n"))
    assert admin(f"select id, name from {table}") == [(2, "committed")]


def test_read_scope_transaction_is_read_only(proxy, table):
    proc = psql(proxy, "read", "-c", f"INSERT INTO {table} VALUES (1, 'x')")
    assert proc.returncode != 0
    assert "pgwarden: INSERT is write class; this grant's scope is read (write would allow it)" in proc.stderr


# --------------------------------------------------------------------------- cancel


def _backends_running(admin, marker: str) -> list:
    return admin("select pid, state from pg_stat_activity where query like %s and pid <> pg_backend_pid()",
                 (f"%{marker}%",))


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_sigint_cancels_running_statement(proxy, admin, sslmode):
    marker = f"cancel_{uuid.uuid4().hex}"
    env = proxy.env("read")
    env["PGSSLMODE"] = sslmode
    proc = subprocess.Popen([PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-c", f"select pg_sleep(30) /* {marker} */"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until the statement is really running upstream before pressing Ctrl-C.
        deadline = time.monotonic() + 20
        while not [r for r in _backends_running(admin, marker) if r[1] == "active"]:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "pg_sleep never showed up in pg_stat_activity"
            time.sleep(0.1)
        time.sleep(1)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "canceling statement due to user request" in err, (out, err)
    assert proc.returncode != 0
    assert elapsed < 15, f"cancel took {elapsed:.1f}s"
    # The backend is no longer running pg_sleep (it is idle or gone).
    deadline = time.monotonic() + 10
    while [r for r in _backends_running(admin, marker) if r[1] == "active"]:
        assert time.monotonic() < deadline, _backends_running(admin, marker)
        time.sleep(0.1)


# --------------------------------------------------------------------------- \watch


def test_watch_repeats_the_query(proxy):
    # psql 15's \watch has no iteration count: run it for a while, then Ctrl-C.
    env = proxy.env("read")
    proc = subprocess.Popen([PSQL, "-X", "-A", "-t"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("select 'tick' || 7 * 6 as w \\watch 0.2\n")
        proc.stdin.flush()
        time.sleep(3)
        proc.send_signal(signal.SIGINT)       # stops \watch; psql then reads EOF and exits
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    ticks = [line for line in out.splitlines() if line == "tick42"]
    assert len(ticks) >= 2, (out, err)
    assert "ERROR" not in err, err


# --------------------------------------------------------------------------- TLS


def test_sslmode_require_conninfo_reports_ssl(proxy):
    out = ok(psql(proxy, "read", "-c", r"\conninfo", "-c", "select current_user",
                  env_extra={"PGSSLMODE": "require"}))
    assert "SSL connection (protocol: TLS" in out, out
    assert 'as user "alice"' in out
    assert "pgw_read" in out


def test_sslmode_disable_conninfo_has_no_ssl(proxy):
    out = ok(psql(proxy, "read", "-c", r"\conninfo", env_extra={"PGSSLMODE": "disable"}))
    assert "You are connected" in out
    assert "SSL connection" not in out


# --------------------------------------------------------------------------- errors


def test_error_keeps_session_usable(proxy):
    script = "select 1/0;\nselect 40 + 2 as after_error;\nselect pg_backend_pid() = pg_backend_pid() as same;\n"
    proc = psql(proxy, "read", "-A", "-t", stdin=script, stop_on_error=False)
    assert "division by zero" in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines == ["42", "t"], proc.stdout
    assert proc.returncode == 0     # without ON_ERROR_STOP the run ends normally


def test_error_inside_transaction_then_rollback(proxy, table, admin):
    script = (
        "BEGIN;\n"
        f"INSERT INTO {table} VALUES (1, 'a');\n"
        f"INSERT INTO {table} VALUES (1, 'duplicate');\n"
        "select 1;\n"
        "ROLLBACK;\n"
        "select 'usable' as s;\n"
    )
    proc = psql(proxy, "write", "-A", "-t", stdin=script, stop_on_error=False)
    assert 'duplicate key value violates unique constraint' in proc.stderr, proc.stderr
    assert "current transaction is aborted" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "usable"
    assert admin(f"select count(*) from {table}") == [(0,)]

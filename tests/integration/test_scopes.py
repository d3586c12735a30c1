"""Scopes enforced end to end: the real pgwarden in front of the real PostgreSQL.

What this proves, per path a statement can take (simple Query, extended protocol, pipelines,
SQL-level PREPARE/EXECUTE, the fast-path FunctionCall message):

- read scope: writes, DDL, admin statements, identity and read-only-lifting settings,
  dangerous functions, COPY from the client or to a server file, DO and NOTIFY are denied with
  SQLSTATE 42501 and pgwarden's message (class, grant's scope, the scope that would allow it,
  rule); reads, COPY TO STDOUT, EXPLAIN, LISTEN, pg_sleep, SHOW and empty queries run; the
  database is unchanged after each denial and the session goes on.
- the core promise: inside a transaction block a denial aborts the transaction on the server
  too -- COMMIT answers ROLLBACK and nothing of the transaction is committed.
- extended protocol: a denied Parse never reaches the server, and neither does a later Bind
  of that statement; pipelined batches answer in order; psycopg's pipeline mode behaves as it
  does after a server error.
- ddl scope: schema changes run; admin statements are denied ("no scope allows it").
- a query string with one denied statement runs none of them.
- a guarded setting in the startup ``options`` refuses the connection.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
import uuid

import psycopg
import pytest
from psycopg import errors as E
from psycopg.pq import TransactionStatus as TS

from tests.integration.conftest import DB
from tests.integration.rawpg import (
    SYNC,
    bind_msg,
    command_tag,
    cstr,
    data_values,
    execute_msg,
    fields,
    msg,
    parse_msg,
    raw_session,
    read_until_ready,
    simple_query,
    tx_status,
    types,
)

pytestmark = pytest.mark.integration

PSQL = shutil.which("psql")

DENIAL = re.compile(
    r"^pgwarden: .*\b(?P<cls>read|write|ddl|admin|transaction|two-phase|unknown) class\b.*"
    r"this grant's scope is (?P<scope>\w+) \((?:(?P<allow>\w+) would allow it|no scope allows it)\) "
    r"\[rule (?P<rule>[\w.]+)\]$", re.S)


# --------------------------------------------------------------------------- denials


def assert_denial(f: dict[str, str], *, cls: str | None = None, scope: str | None = None,
                  allow: str | None = "?", rule: str | None = None) -> re.Match:
    """An ErrorResponse's fields are pgwarden's 42501 denial naming class, scope, allowing scope and rule."""
    assert f.get("C") == "42501", f
    assert f.get("S") == "ERROR", f
    m = DENIAL.match(f.get("M", ""))
    assert m, f"not a pgwarden denial message: {f.get('M')!r}"
    if cls is not None:
        assert m["cls"] == cls, f["M"]
    if scope is not None:
        assert m["scope"] == scope, f["M"]
    if allow != "?":
        assert m["allow"] == allow, f["M"]
    if rule is not None:
        assert m["rule"] == rule, f["M"]
    return m


def assert_exc_denial(exc: BaseException, **kw) -> re.Match:
    diag = exc.diag
    return assert_denial({"C": diag.sqlstate, "S": diag.severity_nonlocalized or diag.severity,
                          "M": diag.message_primary}, **kw)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def table(admin):
    """public.sc_<hex> (id int primary key, v text) with rows 1 and 2, dropped afterwards."""
    name = f"sc_{uuid.uuid4().hex[:12]}"
    admin(f"create table public.{name} (id int primary key, v text)")
    admin(f"insert into public.{name} values (1, 'one'), (2, 'two')")
    yield name
    admin(f"drop table if exists public.{name} cascade")


def ids(admin, table: str) -> list[int]:
    return [r[0] for r in admin(f"select id from public.{table} order by id")]


def connect(proxy, scope: str, **kw) -> psycopg.Connection:
    kw.setdefault("autocommit", True)
    kw.setdefault("connect_timeout", 20)
    return psycopg.connect(proxy.dsn(scope), **kw)


def snapshot(admin, table: str) -> tuple:
    """What a denied statement must not change: the table's rows, the public schema's relations,
    the roles, and a few settings."""
    return (
        admin(f"select id, v from public.{table} order by id"),
        admin("select relname, relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
              "where n.nspname = 'public' order by 1"),
        admin("select rolname from pg_roles order by 1"),
        admin("select name, setting from pg_settings where name in "
              "('work_mem', 'default_transaction_read_only', 'log_statement') order by 1"),
    )


# =========================================================================== read scope

READ_DENIED = [
    # (sql, class, allowing scope, rule)
    ("INSERT INTO {t} VALUES (10, 'x')", "write", "write", "write.insert"),
    ("UPDATE {t} SET v = 'changed'", "write", "write", "write.update"),
    ("DELETE FROM {t}", "write", "write", "write.delete"),
    ("CREATE TABLE {t}_new (a int)", "ddl", "ddl", "ddl.create_table"),
    ("DROP TABLE {t}", "ddl", "ddl", "ddl.drop_table"),
    ("TRUNCATE {t}", "ddl", "ddl", "ddl.truncate"),
    ("GRANT SELECT ON {t} TO PUBLIC", "admin", None, "admin.grant"),
    ("SET ROLE postgres", "admin", None, "set.identity"),
    ("SET default_transaction_read_only = off", "admin", None, "set.read_only"),
    ("BEGIN READ WRITE", "write", "write", "write.begin_read_write"),
    ("SELECT set_config('role', 'postgres', false)", "admin", None, "set.identity"),
    ("SELECT pg_read_file('/etc/passwd')", "admin", None, "function.admin"),
    ("COPY {t} FROM STDIN", "write", "write", "write.copy_from"),
    ("COPY {t} TO '/tmp/pgwarden_copy_x'", "admin", None, "admin.copy_file"),
    ("DO $$ BEGIN PERFORM 1; END $$", "admin", None, "admin.do"),
    ("NOTIFY pgw_chan", "write", "write", "write.notify"),
]


@pytest.mark.parametrize("sql,cls,allow,rule", READ_DENIED, ids=[r[3] + ":" + r[0][:24] for r in READ_DENIED])
def test_read_scope_denies(proxy, admin, table, sql, cls, allow, rule):
    sql = sql.format(t=table)
    before = snapshot(admin, table)
    with connect(proxy, "read") as conn:
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(sql)
        m = assert_exc_denial(ei.value, cls=cls, scope="read", allow=allow, rule=rule)
        assert m  # named: class, scope, allowing scope, rule
        # outside a transaction block the session is idle and usable
        assert conn.pgconn.transaction_status == TS.IDLE
        assert conn.execute(f"select count(*) from {table}").fetchone() == (2,)
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("select current_user").fetchone() == ("pgw_read",)
    assert snapshot(admin, table) == before
    if rule == "admin.copy_file":
        assert admin("select (pg_stat_file('/tmp/pgwarden_copy_x', true)).size") == [(None,)]


def test_read_scope_allows_reads(proxy, table):
    with connect(proxy, "read") as conn:
        assert conn.execute(f"select id, v from {table} order by id").fetchall() == [(1, "one"), (2, "two")]
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} TO STDOUT") as copy:
                data = b"".join(bytes(b) for b in copy)
        assert data == b"1\tone\n2\ttwo\n"
        with conn.cursor() as cur:
            with cur.copy(f"COPY (select id from {table} order by id) TO STDOUT") as copy:
                assert b"".join(bytes(b) for b in copy) == b"1\n2\n"
        plan = conn.execute(f"EXPLAIN SELECT * FROM {table}").fetchall()
        assert plan and "Scan" in plan[0][0]
        conn.execute("LISTEN pgw_read_chan")
        conn.execute("UNLISTEN pgw_read_chan")
        assert len(conn.execute("select pg_sleep(0)").fetchone()) == 1
        assert conn.execute("show transaction_read_only").fetchone() == ("on",)
        assert conn.execute("select 1").fetchone() == (1,)


def test_read_scope_empty_queries(proxy):
    with raw_session(proxy, "read") as s:
        for text in ["", ";", "-- c", "  ;; ", "/* only a comment */"]:
            msgs = simple_query(s, text)
            assert types(msgs) == ["I", "Z"], (text, msgs)
            assert tx_status(msgs) == "I"
        msgs = simple_query(s, "select 41 + 1")
        assert types(msgs) == ["T", "D", "C", "Z"], msgs
        assert data_values(msgs[1][1]) == ["42"]


def test_read_scope_session_usable_after_denial_raw(proxy, table):
    with raw_session(proxy, "read") as s:
        msgs = simple_query(s, f"DELETE FROM {table}")
        assert types(msgs) == ["E", "Z"], msgs
        assert_denial(fields(msgs[0][1]), cls="write", scope="read", allow="write", rule="write.delete")
        assert tx_status(msgs) == "I"
        msgs = simple_query(s, f"select count(*) from {table}")
        assert types(msgs) == ["T", "D", "C", "Z"], msgs
        assert data_values(msgs[1][1]) == ["2"]


def test_read_scope_denial_inside_transaction_aborts_it(proxy, table):
    with connect(proxy, "read") as conn:
        conn.execute("BEGIN")
        assert conn.execute(f"select count(*) from {table}").fetchone() == (2,)
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute(f"UPDATE {table} SET v = 'x'")
        assert conn.pgconn.transaction_status == TS.INERROR
        with pytest.raises(E.InFailedSqlTransaction):
            conn.execute("select 1")
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("stmt", ["RESET ALL", "DISCARD ALL", "RESET SESSION AUTHORIZATION", "RESET ROLE",
                                  "SET SESSION AUTHORIZATION DEFAULT"])
def test_read_scope_resets_keep_read_only(proxy, admin, table, stmt):
    """Allowed resets return to the session's defaults, which include pgwarden's read-only start."""
    with connect(proxy, "read") as conn:
        try:
            conn.execute(stmt)
        except E.InsufficientPrivilege as e:
            assert_exc_denial(e, scope="read")
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("select current_user, session_user").fetchone() == ("pgw_read", "pgw_read")
        with pytest.raises(psycopg.Error):
            conn.execute(f"DELETE FROM {table}")
    assert ids(admin, table) == [1, 2]


# =========================================================================== the core promise


@pytest.mark.parametrize("denied", ["DROP TABLE {t}", "CREATE TABLE {t}_x (a int)", "GRANT SELECT ON {t} TO PUBLIC"])
def test_write_scope_denial_in_transaction_commit_answers_rollback(proxy, admin, table, denied):
    with connect(proxy, "write") as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} VALUES (50, 'in tx')")
        assert conn.pgconn.transaction_status == TS.INTRANS
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(denied.format(t=table))
        assert_exc_denial(ei.value, scope="write")
        # the server aborted the transaction, exactly as after a server error
        assert conn.pgconn.transaction_status == TS.INERROR
        with pytest.raises(E.InFailedSqlTransaction):
            conn.execute(f"INSERT INTO {table} VALUES (51, 'after')")
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
        assert conn.pgconn.transaction_status == TS.IDLE
        assert conn.execute(f"select count(*) from {table} where id >= 50").fetchone() == (0,)
    assert ids(admin, table) == [1, 2]
    assert admin(f"select to_regclass('public.{table}_x')") == [(None,)]


def test_write_scope_denial_in_transaction_raw_commit_tag_is_rollback(proxy, admin, table):
    with raw_session(proxy, "write") as s:
        assert tx_status(simple_query(s, "BEGIN")) == "T"
        msgs = simple_query(s, f"INSERT INTO {table} VALUES (60, 'raw')")
        assert types(msgs) == ["C", "Z"] and tx_status(msgs) == "T", msgs
        msgs = simple_query(s, f"DROP TABLE {table}")
        assert types(msgs) == ["E", "Z"], msgs
        assert_denial(fields(msgs[0][1]), cls="ddl", scope="write", allow="ddl", rule="ddl.drop_table")
        assert tx_status(msgs) == "E"
        msgs = simple_query(s, "COMMIT")
        assert types(msgs) == ["C", "Z"], msgs
        assert command_tag(msgs[0][1]) == "ROLLBACK"
        assert tx_status(msgs) == "I"
    assert ids(admin, table) == [1, 2]


def test_write_scope_allowed_transaction_commits(proxy, admin, table):
    with connect(proxy, "write") as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} VALUES (70, 'kept')")
        assert conn.execute("COMMIT").statusmessage == "COMMIT"
    assert ids(admin, table) == [1, 2, 70]


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_psql_script_denial_in_transaction_rolls_back(proxy, admin, table):
    script = (f"BEGIN;\nINSERT INTO {table} VALUES (80, 'psql');\nDROP TABLE {table};\n"
              f"SELECT 1;\nCOMMIT;\n")
    proc = subprocess.run([PSQL, "-X", "-v", "ON_ERROR_STOP=0", "-f", "-"], input=script, env=proxy.env("write"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc
    lines = proc.stdout.split()
    assert "ROLLBACK" in lines and "COMMIT" not in lines, proc.stdout
    assert "42501" in proc.stderr or "pgwarden: DROP TABLE is ddl class" in proc.stderr, proc.stderr
    assert "current transaction is aborted" in proc.stderr, proc.stderr
    assert ids(admin, table) == [1, 2]


# =========================================================================== extended protocol


def test_psycopg_prepared_denied_statement(proxy, admin, table):
    with connect(proxy, "read") as conn:
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (1,), prepare=True)
        assert_exc_denial(ei.value, cls="write", scope="read", rule="write.delete")
        # again: psycopg must not have cached a server-side statement for it
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (1,), prepare=True)
        assert conn.execute(f"select count(*) from {table} where id > %s", (0,), prepare=True).fetchone() == (2,)
        assert conn.execute(f"select count(*) from {table} where id > %s", (1,), prepare=True).fetchone() == (1,)
    assert ids(admin, table) == [1, 2]


def test_psycopg_prepared_allowed_under_write(proxy, admin, table):
    with connect(proxy, "write") as conn:
        for i in range(100, 106):  # prepare threshold passed: a named server statement is reused
            conn.execute(f"INSERT INTO {table} VALUES (%s, 'p')", (i,), prepare=True)
    assert ids(admin, table) == [1, 2, 100, 101, 102, 103, 104, 105]


async def test_asyncpg_fetch_delete_denied_under_read(proxy, admin, table):
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(proxy.dsn("read"), timeout=20)
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as ei:
            await conn.fetch(f"delete from {table} where id = $1", 1)
        assert DENIAL.match(str(ei.value)), str(ei.value)
        assert "DELETE is write class" in str(ei.value)
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute(f"delete from {table}")
        assert await conn.fetchval(f"select count(*) from {table} where id > $1", 0) == 2
        # a transaction block with a denial rolls back
        tr = conn.transaction()
        await tr.start()
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute(f"update {table} set v = 'z'")
        await tr.rollback()
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()
    assert ids(admin, table) == [1, 2]


def test_pipelined_batches_answer_in_order(proxy, admin, table):
    with raw_session(proxy, "read") as s:
        batch = (parse_msg("SELECT 1") + bind_msg() + execute_msg() + SYNC
                 + parse_msg(f"INSERT INTO {table} VALUES (99, 'pipe')") + bind_msg() + execute_msg() + SYNC
                 + parse_msg("SELECT 2") + bind_msg() + execute_msg() + SYNC)
        s.sendall(batch)
        r1, r2, r3 = read_until_ready(s), read_until_ready(s), read_until_ready(s)
        assert types(r1) == ["1", "2", "D", "C", "Z"], r1
        assert data_values(r1[2][1]) == ["1"]
        assert types(r2) == ["E", "Z"], r2
        assert_denial(fields(r2[0][1]), cls="write", scope="read", allow="write", rule="write.insert")
        assert types(r3) == ["1", "2", "D", "C", "Z"], r3
        assert data_values(r3[2][1]) == ["2"]
        assert all(tx_status(r) == "I" for r in (r1, r2, r3))
    assert ids(admin, table) == [1, 2]


def test_denial_mid_batch_skips_to_sync(proxy, admin, table):
    """No Sync between: after the denial the server skips the rest of the batch, as after its own error."""
    with raw_session(proxy, "write") as s:
        s.sendall(parse_msg(f"INSERT INTO {table} VALUES (90, 'first')") + bind_msg() + execute_msg()
                  + parse_msg(f"TRUNCATE {table}") + bind_msg() + execute_msg()
                  + parse_msg(f"INSERT INTO {table} VALUES (91, 'skipped')") + bind_msg() + execute_msg()
                  + SYNC)
        r = read_until_ready(s)
        assert types(r) == ["1", "2", "C", "E", "Z"], r
        assert_denial(fields(r[3][1]), cls="ddl", scope="write", allow="ddl", rule="ddl.truncate")
        assert tx_status(r) == "I"
    # the batch was one implicit transaction: the first INSERT went with it
    assert ids(admin, table) == [1, 2]


def test_extended_denial_in_transaction_block_commit_answers_rollback(proxy, admin, table):
    with raw_session(proxy, "write") as s:
        assert tx_status(simple_query(s, "BEGIN")) == "T"
        s.sendall(parse_msg(f"INSERT INTO {table} VALUES (95, 'tx')") + bind_msg() + execute_msg() + SYNC)
        r = read_until_ready(s)
        assert types(r) == ["1", "2", "C", "Z"] and tx_status(r) == "T", r
        s.sendall(parse_msg(f"ALTER TABLE {table} ADD COLUMN z int") + bind_msg() + execute_msg() + SYNC)
        r = read_until_ready(s)
        assert types(r) == ["E", "Z"] and tx_status(r) == "E", r
        assert_denial(fields(r[0][1]), cls="ddl", scope="write", rule="ddl.alter_table")
        s.sendall(parse_msg("COMMIT") + bind_msg() + execute_msg() + SYNC)
        r = read_until_ready(s)
        assert types(r) == ["1", "2", "C", "Z"], r
        assert command_tag(r[2][1]) == "ROLLBACK" and tx_status(r) == "I", r
    assert ids(admin, table) == [1, 2]
    assert admin(f"select count(*) from information_schema.columns where table_name = '{table}' "
                 "and column_name = 'z'") == [(0,)]


def test_bind_of_denied_named_statement_never_reaches_server(proxy, admin, table):
    with raw_session(proxy, "read") as s:
        s.sendall(parse_msg(f"INSERT INTO {table} VALUES (99, 'named')", name="s1") + SYNC
                  + bind_msg("s1") + execute_msg() + SYNC
                  + parse_msg("SELECT 3") + bind_msg() + execute_msg() + SYNC)
        r1, r2, r3 = read_until_ready(s), read_until_ready(s), read_until_ready(s)
        assert types(r1) == ["E", "Z"], r1
        assert_denial(fields(r1[0][1]), cls="write", scope="read", rule="write.insert")
        assert types(r2) == ["E", "Z"], r2
        f = fields(r2[0][1])
        assert_denial(f, cls="write", scope="read", rule="write.insert")
        assert "INSERT" in f["M"]
        assert types(r3) == ["1", "2", "D", "C", "Z"], r3
        assert data_values(r3[2][1]) == ["3"]
        # Close of the denied name, then the name is reusable for an allowed statement
        s.sendall(msg(b"C", b"S" + cstr("s1")) + SYNC)
        assert types(read_until_ready(s)) == ["3", "Z"]
        s.sendall(parse_msg("SELECT 4", name="s1") + bind_msg("s1") + execute_msg() + SYNC)
        r = read_until_ready(s)
        assert types(r) == ["1", "2", "D", "C", "Z"], r
        assert data_values(r[2][1]) == ["4"]
    assert ids(admin, table) == [1, 2]


def test_denied_named_statement_under_write_scope_is_not_run_by_bind(proxy, admin, table):
    """Under write the role could run it: only pgwarden stands between Bind and the server."""
    with raw_session(proxy, "write") as s:
        s.sendall(parse_msg(f"DROP TABLE {table}", name="s_drop") + SYNC
                  + bind_msg("s_drop") + execute_msg() + SYNC)
        r1, r2 = read_until_ready(s), read_until_ready(s)
        assert types(r1) == ["E", "Z"] and types(r2) == ["E", "Z"], (r1, r2)
        assert_denial(fields(r2[0][1]), cls="ddl", scope="write", rule="ddl.drop_table")
        # reusing the name for an allowed statement works (the failed Parse created nothing)
        s.sendall(parse_msg(f"INSERT INTO {table} VALUES (98, 'ok')", name="s_drop") + bind_msg("s_drop")
                  + execute_msg() + SYNC)
        r = read_until_ready(s)
        assert types(r) == ["1", "2", "C", "Z"], r
    assert admin(f"select to_regclass('public.{table}')") == [(table,)]
    assert ids(admin, table) == [1, 2, 98]


def test_psycopg_pipeline_with_denied_statement(proxy, admin, table):
    with connect(proxy, "write") as conn:
        with pytest.raises(E.InsufficientPrivilege) as ei:
            with conn.pipeline() as p:
                c1 = conn.execute("select 11")
                conn.execute(f"INSERT INTO {table} VALUES (200, 'before')")
                p.sync()                                        # commits the insert (own implicit transaction)
                c2 = conn.execute("select 12")
                conn.execute(f"DROP TABLE {table}")            # denied
                conn.execute(f"INSERT INTO {table} VALUES (201, 'after')")   # never runs
                conn.execute("select 13")
        assert_exc_denial(ei.value, cls="ddl", scope="write", rule="ddl.drop_table")
        assert c1.fetchone() == (11,)
        assert c2.fetchone() == (12,)
        assert conn.pgconn.transaction_status == TS.IDLE
        # the connection is usable afterwards, in and out of pipeline mode
        assert conn.execute("select 14").fetchone() == (14,)
        with conn.pipeline():
            c = conn.execute("select 15")
        assert c.fetchone() == (15,)
    assert ids(admin, table) == [1, 2, 200]


def test_psycopg_pipeline_denial_matches_server_error(proxy, pg, admin, table):
    """Same pipeline, direct vs. through pgwarden: a denial behaves as a server error does."""
    def run(conn, bad: str) -> tuple:
        got = []
        err = None
        try:
            with conn.pipeline():
                got.append(conn.execute("select 1"))
                conn.execute(bad)
                got.append(conn.execute("select 3"))
        except psycopg.Error as e:
            err = e
        results = []
        for c in got:
            try:
                results.append(c.fetchall())
            except psycopg.Error as e:
                results.append(type(e).__name__)
        return results, err is not None, conn.pgconn.transaction_status

    with psycopg.connect(pg.dsn(DB), autocommit=True) as direct:
        d = run(direct, "select 1/0")
    with connect(proxy, "read") as conn:
        p = run(conn, f"DELETE FROM {table}")
        assert conn.execute("select 4").fetchone() == (4,)
    assert d[1] and p[1]
    # Whether psycopg had already seen the error when `select 3` was queued depends on timing
    # (it reads results opportunistically), on a direct connection too: compare what cannot
    # vary -- the statement before the error answered, nothing after it did.
    assert p[0][0] == d[0][0] == [(1,)]
    for results in (d[0], p[0]):
        assert all(isinstance(r, str) for r in results[1:]), results
    assert p[2] == d[2] == TS.IDLE
    assert ids(admin, table) == [1, 2]


# =========================================================================== SQL-level PREPARE / EXECUTE


def test_sql_prepare_execute_under_write(proxy, admin, table):
    with connect(proxy, "write") as conn:
        conn.execute(f"PREPARE p_ins(int) AS INSERT INTO {table} VALUES ($1, 'prep')")
        conn.execute("EXECUTE p_ins(300)")
        conn.execute("EXECUTE p_ins(301)")
        conn.execute("DEALLOCATE p_ins")
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("EXECUTE p_ins(302)")
        assert ei.value.sqlstate == "42501", ei.value
    assert ids(admin, table) == [1, 2, 300, 301]


def test_sql_prepare_under_read(proxy, admin, table):
    with connect(proxy, "read") as conn:
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(f"PREPARE p_del AS DELETE FROM {table}")
        assert_exc_denial(ei.value, cls="write", scope="read", rule="write.delete")
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute("EXECUTE p_del")
        assert ei.value.diag.message_primary.startswith("pgwarden:"), ei.value
        assert "execute.unknown" in ei.value.diag.message_primary
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute("EXECUTE never_prepared_anywhere")
        conn.execute(f"PREPARE q AS SELECT count(*) FROM {table}")
        assert conn.execute("EXECUTE q").fetchone() == (2,)
        assert conn.execute("EXECUTE q").fetchone() == (2,)
        conn.execute("DEALLOCATE q")
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute("EXECUTE q")
        assert "execute.unknown" in ei.value.diag.message_primary
        conn.execute("PREPARE q2 AS SELECT 2")
        conn.execute("DEALLOCATE ALL")
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute("EXECUTE q2")
        assert conn.execute("select 1").fetchone() == (1,)
    assert ids(admin, table) == [1, 2]


def test_sql_prepare_name_reuse_cannot_smuggle(proxy, admin, table):
    """PREPARE q (read); a failed re-PREPARE of q as a write must not make EXECUTE q a write."""
    with connect(proxy, "write") as conn:
        conn.execute("PREPARE q AS SELECT 1")
        with pytest.raises(psycopg.Error):
            conn.execute(f"PREPARE q AS DELETE FROM {table}")   # server: q already exists
        assert conn.execute("EXECUTE q").fetchone() == (1,)
    assert ids(admin, table) == [1, 2]


# =========================================================================== fast path


def test_function_call_message_denied(proxy):
    with raw_session(proxy, "ddl") as s:
        # FunctionCall: oid 2026 (pg_backend_pid), no arg formats, no args, text result
        s.sendall(msg(b"F", struct.pack("!ihhh", 2026, 0, 0, 0)))
        msgs = read_until_ready(s)
        assert types(msgs) == ["E", "Z"], msgs
        f = fields(msgs[0][1])
        assert f["C"] == "42501", f
        assert "FunctionCall" in f["M"] and "admin.function_call" in f["M"], f
        assert tx_status(msgs) == "I"
        msgs = simple_query(s, "select 5")
        assert types(msgs) == ["T", "D", "C", "Z"], msgs
        assert data_values(msgs[1][1]) == ["5"]
        # inside a transaction it aborts the transaction, as a failed call would
        assert tx_status(simple_query(s, "BEGIN")) == "T"
        s.sendall(msg(b"F", struct.pack("!ihhh", 2026, 0, 0, 0)))
        msgs = read_until_ready(s)
        assert types(msgs) == ["E", "Z"] and tx_status(msgs) == "E", msgs
        msgs = simple_query(s, "COMMIT")
        assert command_tag(msgs[0][1]) == "ROLLBACK", msgs


# =========================================================================== ddl scope


def test_ddl_scope_schema_changes_run(proxy, admin):
    name = f"ddl_{uuid.uuid4().hex[:10]}"
    try:
        with connect(proxy, "ddl") as conn:
            conn.execute(f"CREATE TABLE public.{name} (a int)")
            conn.execute(f"ALTER TABLE public.{name} ADD COLUMN b text")
            conn.execute(f"CREATE INDEX {name}_a ON public.{name} (a)")
            conn.execute(f"INSERT INTO public.{name} VALUES (1, 'x')")
            assert conn.execute(f"select a, b from public.{name}").fetchall() == [(1, "x")]
            conn.execute(f"TRUNCATE public.{name}")
            conn.execute(f"DROP TABLE public.{name}")
        assert admin(f"select to_regclass('public.{name}')") == [(None,)]
    finally:
        admin(f"drop table if exists public.{name}")


DDL_DENIED = [
    ("GRANT SELECT ON {t} TO PUBLIC", "admin.grant"),
    ("CREATE ROLE pgw_should_not_exist", "admin.create_role"),
    ("ALTER SYSTEM SET work_mem = '77MB'", "admin.alter_system"),
    ("CREATE EXTENSION IF NOT EXISTS plpgsql", "admin.create_extension"),
    ("COPY {t} FROM PROGRAM 'id'", "admin.copy_program"),
    ("COPY {t} TO PROGRAM 'cat > /tmp/pgwarden_prog'", "admin.copy_program"),
]


@pytest.mark.parametrize("sql,rule", DDL_DENIED, ids=[r[1] + ":" + r[0][:20] for r in DDL_DENIED])
def test_ddl_scope_denies_admin(proxy, admin, table, sql, rule):
    before = snapshot(admin, table)
    with connect(proxy, "ddl") as conn:
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(sql.format(t=table))
        assert_exc_denial(ei.value, cls="admin", scope="ddl", allow=None, rule=rule)
        assert "no scope allows it" in ei.value.diag.message_primary
        assert conn.execute("select 1").fetchone() == (1,)
    assert snapshot(admin, table) == before
    assert admin("select count(*) from pg_roles where rolname = 'pgw_should_not_exist'") == [(0,)]


# =========================================================================== multi-statement Query


def test_multi_statement_query_with_one_denied_runs_nothing(proxy, admin, table):
    with raw_session(proxy, "read") as s:
        msgs = simple_query(s, f"SELECT 1; DELETE FROM {table}")
        assert types(msgs) == ["E", "Z"], msgs      # no RowDescription/DataRow of the SELECT
        f = fields(msgs[0][1])
        assert_denial(f, cls="write", scope="read", rule="write.delete")
        assert "statement 2 of 2" in f["M"], f
    with raw_session(proxy, "write") as s:
        msgs = simple_query(s, f"INSERT INTO {table} VALUES (400, 'multi'); DROP TABLE {table}; SELECT 1")
        assert types(msgs) == ["E", "Z"], msgs
        assert_denial(fields(msgs[0][1]), cls="ddl", scope="write", rule="ddl.drop_table")
        assert tx_status(msgs) == "I"
    assert ids(admin, table) == [1, 2]


def test_multi_statement_query_all_allowed_runs(proxy, admin, table):
    with raw_session(proxy, "write") as s:
        msgs = simple_query(s, f"INSERT INTO {table} VALUES (410, 'a'); SELECT 7")
        assert types(msgs) == ["C", "T", "D", "C", "Z"], msgs
    assert ids(admin, table) == [1, 2, 410]


# =========================================================================== startup options


@pytest.mark.parametrize("options", ["-c default_transaction_read_only=off", "-c session_replication_role=replica",
                                     "--default-transaction-read-only=off"])
def test_options_lifting_read_only_refused_at_connect(proxy, options):
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(proxy.dsn("read", options=options), connect_timeout=20).close()
    msg = str(ei.value)
    setting = "session_replication_role" if "replication" in options else "default_transaction_read_only"
    assert setting in msg, msg


def test_harmless_options_pass(proxy):
    with psycopg.connect(proxy.dsn("read", options="-c statement_timeout=12345"), connect_timeout=20) as conn:
        assert conn.execute("show statement_timeout").fetchone() == ("12345ms",)
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)


# =========================================================================== the proxy stayed up


def test_proxy_alive_at_end(proxy):
    assert proxy.alive(), proxy.log()[-4000:]
    t0 = time.monotonic()
    with connect(proxy, "read") as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert time.monotonic() - t0 < 10

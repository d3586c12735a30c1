"""For each scope: denied statements leave the database unchanged, allowed ones behave as direct.

Through the real pgwarden, against the real PostgreSQL:

- Per scope (read, write, ddl), a table of statements the scope must deny. Each one is answered
  with pgwarden's 42501 denial (class, the grant's scope, the scope that would allow it, rule),
  and a snapshot of the database -- row counts and contents, the catalog (relations, columns,
  functions, schemas, comments, roles, memberships), sequences, large objects, role/database
  and ALTER SYSTEM settings -- and of the session's own state (identity, read-only, replication
  role, search_path) is the same before and after. The session stays usable.
- Per scope, allowed statements give the same result through pgwarden as on a direct
  connection as the scope's role (rows, command tags, errors) and leave the same data behind.
- COPY sub-protocol: a denied ``COPY ... FROM STDIN`` followed by CopyData/CopyDone (a client that
  streams without waiting) loads nothing; an allowed one under write loads the rows.
- psql's backslash commands work under the read scope.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
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
    execute_msg,
    fields,
    msg,
    parse_msg,
    raw_session,
    read_msg,
    read_until_ready,
    simple_query,
    tx_status,
    types,
)
from tests.integration.test_scopes import assert_denial, assert_exc_denial

pytestmark = pytest.mark.integration

PSQL = shutil.which("psql")


@pytest.fixture
def world(admin):
    """A table with a serial id (and so a sequence), a standalone sequence, a view and a function."""
    t = f"st_{uuid.uuid4().hex[:10]}"
    admin(f"create table public.{t} (id serial primary key, v text)")
    admin(f"insert into public.{t} (v) values ('one'), ('two')")
    admin(f"create sequence public.{t}_s")
    admin(f"select nextval('public.{t}_s')")
    admin(f"create view public.{t}_v as select id, v from public.{t}")
    admin(f"create function public.{t}_f() returns int language sql as 'select 1'")
    yield t
    admin(f"drop function if exists public.{t}_f()")
    admin(f"drop table if exists public.{t} cascade")
    admin(f"drop sequence if exists public.{t}_s")
    admin(f"drop table if exists public.{t}_new, public.{t}_into, public.{t}_as cascade")


def db_snapshot(admin, t: str) -> dict:
    q = {
        "rows": f"select id, v from public.{t} order by id",
        "relations": "select c.relname, c.relkind, c.relowner::regrole::text from pg_class c "
                     "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' order by 1",
        "columns": f"select attname, atttypid::regtype::text, attnotnull from pg_attribute "
                   f"where attrelid = 'public.{t}'::regclass and attnum > 0 and not attisdropped order by attnum",
        "indexes": f"select indexrelid::regclass::text from pg_index where indrelid = 'public.{t}'::regclass order by 1",
        "functions": "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                     "where n.nspname = 'public' order by 1",
        "schemas": "select nspname from pg_namespace order by 1",
        "comments": "select objoid::text, classoid::text, description from pg_description "
                    "where objoid >= 16384 order by 1, 2",
        "acl": f"select relacl::text from pg_class where oid = 'public.{t}'::regclass",
        "roles": "select rolname, rolsuper, rolcreaterole, rolbypassrls from pg_roles order by 1",
        "members": "select roleid::regrole::text, member::regrole::text from pg_auth_members order by 1, 2",
        "sequences": "select sequencename, last_value from pg_sequences where schemaname = 'public' order by 1",
        "large_objects": "select count(*) from pg_largeobject_metadata",
        "role_settings": "select setdatabase, setrole, setconfig::text from pg_db_role_setting order by 1, 2",
        "auto_conf": "select name, setting from pg_file_settings where sourcefile like '%postgresql.auto.conf' "
                     "order by 1",
        "extensions": "select extname from pg_extension order by 1",
        "prepared_xacts": "select gid from pg_prepared_xacts order by 1",
        "settings": "select name, setting from pg_settings where name in ('work_mem', "
                    "'default_transaction_read_only', 'session_replication_role', 'log_statement') order by 1",
    }
    return {k: admin(sql) for k, sql in q.items()}


SESSION_STATE = ("select current_user, session_user, current_setting('default_transaction_read_only'), "
                 "current_setting('session_replication_role'), current_setting('search_path'), "
                 "current_setting('transaction_read_only'), current_setting('work_mem')")


# (sql, class, rule); {t} is the test's table
DENIED = {
    "read": [
        ("INSERT INTO {t} (v) VALUES ('x')", "write", "write.insert"),
        ("UPDATE {t} SET v = 'x'", "write", "write.update"),
        ("DELETE FROM {t}", "write", "write.delete"),
        ("MERGE INTO {t} USING (SELECT 1 AS id) s ON {t}.id = s.id WHEN MATCHED THEN DELETE", "write",
         "write.merge"),
        ("WITH d AS (DELETE FROM {t} RETURNING *) SELECT count(*) FROM d", "write", "write.modifying_cte"),
        ("SELECT * FROM {t} FOR UPDATE", "write", "write.select_locking"),
        ("SELECT nextval('{t}_s')", "write", "function.write"),
        ("SELECT setval('{t}_s', 100)", "write", "function.write"),
        ("SELECT * FROM {t} WHERE id = nextval('{t}_id_seq')", "write", "function.write"),
        ("SELECT {t}_f()", "write", "function.unvouched"),
        ("EXPLAIN ANALYZE DELETE FROM {t}", "write", "write.delete"),
        ("EXPLAIN ANALYZE SELECT nextval('{t}_s')", "write", "function.write"),
        ("COPY (DELETE FROM {t} RETURNING *) TO STDOUT", "write", "write.delete"),
        ("COPY {t} FROM STDIN", "write", "write.copy_from"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT nextval('{t}_s')", "write", "function.write"),
        ("PREPARE p_del AS DELETE FROM {t}", "write", "write.delete"),
        ("CALL pg_catalog.pg_sleep(0)", "write", "write.call"),
        ("LOCK {t} IN EXCLUSIVE MODE", "write", "write.lock"),
        ("BEGIN READ WRITE", "write", "write.begin_read_write"),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "write", "write.read_write"),
        ("NOTIFY chan", "write", "write.notify"),
        ("SELECT pg_notify('chan', 'x')", "write", "function.write"),
        ("SELECT lo_create(0)", "write", "function.write"),
        ("PREPARE TRANSACTION 'pgw_x'", "two-phase", "two_phase.prepare_transaction"),
        ("SELECT * INTO {t}_into FROM {t}", "ddl", "ddl.select_into"),
        ("CREATE TABLE {t}_as AS SELECT 1 AS a", "ddl", "ddl.create_table_as"),
        ("CREATE TEMP TABLE tmp_x (a int)", "ddl", "ddl.create_table"),
        ("TRUNCATE {t}", "ddl", "ddl.truncate"),
        ("ANALYZE {t}", "ddl", "ddl.analyze"),
        ("COMMENT ON TABLE {t} IS 'x'", "ddl", "ddl.comment_on_table"),
        ("SET default_transaction_read_only = off", "admin", "set.read_only"),
        ("SET transaction_read_only = off", "admin", "set.read_only"),
        ("RESET default_transaction_read_only", "admin", "set.read_only"),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", "admin", "set.read_only"),
        ("SET session_replication_role = replica", "admin", "set.guarded"),
        ("SET ROLE pgw_write", "admin", "set.identity"),
        ("SET SESSION AUTHORIZATION pgw_write", "admin", "set.identity"),
        ("SELECT set_config('role', 'pgw_write', false)", "admin", "set.identity"),
        ("UPDATE pg_settings SET setting = 'off' WHERE name = 'default_transaction_read_only'", "admin",
         "admin.pg_settings"),
        ("SELECT lo_import('/etc/hostname')", "admin", "function.admin"),
        ("SELECT pg_read_file('/etc/hostname')", "admin", "function.admin"),
        ("SELECT pg_terminate_backend(pg_backend_pid())", "admin", "function.admin"),
        ("COPY {t} TO '/tmp/pgw_state_copy'", "admin", "admin.copy_file"),
        ("DO $$ BEGIN DELETE FROM {t}; END $$", "admin", "admin.do"),
    ],
    "write": [
        ("CREATE TABLE {t}_new (a int)", "ddl", "ddl.create_table"),
        ("ALTER TABLE {t} ADD COLUMN z int", "ddl", "ddl.alter_table"),
        ("DROP VIEW {t}_v", "ddl", "ddl.drop_view"),
        ("CREATE INDEX ON {t} (v)", "ddl", "ddl.create_index"),
        ("TRUNCATE {t}", "ddl", "ddl.truncate"),
        ("SELECT * INTO {t}_into FROM {t}", "ddl", "ddl.select_into"),
        ("EXPLAIN ANALYZE CREATE TABLE {t}_as AS SELECT 1", "ddl", "ddl.create_table_as"),
        ("VACUUM {t}", "ddl", "ddl.vacuum"),
        ("COMMENT ON TABLE {t} IS 'x'", "ddl", "ddl.comment_on_table"),
        ("GRANT SELECT ON {t} TO PUBLIC", "admin", "admin.grant"),
        ("CREATE ROLE pgw_state_role", "admin", "admin.create_role"),
        ("ALTER ROLE CURRENT_USER SET default_transaction_read_only = off", "admin", "admin.alter_role"),
        ("ALTER SYSTEM SET work_mem = '77MB'", "admin", "admin.alter_system"),
        ("SET session_replication_role = replica", "admin", "set.guarded"),
        ("SELECT set_config('session_replication_role', 'replica', false)", "admin", "set.guarded"),
        ("SET ROLE pgw_ddl", "admin", "set.identity"),
        ("COPY {t} FROM PROGRAM 'echo 9'", "admin", "admin.copy_program"),
        ("SELECT lo_export(1, '/tmp/pgw_state_lo')", "admin", "function.admin"),
        ("DO $$ BEGIN TRUNCATE {t}; END $$", "admin", "admin.do"),
        ("LOAD 'plpgsql'", "admin", "admin.load"),
        ("CHECKPOINT", "admin", "admin.checkpoint"),
    ],
    "ddl": [
        ("GRANT SELECT ON {t} TO PUBLIC", "admin", "admin.grant"),
        ("REVOKE ALL ON {t} FROM PUBLIC", "admin", "admin.revoke"),
        ("CREATE ROLE pgw_state_role", "admin", "admin.create_role"),
        ("GRANT pg_write_server_files TO CURRENT_USER", "admin", "admin.grant"),
        ("ALTER SYSTEM SET work_mem = '77MB'", "admin", "admin.alter_system"),
        ("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", "admin", "admin.create_extension"),
        ("ALTER DATABASE appdb SET work_mem = '77MB'", "admin", "admin.alter_database"),
        ("SET ROLE postgres", "admin", "set.identity"),
        ("COPY {t} TO PROGRAM 'cat > /tmp/pgw_state_prog'", "admin", "admin.copy_program"),
        ("SELECT pg_reload_conf()", "admin", "function.admin"),
        ("DO $$ BEGIN DROP TABLE {t}; END $$", "admin", "admin.do"),
        ("SECURITY LABEL ON TABLE {t} IS 'x'", "admin", "admin.security_label"),
    ],
}

ALLOW = {"write": "write", "ddl": "ddl", "two-phase": "write", "admin": None}


def _cases():
    for scope, rows in DENIED.items():
        for sql, cls, rule in rows:
            yield pytest.param(scope, sql, cls, rule, id=f"{scope}:{rule}:{sql[:28]}")


@pytest.mark.parametrize("scope, sql, cls, rule", list(_cases()))
def test_denied_statement_leaves_database_and_session_unchanged(proxy, admin, world, scope, sql, cls, rule):
    t = world
    before = db_snapshot(admin, t)
    with psycopg.connect(proxy.dsn(scope), connect_timeout=20, autocommit=True) as conn:
        session_before = conn.execute(SESSION_STATE).fetchone()
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(sql.format(t=t))
        assert_exc_denial(ei.value, cls=cls, scope=scope, allow=ALLOW[cls], rule=rule)
        assert conn.pgconn.transaction_status == TS.IDLE
        assert conn.execute(SESSION_STATE).fetchone() == session_before
        assert conn.execute(f"select count(*) from {t}").fetchone() == (2,)
    assert db_snapshot(admin, t) == before


@pytest.mark.parametrize("scope", ["read", "write", "ddl"])
def test_denials_inside_a_transaction_leave_nothing(proxy, admin, world, scope):
    """BEGIN; <allowed>; <denied>; COMMIT -> ROLLBACK, for each scope."""
    t = world
    allowed = {"read": f"SELECT count(*) FROM {t}", "write": f"INSERT INTO {t} (v) VALUES ('tx')",
               "ddl": f"CREATE TABLE {t}_new (a int)"}[scope]
    denied = {"read": f"DELETE FROM {t}", "write": f"TRUNCATE {t}", "ddl": f"GRANT SELECT ON {t} TO PUBLIC"}[scope]
    before = db_snapshot(admin, t)
    with psycopg.connect(proxy.dsn(scope), connect_timeout=20, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(allowed)
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute(denied)
        assert conn.pgconn.transaction_status == TS.INERROR
        assert conn.execute("COMMIT").statusmessage == "ROLLBACK"
    after = db_snapshot(admin, t)
    if scope == "write":
        # The INSERT drew a value from the serial's sequence: sequences are not transactional, a
        # rollback on a direct connection leaves the same gap. Everything else is as before.
        before.pop("sequences"), after.pop("sequences")
    assert after == before


# =========================================================================== allowed statements behave as direct

ALLOWED = {
    "read": [
        "SELECT id, v FROM {t} ORDER BY id",
        "SELECT count(*), max(id) FROM {t}_v",
        "TABLE {t}",
        "VALUES (1, 'a'), (2, 'b')",
        "SELECT currval('{t}_s') IS NULL",
        "SELECT last_value FROM {t}_s",
        "SELECT * FROM {t} WHERE v LIKE 'o%' ORDER BY 1",
        "WITH x AS (SELECT id FROM {t}) SELECT sum(id) FROM x",
        "EXPLAIN (COSTS OFF) SELECT * FROM {t} WHERE id = 1",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT 1",
        "SHOW default_transaction_read_only",
        "SHOW transaction_isolation",
        "SET work_mem = '8MB'",
        "SET statement_timeout = '5s'",
        "SELECT set_config('application_name', 'x', false)",
        "RESET work_mem",
        "BEGIN READ ONLY",
        "DECLARE c CURSOR FOR SELECT id, v FROM {t} ORDER BY id",
        "FETCH 1 FROM c",
        "MOVE NEXT IN c",
        "FETCH ALL FROM c",
        "CLOSE c",
        "PREPARE q AS SELECT count(*) FROM {t}",
        "EXECUTE q",
        "DEALLOCATE q",
        "SAVEPOINT a",
        "ROLLBACK TO a",
        "COMMIT",
        "LOCK {t} IN ACCESS SHARE MODE",
        "SELECT pg_advisory_lock(42), pg_advisory_unlock(42)",
        "LISTEN chan",
        "UNLISTEN *",
        "SELECT pg_sleep(0)",
        "SELECT to_regclass('public.{t}') IS NOT NULL, pg_get_viewdef('public.{t}_v'::regclass) <> ''",
        "SELECT format_type('int4'::regtype, NULL), version() LIKE 'PostgreSQL%'",
        "DISCARD ALL",
        "SELECT 1 / 0",
        "SELECT * FROM no_such_table",
    ],
    "write": [
        "INSERT INTO {t} (v) VALUES ('three') RETURNING id, v",
        "UPDATE {t} SET v = upper(v) WHERE id = 1",
        "DELETE FROM {t} WHERE id = 2 RETURNING v",
        "WITH d AS (UPDATE {t} SET v = v || '!' RETURNING id) SELECT count(*) FROM d",
        "SELECT nextval('{t}_s')",
        "SELECT setval('{t}_s', 50)",
        "INSERT INTO {t} (v) SELECT 'gen' || g FROM generate_series(1, 3) g",
        "MERGE INTO {t} USING (VALUES (1, 'm')) s(id, v) ON {t}.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v",
        "LOCK {t} IN ROW EXCLUSIVE MODE",
        "SELECT * FROM {t} ORDER BY id FOR UPDATE",
        "NOTIFY chan, 'x'",
        "SELECT {t}_f()",
        "BEGIN READ WRITE",
        "INSERT INTO {t} (v) VALUES ('in tx')",
        "COMMIT",
        "INSERT INTO {t} (id, v) VALUES (1, 'dup')",
        "SELECT id, v FROM {t} ORDER BY id",
    ],
    "ddl": [
        "CREATE TABLE {t}_new (a int primary key, b text)",
        "ALTER TABLE {t}_new ADD COLUMN c int DEFAULT 7",
        "INSERT INTO {t}_new (a, b) VALUES (1, 'x')",
        "CREATE INDEX ON {t}_new (b)",
        "COMMENT ON TABLE {t}_new IS 'made through pgwarden'",
        "SELECT a, b, c FROM {t}_new",
        "CREATE TABLE {t}_as AS SELECT a FROM {t}_new",
        "TRUNCATE {t}_new",
        "ANALYZE {t}_new",
        "DROP TABLE {t}_as",
        "SELECT obj_description('{t}_new'::regclass)",
        "DROP TABLE {t}_new",
    ],
}


def _run(conn, sql: str):
    try:
        cur = conn.execute(sql)
    except psycopg.Error as e:
        return ("error", e.sqlstate)
    rows = cur.fetchall() if cur.description is not None else None
    return (cur.statusmessage, rows)


def _normalise(sql: str, result, table: str):
    if sql.startswith("EXPLAIN (ANALYZE") and result[1]:
        return (result[0], len(result[1]))
    if result[1]:
        result = (result[0], [tuple(v.replace(table, "{t}") if isinstance(v, str) else v for v in row)
                              for row in result[1]])
    return result


@pytest.mark.parametrize("scope", ["read", "write", "ddl"])
def test_allowed_statements_behave_as_direct(proxy, pg, admin, scope_roles, scope):
    role, password = scope_roles[scope]
    tables = {}
    for side in ("direct", "proxy"):
        t = f"sd_{side}_{uuid.uuid4().hex[:8]}"
        admin(f"create table public.{t} (id serial primary key, v text)")
        admin(f"insert into public.{t} (v) values ('one'), ('two')")
        admin(f"create sequence public.{t}_s")
        admin(f"create view public.{t}_v as select id, v from public.{t}")
        admin(f"create function public.{t}_f() returns int language sql as 'select 1'")
        tables[side] = t
    try:
        options = "-c default_transaction_read_only=on" if scope == "read" else ""
        direct = psycopg.connect(pg.dsn(DB, user=role, password=password), autocommit=True, connect_timeout=20,
                                 options=options)
        proxied = psycopg.connect(proxy.dsn(scope), autocommit=True, connect_timeout=20)
        with direct, proxied:
            for sql in ALLOWED[scope]:
                d = _normalise(sql, _run(direct, sql.format(t=tables["direct"])), tables["direct"])
                p = _normalise(sql, _run(proxied, sql.format(t=tables["proxy"])), tables["proxy"])
                assert p == d, f"{scope}: {sql!r}\n direct: {d}\n proxy:  {p}"
                assert proxied.pgconn.transaction_status == direct.pgconn.transaction_status, sql
        for suffix, q in (("", "select id, v from public.{t} order by id"),
                          ("_s", "select last_value from public.{t}_s")):
            assert admin(q.format(t=tables["direct"])) == admin(q.format(t=tables["proxy"])), q
    finally:
        for t in tables.values():
            admin(f"drop function if exists public.{t}_f()")
            admin(f"drop table if exists public.{t}, public.{t}_new, public.{t}_as cascade")
            admin(f"drop sequence if exists public.{t}_s")


# =========================================================================== COPY sub-protocol


def _copy_data(rows: list[str]) -> bytes:
    return b"".join(msg(b"d", r.encode() + b"\n") for r in rows) + msg(b"c")


def test_denied_copy_from_stdin_then_copy_data_loads_nothing(proxy, admin, world):
    """A client that streams CopyData right behind its COPY (without waiting for CopyInResponse)
    gets the denial; the server ignores the CopyData outside COPY, nothing is loaded."""
    t = world
    before = db_snapshot(admin, t)
    with raw_session(proxy, "read") as s:
        s.sendall(msg(b"Q", f"COPY {t} (v) FROM STDIN".encode() + b"\0") + _copy_data(["a", "b", "c"]))
        msgs = read_until_ready(s)
        assert types(msgs) == ["E", "Z"], msgs
        assert_denial(fields(msgs[0][1]), cls="write", scope="read", allow="write", rule="write.copy_from")
        msgs = simple_query(s, f"SELECT count(*) FROM {t}")
        assert types(msgs) == ["T", "D", "C", "Z"], msgs
        # the extended protocol too: Parse of the COPY is denied, Bind/Execute never reach a statement
        s.sendall(msg(b"P", b"\0" + f"COPY {t} (v) FROM STDIN".encode() + b"\0\0\0")
                  + msg(b"B", b"\0\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0") + _copy_data(["d"]) + msg(b"S"))
        msgs = read_until_ready(s)
        assert msgs[0][0] == b"E" and msgs[-1][0] == b"Z", msgs
        assert_denial(fields(msgs[0][1]), cls="write", scope="read", rule="write.copy_from")
        assert tx_status(msgs) == "I"
    assert db_snapshot(admin, t) == before


def test_copy_in_and_out_under_write(proxy, admin, world):
    t = world
    with raw_session(proxy, "write") as s:
        s.sendall(msg(b"Q", f"COPY {t} (v) FROM STDIN".encode() + b"\0"))
        first = read_msg(s)
        assert first[0] == b"G", first
        s.sendall(_copy_data(["three", "four"]))
        msgs = read_until_ready(s)
        assert types(msgs) == ["C", "Z"] and command_tag(msgs[0][1]) == "COPY 2", msgs
        s.sendall(msg(b"Q", f"COPY (SELECT v FROM {t} ORDER BY id) TO STDOUT".encode() + b"\0"))
        msgs = read_until_ready(s)
        assert types(msgs)[0] == "H" and types(msgs)[-3:] == ["c", "C", "Z"], msgs
        assert [b for m, b in msgs if m == b"d"] == [b"one\n", b"two\n", b"three\n", b"four\n"]
    assert [r[0] for r in admin(f"select v from {t} order by id")] == ["one", "two", "three", "four"]


# =========================================================================== psql under read


PSQL_COMMANDS = [r"\l", r"\dt", r"\d {t}", r"\d+ {t}", r"\dv", r"\ds", r"\di", r"\dn", r"\df", r"\df+ {t}_f",
                 r"\du", r"\dp {t}", r"\dx", r"\dT", r"\dD", r"\db", r"\dc", r"\dC", r"\dd", r"\des", r"\dew",
                 r"\dL", r"\do", r"\dO", r"\dRp", r"\dRs", r"\dy", r"\sf {t}_f", r"\sv {t}_v", r"\conninfo",
                 r"\encoding", r"\drds", r"\dconfig work_mem", r"\dE", r"\dm", r"\dA", r"\dF"]


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
@pytest.mark.parametrize("cmd", PSQL_COMMANDS)
def test_psql_backslash_commands_under_read(proxy, world, cmd):
    cmd = cmd.format(t=world)
    proc = subprocess.run([PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-c", cmd], env=proxy.env("read"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "pgwarden" not in proc.stderr, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    if "{t}" in cmd or world in cmd:
        assert world in proc.stdout, proc.stdout


# =========================================================================== Describe, Flush, Close


def test_describe_flush_close_relayed_and_denial_answered_on_flush(proxy, admin, world):
    """Describe and Flush pass through; a denied Parse is answered at Flush (no Sync needed),
    as the server answers its own errors, and the batch then skips to Sync."""
    t = world
    flush = msg(b"H")
    with raw_session(proxy, "read") as s:
        s.sendall(parse_msg(f"SELECT id, v FROM {t} WHERE id = $1", name="sd") + msg(b"D", b"Ssd\0") + flush)
        got = [read_msg(s) for _ in range(3)]
        assert [m[0] for m in got] == [b"1", b"t", b"T"], got          # ParseComplete, ParameterDescription, RowDescription
        s.sendall(msg(b"B", b"\0sd\0" + struct.pack("!hh", 0, 1) + struct.pack("!i", 1) + b"1" + struct.pack("!h", 0))
                  + msg(b"D", b"P\0") + execute_msg() + flush)
        got = [read_msg(s) for _ in range(4)]
        assert [m[0] for m in got] == [b"2", b"T", b"D", b"C"], got
        s.sendall(msg(b"C", b"Ssd\0") + SYNC)
        got = read_until_ready(s)
        assert types(got) == ["3", "Z"], got
        # a denied Parse, then Flush: the denial comes without waiting for Sync
        s.sendall(parse_msg(f"DELETE FROM {t}", name="del") + flush)
        m = read_msg(s)
        assert m[0] == b"E", m
        assert_denial(fields(m[1]), cls="write", scope="read", rule="write.delete")
        # the rest of the batch is skipped until Sync, as after a server error
        s.sendall(bind_msg("del") + execute_msg() + SYNC)
        got = read_until_ready(s)
        assert types(got) == ["Z"] and tx_status(got) == "I", got
        assert types(simple_query(s, "SELECT 1")) == ["T", "D", "C", "Z"]
    assert admin(f"select count(*) from {t}") == [(2,)]

"""The Python drivers' protocol features work through pgwarden as they do directly.

psycopg 3 (libpq underneath): simple queries, server-side prepared statements, binary results,
executemany, pipeline mode, COPY in both directions, LISTEN/NOTIFY between two proxied
sessions, NOTICE delivery, ParameterStatus updates, server errors with their real SQLSTATE,
and transaction-status tracking (the ReadyForQuery status byte).

asyncpg (its own protocol implementation, extended protocol + binary format throughout):
parameterised fetch, prepared-statement reuse, binary COPY in and COPY out, executemany,
transaction rollback, and cancellation of a running query through a CancelRequest sent to
the proxy.

Where a value could be mangled on the way (binary results, COPY output) it is compared with
what the same query returns on a direct connection.

Three psycopg tests pin bugs found here: libpq >= 17's cancel over TLS (needs close_notify),
libpq 18's protocol 3.2 request (NegotiateProtocolVersion carries the whole version), and
BackendKeyData's pid (the server's, so clients recognise their own notifications).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import io
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import pq

pytestmark = pytest.mark.integration


@pytest.fixture
def table(admin):
    """A fresh table public.drv_<hex> (id int primary key, name text, n numeric), dropped afterwards."""
    name = f"drv_{uuid.uuid4().hex[:12]}"
    admin(f"create table public.{name} (id int primary key, name text, n numeric)")
    yield name
    admin(f"drop table if exists public.{name}")


# A query whose results exercise the binary format of many types.
TYPED_QUERY = """
select 42::int2, 2147483647::int4, 9223372036854775807::int8, 1.5::float4, 2.25::float8,
       12345.678900::numeric, 'héllo'::text, 'x'::varchar(3), true, null::int,
       '\\xdeadbeef'::bytea, '2024-02-29'::date, '2024-02-29 12:34:56.789+02'::timestamptz,
       '12:34:56'::time, '1 day 02:03:04'::interval, array[1, 2, null]::int[],
       '{"a": [1, 2, {"b": null}]}'::jsonb, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid,
       '192.168.0.1/24'::inet
"""


# =========================================================================== psycopg 3


def test_psycopg_simple_queries(proxy):
    with psycopg.connect(proxy.dsn("read"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        # Several statements in one simple Query message: one result set each.
        cur = conn.cursor()
        cur.execute("select 1 as one; select 2 as two")
        assert cur.fetchone() == (1,)
        assert cur.nextset()
        assert cur.description[0].name == "two" and cur.fetchone() == (2,)
        assert not cur.nextset()
        rows = conn.execute("select g, g * g from generate_series(1, 1000) g").fetchall()
        assert len(rows) == 1000 and rows[-1] == (1000, 1_000_000)
        assert conn.execute("select current_user, current_database()").fetchone() == ("pgw_read", "appdb")


def test_psycopg_server_side_prepared_statements(proxy):
    with psycopg.connect(proxy.dsn("read"), prepare_threshold=0, autocommit=True) as conn:
        assert conn.prepare_threshold == 0 and conn.prepared_max > 0
        sql = "select %s::int * 2, %s::text || '!'"
        for i in range(8):
            assert conn.execute(sql, (i, f"v{i}")).fetchone() == (i * 2, f"v{i}!")
        # The statement is prepared once on the server and reused by name.
        prepared = conn.execute(
            "select name, statement from pg_prepared_statements where statement like %s",
            ("%::int * 2%",)).fetchall()
        assert len(prepared) == 1, prepared
        assert prepared[0][0].startswith("_pg3_")
        assert "$1::int * 2" in prepared[0][1]
        # Same query with prepare=False is not added again.
        conn.execute(sql, (1, "x"), prepare=False)


def test_psycopg_prepared_statement_survives_error(proxy):
    with psycopg.connect(proxy.dsn("read"), prepare_threshold=0) as conn:
        for i in range(1, 4):
            assert conn.execute("select 10 / %s::int", (i,)).fetchone() == (10 // i,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 10 / %s::int", (0,))
        conn.rollback()
        assert conn.execute("select 10 / %s::int", (5,)).fetchone() == (2,)


def test_psycopg_binary_results_match_direct(proxy, pg):
    with psycopg.connect(proxy.dsn("read")) as conn:
        cur = conn.cursor(binary=True)
        cur.execute(TYPED_QUERY)
        via_proxy = cur.fetchone()
        assert all(cur.pgresult.fformat(i) == pq.Format.BINARY for i in range(cur.pgresult.nfields))
    with psycopg.connect(pg.dsn("appdb")) as conn:
        direct = conn.cursor(binary=True).execute(TYPED_QUERY).fetchone()
    assert via_proxy == direct
    assert via_proxy[0] == 42 and via_proxy[5] == decimal.Decimal("12345.678900")
    assert via_proxy[10] == b"\xde\xad\xbe\xef"
    assert via_proxy[12] == dt.datetime(2024, 2, 29, 10, 34, 56, 789000, tzinfo=dt.timezone.utc)
    assert via_proxy[15] == [1, 2, None]
    assert via_proxy[16] == {"a": [1, 2, {"b": None}]}


def test_psycopg_binary_parameters(proxy, table, admin):
    with psycopg.connect(proxy.dsn("write")) as conn:
        conn.execute(f"insert into {table} values (%b, %b, %b)", (1, "bin", decimal.Decimal("3.14")))
        conn.commit()
    assert admin(f"select id, name, n from {table}") == [(1, "bin", decimal.Decimal("3.14"))]


def test_psycopg_executemany(proxy, table, admin):
    rows = [(i, f"name-{i}", decimal.Decimal(i) / 4) for i in range(200)]
    with psycopg.connect(proxy.dsn("write")) as conn:
        cur = conn.cursor()
        cur.executemany(f"insert into {table} (id, name, n) values (%s, %s, %s)", rows)
        assert cur.rowcount == 200
        conn.commit()
        cur.executemany(f"update {table} set name = %s where id = %s returning id", [("u", 1), ("u", 2)],
                        returning=True)
        ids = []
        while True:
            ids.append(cur.fetchone()[0])
            if not cur.nextset():
                break
        assert ids == [1, 2]
        conn.commit()
    assert admin(f"select count(*), sum(n) from {table}") == [(200, sum(r[2] for r in rows))]
    assert admin(f"select count(*) from {table} where name = 'u'") == [(2,)]


def test_psycopg_pipeline_mode(proxy, table, admin):
    with psycopg.connect(proxy.dsn("write")) as conn:
        with conn.pipeline() as p:
            cur = conn.cursor()
            for i in range(5):
                conn.execute(f"insert into {table} (id, name) values (%s, %s)", (i, f"p{i}"))
            cur.execute(f"select count(*), string_agg(name, ',' order by id) from {table}")
            p.sync()
            assert cur.fetchone() == (5, "p0,p1,p2,p3,p4")
            # An error inside the pipeline aborts only what follows it up to the next sync.
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(f"insert into {table} (id, name) values (0, 'dup')")
                p.sync()
        conn.rollback()
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)
        with conn.pipeline():
            conn.execute(f"insert into {table} (id, name) values (%s, %s)", (100, "kept"))
            cur = conn.execute(f"select name from {table} where id = %s", (100,))
        assert cur.fetchone() == ("kept",)
        conn.commit()
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert admin(f"select id, name from {table}") == [(100, "kept")]


def test_psycopg_copy_both_directions(proxy, table, admin, pg):
    rows = [(i, f"row\t{i}\n", decimal.Decimal(i) / 3) for i in range(1, 501)]
    rows.append((0, None, None))
    with psycopg.connect(proxy.dsn("write")) as conn:
        with conn.cursor().copy(f"COPY {table} (id, name, n) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        conn.commit()
    assert admin(f"select count(*) from {table}") == [(501,)]

    def dump(dsn: str) -> bytes:
        with psycopg.connect(dsn) as conn:
            buf = b""
            with conn.cursor().copy(f"COPY (select * from {table} order by id) TO STDOUT") as copy:
                for chunk in copy:
                    buf += bytes(chunk)
            return buf

    via_proxy = dump(proxy.dsn("read"))
    assert via_proxy == dump(pg.dsn("appdb"))
    assert via_proxy.count(b"\n") == 501

    # Row-by-row and binary-format COPY out.
    with psycopg.connect(proxy.dsn("read")) as conn:
        with conn.cursor().copy(f"COPY (select id, name from {table} where id <= 3 order by id) TO STDOUT") as copy:
            assert list(copy.rows()) == [("0", None), ("1", "row\t1\n"), ("2", "row\t2\n"), ("3", "row\t3\n")]
        with conn.cursor().copy(
                f"COPY (select id, n from {table} where id in (1, 2) order by id) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "numeric"])
            assert list(copy.rows()) == [(1, rows[0][2]), (2, rows[1][2])]


def test_psycopg_copy_binary_in(proxy, table, admin):
    with psycopg.connect(proxy.dsn("write")) as conn:
        with conn.cursor().copy(f"COPY {table} (id, name) FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(["int4", "text"])
            for i in range(100):
                copy.write_row((i, "b" * i))
        conn.commit()
    assert admin(f"select count(*), sum(length(name)) from {table}") == [(100, sum(range(100)))]


def test_psycopg_copy_error_keeps_connection_usable(proxy, table):
    with psycopg.connect(proxy.dsn("write"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with conn.cursor().copy(f"COPY {table} (id) FROM STDIN") as copy:
                copy.write(b"1\nnot-a-number\n")
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)


def test_psycopg_listen_notify_between_proxied_sessions(proxy):
    channel = f"chan_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(proxy.dsn("read"), autocommit=True) as listener, \
            psycopg.connect(proxy.dsn("write"), autocommit=True) as sender:
        listener.execute(f"LISTEN {channel}")
        sender_pid = sender.execute("select pg_backend_pid()").fetchone()[0]
        sender.execute(f"NOTIFY {channel}, 'hello'")
        sender.execute("select pg_notify(%s, %s)", (channel, "second"))
        got = list(listener.notifies(timeout=10, stop_after=2))
        assert [(n.channel, n.payload) for n in got] == [(channel, "hello"), (channel, "second")]
        # The pid in a NotificationResponse is the upstream backend's pid.
        assert {n.pid for n in got} == {sender_pid}

        # A notification that arrives while the listener is idle is delivered on the next query.
        sender.execute(f"NOTIFY {channel}, 'while idle'")
        time.sleep(0.5)
        received = []
        listener.add_notify_handler(received.append)
        listener.execute("select 1")
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            listener.execute("select 1")
            time.sleep(0.1)
        assert [n.payload for n in received] == ["while idle"]


def test_psycopg_notify_delivered_to_idle_listener(proxy):
    """A notification is pushed to a session that is waiting, not only on its next query."""
    channel = f"idle_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(proxy.dsn("read"), autocommit=True) as listener:
        listener.execute(f"LISTEN {channel}")

        def send_later() -> None:
            time.sleep(1)
            with psycopg.connect(proxy.dsn("write"), autocommit=True) as sender:
                sender.execute(f"NOTIFY {channel}, 'pushed'")

        t = threading.Thread(target=send_later)
        t.start()
        try:
            got = list(listener.notifies(timeout=15, stop_after=1))
        finally:
            t.join()
        assert [n.payload for n in got] == ["pushed"]


def test_psycopg_notice_reaches_handler(proxy, admin):
    fn = f"drv_notice_{uuid.uuid4().hex[:10]}"
    admin(f"create function public.{fn}(t text) returns int language plpgsql as "
          f"$$ begin raise notice 'hello %', t; raise warning 'careful'; return length(t); end $$")
    try:
        notices = []
        # Under read, a user-defined function is not one pgwarden can vouch for: write scope.
        with psycopg.connect(proxy.dsn("write"), autocommit=True) as conn:
            # The Diagnostic is only valid inside the callback: copy its fields out.
            conn.add_notice_handler(lambda d: notices.append((d.severity, d.sqlstate, d.message_primary)))
            assert conn.execute(f"select public.{fn}(%s)", ("world",)).fetchone() == (5,)
            assert notices == [("NOTICE", "00000", "hello world"), ("WARNING", "01000", "careful")]

            # client_min_messages filters on the server: no notice below WARNING now.
            notices.clear()
            conn.execute("set client_min_messages = warning")
            conn.execute(f"select public.{fn}(%s)", ("x",))
            assert [n[0] for n in notices] == ["WARNING"]
    finally:
        admin(f"drop function public.{fn}(text)")


def test_psycopg_parameter_status_updates(proxy):
    with psycopg.connect(proxy.dsn("read"), application_name="my-app", autocommit=True) as conn:
        info = conn.info
        # At login the client sees its own application_name (the proxy tags only the upstream one).
        assert info.parameter_status("application_name") == "my-app"
        assert info.parameter_status("server_version").startswith("15")
        assert info.parameter_status("client_encoding") == "UTF8"
        assert info.parameter_status("standard_conforming_strings") == "on"
        assert info.server_version >= 150000

        conn.execute("SET application_name = 'renamed'")
        assert info.parameter_status("application_name") == "renamed"
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert conn.execute("select now()").fetchone()[0].utcoffset() == dt.timedelta(hours=9)
        conn.execute("SET DateStyle = 'German, DMY'")
        assert info.parameter_status("DateStyle") == "German, DMY"


def test_psycopg_backend_key_cancel(proxy):
    """conn.cancel() (libpq PQcancel) stops a running statement through the proxy."""
    with psycopg.connect(proxy.dsn("read")) as conn:
        timer = threading.Timer(1.0, conn.cancel)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
        finally:
            timer.cancel()
        assert time.monotonic() - started < 20
        conn.rollback()
        assert conn.execute("select 'after cancel'").fetchone() == ("after cancel",)


@pytest.mark.parametrize("sslmode", [
    "disable",
    "require",
])
def test_psycopg_cancel_safe(proxy, sslmode):
    """libpq >= 17's cancel API (conn.cancel_safe) sends the CancelRequest over TLS when the session uses TLS."""
    if pq.version() < 170000:
        pytest.skip(f"libpq {pq.version()} has no PQcancelCreate")
    with psycopg.connect(proxy.dsn("read", sslmode=sslmode)) as conn:
        assert conn.pgconn.ssl_in_use is (sslmode == "require")
        errors: list[Exception] = []

        def cancel() -> None:
            try:
                conn.cancel_safe(timeout=10)
            except Exception as e:          # noqa: BLE001 - reported by the assert below
                errors.append(e)

        timer = threading.Timer(1.0, cancel)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
        finally:
            timer.join()
        assert time.monotonic() - started < 20
        assert errors == [], f"cancel_safe() failed: {errors}"
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)


def test_psycopg_protocol_3_2_request_is_negotiated_down(proxy, pg):
    """A libpq 18 client asking for protocol 3.2 is downgraded to 3.0 and connects, as it does directly."""
    if pq.version() < 180000:
        pytest.skip(f"libpq {pq.version()} has no max_protocol_version")
    with psycopg.connect(pg.dsn("appdb"), max_protocol_version="3.2") as conn:
        assert conn.execute("select 1").fetchone() == (1,)        # direct: PostgreSQL 15 negotiates 3.0
    with psycopg.connect(proxy.dsn("read"), max_protocol_version="3.2") as conn:
        assert conn.execute("select current_user").fetchone() == ("pgw_read",)
        assert conn.pgconn.protocol_version == 3


def test_psycopg_backend_pid_matches_server(proxy):
    """Apps skip their own notifications by comparing Notify.pid with conn.info.backend_pid (PQbackendPID)."""
    channel = f"self_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(proxy.dsn("write"), autocommit=True) as conn:      # NOTIFY is write class
        conn.execute(f"LISTEN {channel}")
        conn.execute(f"NOTIFY {channel}, 'mine'")
        own = next(conn.notifies(timeout=10, stop_after=1))
        assert own.payload == "mine"
        assert own.pid == conn.info.backend_pid
        assert conn.execute("select pg_backend_pid()").fetchone()[0] == conn.info.backend_pid


def test_psycopg_unique_violation_has_real_sqlstate(proxy, table):
    with psycopg.connect(proxy.dsn("write")) as conn:
        conn.execute(f"insert into {table} (id, name) values (1, 'a')")
        conn.commit()
        with pytest.raises(psycopg.errors.UniqueViolation) as excinfo:
            conn.execute(f"insert into {table} (id, name) values (1, 'again')")
        diag = excinfo.value.diag
        assert excinfo.value.sqlstate == "23505"
        assert diag.severity == "ERROR"
        assert diag.constraint_name == f"{table}_pkey"
        assert diag.table_name == table and diag.schema_name == "public"
        assert diag.message_detail == "Key (id)=(1) already exists."
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute(f"select name from {table}").fetchall() == [("a",)]


def test_psycopg_other_sqlstates(proxy):
    with psycopg.connect(proxy.dsn("read"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable) as e:
            conn.execute("select * from no_such_table_here")
        assert e.value.sqlstate == "42P01" and e.value.diag.statement_position == "15"
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("selec 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:   # pgwarden's denial: ddl class
            conn.execute("create temp table t (x int)")
        assert "ddl" in str(e.value)
        assert conn.execute("select 'ok'").fetchone() == ("ok",)


def test_psycopg_transaction_status_tracking(proxy, table, admin):
    TS = pq.TransactionStatus
    with psycopg.connect(proxy.dsn("write")) as conn:
        assert conn.info.transaction_status == TS.IDLE
        conn.execute(f"insert into {table} (id) values (1)")
        assert conn.info.transaction_status == TS.INTRANS
        conn.rollback()
        assert conn.info.transaction_status == TS.IDLE
        assert admin(f"select count(*) from {table}") == [(0,)]

        with conn.transaction():
            conn.execute(f"insert into {table} (id) values (2)")
            assert conn.info.transaction_status == TS.INTRANS
            with pytest.raises(psycopg.errors.DivisionByZero):
                with conn.transaction():          # savepoint
                    conn.execute("select 1/0")
            assert conn.info.transaction_status == TS.INTRANS
            conn.execute(f"insert into {table} (id) values (3)")
        assert conn.info.transaction_status == TS.IDLE
        assert admin(f"select id from {table} order by id") == [(2,), (3,)]

        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        assert conn.info.transaction_status == TS.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.info.transaction_status == TS.IDLE

    with psycopg.connect(proxy.dsn("write"), autocommit=True) as conn:
        conn.execute("begin")
        assert conn.info.transaction_status == TS.INTRANS
        conn.execute("commit")
        assert conn.info.transaction_status == TS.IDLE


# =========================================================================== asyncpg

asyncpg = pytest.importorskip("asyncpg")


async def _aconnect(proxy, scope: str = "read", **kw):
    return await asyncpg.connect(proxy.dsn(scope), timeout=20, **kw)


async def test_asyncpg_fetch_with_params(proxy):
    conn = await _aconnect(proxy)
    try:
        rows = await conn.fetch("select $1::int + 1 as a, $2::text as b, $3::numeric * 2 as c, $4::int[] as d",
                                41, "héllo", decimal.Decimal("1.25"), [1, None, 3])
        assert len(rows) == 1
        r = rows[0]
        assert (r["a"], r["b"], r["c"], r["d"]) == (42, "héllo", decimal.Decimal("2.50"), [1, None, 3])
        assert await conn.fetchval("select current_user") == "pgw_read"
        assert await conn.fetchval("select $1::bytea", b"\x00\x01\xff") == b"\x00\x01\xff"
        ts = dt.datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone.utc)
        assert await conn.fetchval("select $1::timestamptz", ts) == ts
        many = await conn.fetch("select g from generate_series(1, $1::int) g", 5000)
        assert [r[0] for r in many] == list(range(1, 5001))
    finally:
        await conn.close()


async def test_asyncpg_results_match_direct(proxy, pg):
    via = await _aconnect(proxy)
    direct = await asyncpg.connect(pg.dsn("appdb"), timeout=20)
    try:
        a = await via.fetchrow(TYPED_QUERY)
        b = await direct.fetchrow(TYPED_QUERY)
        assert tuple(a) == tuple(b)
    finally:
        await via.close()
        await direct.close()


async def test_asyncpg_prepared_statement_reuse(proxy):
    conn = await _aconnect(proxy)
    try:
        stmt = await conn.prepare("select $1::int * 3 as x, $2::text as t")
        assert [a.name for a in stmt.get_attributes()] == ["x", "t"]
        for i in range(10):
            assert tuple(await stmt.fetchrow(i, str(i))) == (i * 3, str(i))
        # asyncpg's statement cache: repeated conn.fetch reuses a named server statement.
        for i in range(5):
            assert await conn.fetchval("select $1::int + 100", i) == i + 100
        names = await conn.fetch("select name from pg_prepared_statements")
        assert len(names) >= 2
        async with conn.transaction():
            cur_rows = [r[0] async for r in conn.cursor("select g from generate_series(1, 250) g", prefetch=50)]
        assert cur_rows == list(range(1, 251))
    finally:
        await conn.close()


async def test_asyncpg_copy_records_to_table_and_copy_from_query(proxy, table, admin, pg):
    records = [(i, f"r{i}", decimal.Decimal(i) / 8) for i in range(1000)]
    conn = await _aconnect(proxy, "write")
    try:
        status = await conn.copy_records_to_table(table, records=records, columns=["id", "name", "n"])
        assert status == "COPY 1000"
    finally:
        await conn.close()
    assert admin(f"select count(*), sum(n) from {table}") == [(1000, sum(r[2] for r in records))]

    async def dump(dsn):
        c = await asyncpg.connect(dsn, timeout=20)
        try:
            buf = io.BytesIO()
            status = await c.copy_from_query(f"select * from {table} where id < $1 order by id", 600,
                                             output=buf, format="csv")
            return status, buf.getvalue()
        finally:
            await c.close()

    status, via = await dump(proxy.dsn("read"))
    assert status == "COPY 600"
    assert via.splitlines()[:2] == [b"0,r0,0", b"1,r1,0.125"]
    assert (status, via) == await dump(pg.dsn("appdb"))

    conn = await _aconnect(proxy, "read")
    try:
        buf = io.BytesIO()
        assert await conn.copy_from_table(table, output=buf, columns=["id"]) == "COPY 1000"
        assert sorted(int(x) for x in buf.getvalue().split()) == list(range(1000))
    finally:
        await conn.close()


async def test_asyncpg_executemany(proxy, table, admin):
    conn = await _aconnect(proxy, "write")
    try:
        await conn.executemany(f"insert into {table} (id, name) values ($1, $2)",
                               [(i, f"m{i}") for i in range(300)])
        assert await conn.fetchval(f"select count(*) from {table}") == 300
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.executemany(f"insert into {table} (id, name) values ($1, $2)", [(1000, "x"), (1, "dup")])
        # executemany is atomic: the failed batch left nothing behind.
        assert await conn.fetchval(f"select count(*) from {table}") == 300
    finally:
        await conn.close()
    assert admin(f"select count(*) from {table} where id = 1000") == [(0,)]


async def test_asyncpg_transaction_rollback(proxy, table, admin):
    conn = await _aconnect(proxy, "write")
    try:
        with pytest.raises(RuntimeError, match="boom"):
            async with conn.transaction():
                await conn.execute(f"insert into {table} (id, name) values (1, 'gone')")
                assert await conn.fetchval(f"select count(*) from {table}") == 1
                raise RuntimeError("boom")
        assert not conn.is_in_transaction()
        assert await conn.fetchval(f"select count(*) from {table}") == 0

        async with conn.transaction():
            await conn.execute(f"insert into {table} (id, name) values (2, 'kept')")
            try:
                async with conn.transaction():            # savepoint
                    await conn.execute(f"insert into {table} (id, name) values (2, 'dup')")
            except asyncpg.UniqueViolationError as e:
                assert e.sqlstate == "23505"
        assert admin(f"select id, name from {table}") == [(2, "kept")]
    finally:
        await conn.close()


async def test_asyncpg_timeout_cancels_query_and_connection_stays_usable(proxy, admin):
    marker = f"acancel_{uuid.uuid4().hex}"
    conn = await _aconnect(proxy)
    try:
        started = time.monotonic()
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await asyncio.wait_for(conn.fetch(f"select pg_sleep(10) /* {marker} */"), 0.5)
        # asyncpg sends a CancelRequest and waits for the server to finish the statement.
        assert await conn.fetchval("select 'usable'") == "usable"
        assert time.monotonic() - started < 8, "the query ran to completion: the cancel did not reach upstream"
        active = admin("select pid from pg_stat_activity where state = 'active' and query like %s "
                       "and pid <> pg_backend_pid()", (f"%{marker}%",))
        assert active == []
        # Built-in per-call timeout does the same.
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetch("select pg_sleep(10)", timeout=0.5)
        assert await conn.fetchval("select 1") == 1
        assert time.monotonic() - started < 15
    finally:
        await conn.close()


async def test_asyncpg_server_error_keeps_connection_usable(proxy):
    conn = await _aconnect(proxy)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError) as e:
            await conn.fetchval("select 1 / $1::int", 0)
        assert e.value.sqlstate == "22012"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):      # pgwarden's denial: ddl class
            await conn.execute("create temp table x (a int)")
        assert await conn.fetchval("select 1 / $1::int", 1) == 1
    finally:
        await conn.close()


async def test_asyncpg_listen_notify(proxy):
    channel = f"achan_{uuid.uuid4().hex[:10]}"
    listener = await _aconnect(proxy, "read")
    sender = await _aconnect(proxy, "write")
    got: asyncio.Queue = asyncio.Queue()
    try:
        await listener.add_listener(channel, lambda c, pid, ch, payload: got.put_nowait((ch, payload)))
        await sender.execute(f"NOTIFY {channel}, 'from asyncpg'")
        assert await asyncio.wait_for(got.get(), 10) == (channel, "from asyncpg")
    finally:
        await listener.close()
        await sender.close()

"""Connection-level promises of the proxy, checked with real clients against the real PostgreSQL.

- TLS is required off loopback (the default ``require_tls = "off-loopback"``): a plaintext client
  from a non-loopback address is refused with 28000 naming TLS, the same client with TLS gets in,
  loopback plaintext still works, and ``require_tls = "never"`` lets it in.
- Direct TLS as PostgreSQL 17+ libpq sends it (``sslnegotiation=direct``, ALPN "postgresql").
- Tokens of several KB (4 KB, 8 KB, 12 KB) are accepted from psycopg and from psql.
- application_name is kept and tagged: pg_stat_activity shows the client's name and the grant's
  user and id; a long name is cut so the tag survives.
- The upstream can be a unix socket (trust and SCRAM over the socket).
- Malformed or oversized messages and a startup that never completes close that connection with a
  reason in the proxy's log, and the proxy keeps serving.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
import uuid

import psycopg
import pytest

from proxy.embedded import DEFAULT_HBA
from tests.integration.conftest import USER, _make_proxy, wait_for
from tests.integration.rawpg import connect, login, read_to_eof, startup_packet

pytestmark = pytest.mark.integration

PSQL = shutil.which("psql")


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the source address of a route out)."""
    for target in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))
                addr = s.getsockname()[0]
        except OSError:
            continue
        if addr and not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    return None


@pytest.fixture
def proxies(pg, scope_roles, proxy_assets):
    """proxies(edit=callable(text)->text, tls=True) -> a started proxy; stopped at test end."""
    started = []

    def make(edit=None, **kw):
        p = _make_proxy(pg, scope_roles, proxy_assets, name=f"conn-{uuid.uuid4().hex[:8]}", **kw)
        if edit is not None:
            p.config_path.write_text(edit(p.config_path.read_text()))
        started.append(p.start())
        return p
    yield make
    for p in started:
        p.stop()


def _listen_everywhere(text: str) -> str:
    assert 'listen_host = "127.0.0.1"' in text
    return text.replace('listen_host = "127.0.0.1"', 'listen_host = "0.0.0.0"')


def _dsn(p, host: str, sslmode: str, scope: str = "read", **params) -> str:
    dsn = p.dsn(scope, sslmode=sslmode, **params)
    return dsn.replace(f"@{p.host}:{p.port}/", f"@{host}:{p.port}/")


# =========================================================================== TLS off loopback


def test_tls_required_off_loopback_by_default(proxies):
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    p = proxies(edit=_listen_everywhere)
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(_dsn(p, addr, "disable"), connect_timeout=10).close()
    msg = str(ei.value)
    assert "requires TLS" in msg and addr in msg and "sslmode=require" in msg, msg
    refusals = [e for e in p.log_events("session_start")]
    assert not refusals, "a plaintext session from off loopback started"
    # the same client with TLS (SSLRequest), and with direct TLS, gets in
    with psycopg.connect(_dsn(p, addr, "require"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use
    # loopback plaintext still works on the same proxy
    with psycopg.connect(_dsn(p, "127.0.0.1", "disable"), connect_timeout=10) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)
    # on the wire: one FATAL 28000, then the close
    with socket.create_connection((addr, p.port), timeout=10) as s:
        body = struct.pack("!i", 196608) + b"user\0alice\0database\0appdb\0\0"
        s.sendall(struct.pack("!i", len(body) + 4) + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data[:1] == b"E" and b"C28000\0" in data and b"SFATAL\0" in data, data
    assert p.alive()


def test_require_tls_never_admits_plaintext_off_loopback(proxies):
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")

    def edit(text: str) -> str:
        return _listen_everywhere(text).replace("[tokens]", 'require_tls = "never"\n\n[tokens]', 1)
    p = proxies(edit=edit)
    with psycopg.connect(_dsn(p, addr, "disable"), connect_timeout=10) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


# =========================================================================== direct TLS from libpq


def test_direct_tls_from_libpq(proxy):
    if psycopg.pq.version() < 170000:
        pytest.skip(f"libpq {psycopg.pq.version()} has no sslnegotiation=direct")
    with psycopg.connect(proxy.dsn("read", sslmode="require", sslnegotiation="direct"), connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("pgw_read",)
        with conn.cursor() as cur:
            with cur.copy("COPY (select generate_series(1, 3)) TO STDOUT") as copy:
                assert b"".join(bytes(b) for b in copy) == b"1\n2\n3\n"


def test_direct_tls_refused_when_proxy_has_no_tls(proxies):
    if psycopg.pq.version() < 170000:
        pytest.skip(f"libpq {psycopg.pq.version()} has no sslnegotiation=direct")
    p = proxies(tls=False)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn("read", sslmode="require", sslnegotiation="direct"), connect_timeout=10).close()
    assert p.alive()
    assert any("direct TLS" in e.get("reason", "") for e in p.log_events("tls_refused")), p.log()[-2000:]


# =========================================================================== tokens of several KB


@pytest.mark.parametrize("size", [4096, 8192, 12288])
def test_tokens_of_several_kb(proxy, size):
    # A whole-second iat/nbf/exp: a float's repr varies in length (1796342400.5 against
    # 1796342400.1234567), which moved the last token by up to 16 characters.
    now = float(int(time.time()))
    pad = 10
    token = proxy.token("read", reason="r" * pad, now=now)
    for _ in range(4):                               # base64url: 4 characters per 3 bytes of claims
        pad += (size - len(token)) * 3 // 4
        token = proxy.token("read", reason="r" * pad, now=now)
    assert abs(len(token) - size) <= 8, len(token)
    with psycopg.connect(proxy.dsn("read", token=token, sslmode="require"), connect_timeout=10) as conn:
        assert conn.execute("select current_user").fetchone() == ("pgw_read",)
    with psycopg.connect(proxy.dsn("read", token=token, sslmode="disable"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
@pytest.mark.parametrize("sslmode", ["require", "disable"])
def test_psql_with_a_4kb_token(proxy, sslmode):
    token = proxy.token("read", reason="r" * 3000)
    assert len(token) >= 4096, len(token)
    env = proxy.env("read", token=token)
    env["PGSSLMODE"] = sslmode
    proc = subprocess.run([PSQL, "-X", "-A", "-t", "-c", "select current_user"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "pgw_read", proc


# =========================================================================== application_name


def _activity(admin, jti: str) -> list[tuple]:
    return admin("select usename, application_name, client_addr is null from pg_stat_activity "
                 "where application_name like %s", (f"%{jti[:12]}%",))


def test_application_name_tagged_in_pg_stat_activity(proxy, admin):
    jti = uuid.uuid4().hex
    dsn = proxy.dsn("read", token=proxy.token("read", jti=jti), application_name="billing-report")
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = wait_for(lambda: _activity(admin, jti))
        assert len(rows) == 1, rows
        user, app, _ = rows[0]
        assert user == "pgw_read"
        assert app.startswith("billing-report (pgwarden:alice:") and app.endswith(")"), app
        assert jti[:12] in app, app
        # the client itself still sees the name it chose
        assert conn.info.parameter_status("application_name") == "billing-report"
    # without a name of its own: the tag alone
    jti = uuid.uuid4().hex
    with psycopg.connect(proxy.dsn("write", token=proxy.token("write", jti=jti)), connect_timeout=10):
        rows = wait_for(lambda: _activity(admin, jti))
        assert rows and rows[0][0] == "pgw_write" and rows[0][1].startswith("pgwarden:alice:"), rows


def test_long_application_name_keeps_the_tag(proxy, admin):
    jti = uuid.uuid4().hex
    dsn = proxy.dsn("read", token=proxy.token("read", jti=jti), application_name="x" * 60)
    with psycopg.connect(dsn, connect_timeout=10):
        rows = wait_for(lambda: _activity(admin, jti))
        assert rows, "the tag did not survive a long application_name"
        app = rows[0][1]
        assert len(app.encode()) <= 63 and "(pgwarden:alice:" in app and app.startswith("xxx"), app


def test_set_application_name_in_session_is_the_clients_business(proxy, admin):
    """The tag is set at login; a later SET is an allowed harmless setting (the grant stays visible
    in the proxy's own session log and in the upstream role)."""
    with psycopg.connect(proxy.dsn("read"), connect_timeout=10, autocommit=True) as conn:
        conn.execute("set application_name = 'renamed'")
        assert conn.execute("show application_name").fetchone() == ("renamed",)
        assert conn.execute("select current_user").fetchone() == ("pgw_read",)


# =========================================================================== upstream over a unix socket


def test_upstream_unix_socket(pg, proxies, admin):
    if not hasattr(pg, "socket_dir"):
        pytest.skip("needs EmbeddedPostgres (a local unix socket)")
    sock_dir = str(pg.socket_dir)
    p = proxies(upstream={"host": sock_dir, "port": pg.port})
    assert f'host = "{sock_dir}"' in p.config_path.read_text()
    # trust over the socket (the default hba), then SCRAM over the socket
    for hba in (None, [f"local all {pg.superuser} trust", "local all all scram-sha-256",
                       "host all all 127.0.0.1/32 scram-sha-256", "host all all ::1/128 scram-sha-256"]):
        if hba is not None:
            pg.set_hba(hba)
        try:
            jti = uuid.uuid4().hex
            with psycopg.connect(p.dsn("write", token=p.token("write", jti=jti)), connect_timeout=10) as conn:
                assert conn.execute("select current_user").fetchone() == ("pgw_write",)
                rows = wait_for(lambda: _activity(admin, jti))
                assert rows and rows[0][2] is True, rows        # client_addr NULL: a unix-socket backend
        finally:
            if hba is not None:
                pg.set_hba(DEFAULT_HBA)
    starts = p.log_events("session_start")
    assert starts and all(e.get("upstream_tls") is None for e in starts), starts


def test_upstream_unix_socket_missing(proxies, tmp_path):
    p = proxies(upstream={"host": str(tmp_path), "port": 5432}, server={"connect_timeout": 5})
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(p.dsn("read"), connect_timeout=10).close()
    assert time.monotonic() - t0 < 6
    msg = str(ei.value)
    assert "could not connect to upstream" in msg and f"{tmp_path}/.s.PGSQL.5432" in msg, msg
    assert p.alive()


# =========================================================================== malformed input: logged reason


@pytest.mark.parametrize("case, payload, needle", [
    ("length_below_4", b"Q" + struct.pack("!i", 3), "invalid message length 3"),
    ("length_over_1gib", b"Q" + struct.pack("!i", (1 << 30) + 1), "over the limit"),
    ("unknown_type", b"z" + struct.pack("!i", 4), "unknown message type"),
    ("nul_in_query", b"Q" + struct.pack("!i", 15) + b"SELECT 1\0 x\0", "NUL"),
])
def test_malformed_message_closes_one_connection_with_a_logged_reason(proxies, case, payload, needle):
    p = proxies()
    other = psycopg.connect(p.dsn("read"), connect_timeout=10, autocommit=True)
    try:
        with connect(p.port) as s:
            login(s, p.token("read"))
            s.sendall(payload)
            data, closed = read_to_eof(s)
        assert closed, data
        assert data[:1] == b"E" and (b"C08P01\0" in data or b"C54000\0" in data), data
        events = wait_for(lambda: [e for e in p.log_events("protocol_violation") if needle in e.get("reason", "")])
        assert events, f"no protocol_violation with {needle!r} in the log:\n{p.log()[-3000:]}"
        assert events[0]["level"] == "warning" and events[0].get("user") == USER, events[0]
        # the proxy and the other session are unaffected
        assert other.execute("select 1").fetchone() == (1,)
        assert p.alive()
    finally:
        other.close()


def test_bad_startup_length_logged(proxies):
    p = proxies()
    with connect(p.port) as s:
        s.sendall(struct.pack("!i", 3) + b"\0" * 8)
        assert read_to_eof(s)[1]
    events = wait_for(lambda: [e for e in p.log_events("protocol_violation")
                               if "invalid startup packet length 3" in e.get("reason", "")])
    assert events and events[0]["phase"] == "STARTUP", p.log()[-3000:]
    assert p.alive()


def test_bytes_after_sslrequest_logged(proxies):
    p = proxies()
    with connect(p.port) as s:
        s.sendall(struct.pack("!ii", 8, 80877103) + startup_packet({"user": USER}))
        data, closed = read_to_eof(s)
    assert closed, data
    assert not data.startswith(b"S"), data
    events = wait_for(lambda: [e for e in p.log_events("protocol_violation")
                               if "unencrypted data after SSL request" in e.get("reason", "")])
    assert events, p.log()[-3000:]
    assert p.alive()


def test_startup_that_never_completes_is_logged(proxies):
    p = proxies(server={"startup_timeout": 1})
    with connect(p.port) as s:
        s.sendall(struct.pack("!i", 64) + b"\0\3")            # says 64 bytes, sends 6
        t0 = time.monotonic()
        data, closed = read_to_eof(s)
    assert closed, data
    assert time.monotonic() - t0 < 5
    assert b"startup not completed within 1 s" in data, data
    events = wait_for(lambda: p.log_events("startup_timeout"))
    assert events and events[0]["phase"] == "STARTUP", p.log()[-3000:]
    assert p.alive()

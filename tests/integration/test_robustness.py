"""Abuse of the wire protocol, TLS negotiation and the upstream leg, with raw sockets.

Every test ends by checking (autouse fixture) that the shared proxy is still alive and
serves a normal psycopg session: no abuse may take it down.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import struct
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from proxy.embedded import DEFAULT_HBA
from tests.integration.conftest import DB, USER, wait_for
from tests.integration.rawpg import (
    connect,
    fields,
    login,
    msg,
    query,
    read_msg,
    read_to_eof,
    read_until_ready,
    recv_exact,
    simple_query,
    split_msgs,
    start_login,
    startup_packet,
)

CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
SSL_REQUEST = struct.pack("!ii", 8, SSL_REQUEST_CODE)
GSSENC_REQUEST = struct.pack("!ii", 8, GSSENC_REQUEST_CODE)

# --------------------------------------------------------------------------- raw helpers


def expect_fatal_close(sock, sqlstates: set[str] | None = None, *, allow_silent: bool = False,
                       timeout: float = 10) -> dict[str, str] | None:
    """The server closes the connection; if it said anything, it was one FATAL ErrorResponse."""
    data, closed = read_to_eof(sock, timeout)
    assert closed, f"connection still open after {timeout}s; received {data!r}"
    if not data:
        assert allow_silent, "connection closed without an ErrorResponse"
        return None
    msgs = split_msgs(data)
    assert [m[0] for m in msgs][-1:] == [b"E"], msgs
    f = fields(msgs[-1][1])
    assert f.get("S") == "FATAL", f
    if sqlstates is not None:
        assert f.get("C") in sqlstates, f
    return f


def psycopg_error(dsn: str, **kw) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(dsn, **kw).close()
    return str(ei.value), time.monotonic() - t0


def client_tls_context(alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


# --------------------------------------------------------------------------- the proxy stays up


@pytest.fixture(autouse=True)
def proxy_still_serves(proxy):
    yield
    assert proxy.alive(), f"pgwarden died:\n{proxy.log()[-4000:]}"
    with psycopg.connect(proxy.dsn("read"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# --------------------------------------------------------------------------- startup framing


@pytest.mark.parametrize("length", [0, 4, 7, -1, -(2**31), 10_001, 1 << 20, 2**31 - 1])
def test_bad_startup_packet_length_closes(proxy, length):
    with connect(proxy.port) as s:
        s.sendall(struct.pack("!i", length) + b"\0" * 8)
        f = expect_fatal_close(s, {"08P01"}, allow_silent=True)
        if f is not None:
            assert "length" in f["M"], f


def test_startup_packet_at_the_limit_is_framed(proxy):
    # exactly 10,000 bytes is allowed by PostgreSQL's framing; the content is then checked
    pad = "x" * (10_000 - len(startup_packet({"user": USER, "database": DB, "application_name": ""})))
    pkt = startup_packet({"user": USER, "database": DB, "application_name": pad})
    assert len(pkt) == 10_000
    with connect(proxy.port) as s:
        s.sendall(pkt)
        assert read_msg(s) == (b"R", struct.pack("!i", 3))


def test_unsupported_protocol_version(proxy):
    with connect(proxy.port) as s:
        s.sendall(startup_packet({"user": USER}, protocol=2 << 16))
        f = expect_fatal_close(s, {"0A000", "08P01"})
        assert "protocol" in f["M"], f


def test_startup_packet_without_user(proxy):
    with connect(proxy.port) as s:
        s.sendall(startup_packet({"database": DB}))
        f = expect_fatal_close(s, {"28000", "08P01"})
        assert "user" in f["M"], f


# --------------------------------------------------------------------------- typed framing after login


@pytest.mark.parametrize("length", [0, 3, -1, -(2**31)])
def test_typed_message_length_below_4(proxy, length):
    with connect(proxy.port) as s:
        login(s, proxy.token("read"))
        s.sendall(b"Q" + struct.pack("!i", length) + b"SELECT 1\0")
        f = expect_fatal_close(s, {"08P01"})
        assert "length" in f["M"], f


@pytest.mark.parametrize("length", [(1 << 30) + 1, 2**31 - 1])
def test_typed_message_length_over_1gib(proxy, length):
    with connect(proxy.port) as s:
        login(s, proxy.token("read"))
        s.sendall(b"Q" + struct.pack("!i", length) + b"SELECT 1")
        f = expect_fatal_close(s, {"08P01", "54000"})
        assert "limit" in f["M"] or "length" in f["M"], f


def test_message_over_configured_limit(start_proxy):
    p = start_proxy(server={"max_message_size": 4096})
    with connect(p.port) as s:
        login(s, p.token("read"))
        assert simple_query(s, "SELECT '" + "x" * 3000 + "'")[-1][0] == b"Z"
        s.sendall(b"Q" + struct.pack("!i", 5000))          # header only: refused before the body
        f = expect_fatal_close(s, {"08P01", "54000"})
        assert "4096" in f["M"], f
    assert p.alive()


def test_bad_password_message_length_before_login(proxy):
    with connect(proxy.port) as s:
        s.sendall(startup_packet())
        assert read_msg(s) == (b"R", struct.pack("!i", 3))
        s.sendall(b"p" + struct.pack("!i", 2))
        expect_fatal_close(s, {"08P01"})


def test_query_instead_of_password(proxy):
    with connect(proxy.port) as s:
        s.sendall(startup_packet())
        assert read_msg(s) == (b"R", struct.pack("!i", 3))
        s.sendall(query("SELECT 1"))
        f = expect_fatal_close(s, {"08P01"})
        assert "password" in f["M"], f


# --------------------------------------------------------------------------- startup timeout


def test_incomplete_startup_closed_after_startup_timeout(start_proxy):
    p = start_proxy(server={"startup_timeout": 1})
    with connect(p.port) as s:
        pkt = startup_packet()
        s.sendall(pkt[:6])                       # length says more is coming; it never does
        t0 = time.monotonic()
        f = expect_fatal_close(s, allow_silent=True, timeout=10)
        elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 5, elapsed
    if f is not None:
        assert "1 s" in f["M"] or "timeout" in f["M"].lower(), f


def test_silent_client_closed_after_startup_timeout(start_proxy):
    p = start_proxy(server={"startup_timeout": 1})
    with connect(p.port) as s:
        t0 = time.monotonic()
        expect_fatal_close(s, allow_silent=True, timeout=10)
        assert time.monotonic() - t0 < 5


def test_client_that_never_sends_the_password_is_closed(start_proxy):
    p = start_proxy(server={"startup_timeout": 1})
    with connect(p.port) as s:
        s.sendall(startup_packet())
        assert read_msg(s) == (b"R", struct.pack("!i", 3))
        t0 = time.monotonic()
        expect_fatal_close(s, allow_silent=True, timeout=10)
        assert time.monotonic() - t0 < 5


def test_startup_timeout_does_not_cut_an_established_session(start_proxy):
    p = start_proxy(server={"startup_timeout": 1})
    with connect(p.port) as s:
        login(s, p.token("read"))
        time.sleep(2)
        assert any(m[0] == b"D" for m in simple_query(s, "SELECT 1"))


# --------------------------------------------------------------------------- SSL / GSS negotiation


def test_bytes_after_sslrequest_in_same_packet(proxy):
    with connect(proxy.port) as s:
        s.sendall(SSL_REQUEST + startup_packet())
        data, closed = read_to_eof(s)
    assert closed
    assert not data.startswith(b"S"), "the proxy accepted TLS with unencrypted bytes pending"
    if data:
        msgs = split_msgs(data)
        assert len(msgs) == 1 and msgs[0][0] == b"E", msgs
        f = fields(msgs[0][1])
        assert f["C"] == "08P01" and f["S"] == "FATAL", f


def test_gssencrequest_answered_n_then_startup_works(proxy):
    with connect(proxy.port) as s:
        s.sendall(GSSENC_REQUEST)
        assert recv_exact(s, 1) == b"N"
        login(s, proxy.token("read"))
        msgs = simple_query(s, "SELECT 1")
        assert (b"D", struct.pack("!hi", 1, 1) + b"1") in msgs


def test_gssenc_then_ssl_then_startup(proxy):
    # libpq's order with gssencmode=prefer and sslmode=require
    with connect(proxy.port) as s:
        s.sendall(GSSENC_REQUEST)
        assert recv_exact(s, 1) == b"N"
        s.sendall(SSL_REQUEST)
        assert recv_exact(s, 1) == b"S"
        with client_tls_context(None).wrap_socket(s) as t:
            login(t, proxy.token("read"))
            assert simple_query(t, "SELECT 1")[-1][0] == b"Z"


def test_sslrequest_on_proxy_without_tls(start_proxy):
    p = start_proxy(tls=False)
    with connect(p.port) as s:
        s.sendall(SSL_REQUEST)
        assert recv_exact(s, 1) == b"N"
        login(s, p.token("read"))                # the client may go on in plaintext
        assert simple_query(s, "SELECT 1")[-1][0] == b"Z"
    # and libpq's sslmode=require gets a clear refusal
    msg_, _ = psycopg_error(p.dsn("read", sslmode="require"), connect_timeout=10)
    assert "SSL" in msg_ or "TLS" in msg_, msg_


def test_second_sslrequest_inside_tls(proxy):
    with connect(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert recv_exact(s, 1) == b"S"
        with client_tls_context(None).wrap_socket(s) as t:
            t.sendall(SSL_REQUEST)
            expect_fatal_close(t, {"08P01"}, allow_silent=True)


def test_direct_tls_with_alpn(proxy):
    raw = connect(proxy.port)
    with client_tls_context(["postgresql"]).wrap_socket(raw) as t:
        assert t.selected_alpn_protocol() == "postgresql"
        login(t, proxy.token("read"))
        msgs = simple_query(t, "SELECT 1")
        assert (b"D", struct.pack("!hi", 1, 1) + b"1") in msgs
        assert msgs[-1] == (b"Z", b"I")
        t.sendall(msg(b"X"))


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]])
def test_direct_tls_without_postgresql_alpn_refused(proxy, alpn):
    raw = connect(proxy.port)
    got_auth_request = False
    try:
        t = client_tls_context(alpn).wrap_socket(raw)
        try:
            t.settimeout(10)
            t.sendall(startup_packet())
            mtype, _ = read_msg(t)
            got_auth_request = mtype == b"R"
        finally:
            t.close()
    except (ssl.SSLError, OSError, EOFError):
        pass
    finally:
        raw.close()
    assert not got_auth_request, "direct TLS without ALPN 'postgresql' reached authentication"


def test_direct_tls_on_proxy_without_tls(start_proxy):
    p = start_proxy(tls=False)
    raw = connect(p.port)
    with pytest.raises((ssl.SSLError, OSError, EOFError)):
        try:
            t = client_tls_context(["postgresql"]).wrap_socket(raw)
            t.sendall(startup_packet())
            read_msg(t)
        finally:
            raw.close()
    assert p.alive()


def test_garbage_tls_record(proxy):
    with connect(proxy.port) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(64))
        data, closed = read_to_eof(s)
    assert closed


# --------------------------------------------------------------------------- query content


def test_nul_inside_query_text(proxy, admin):
    admin("DROP TABLE IF EXISTS nul_canary")
    with connect(proxy.port) as s:
        login(s, proxy.token("ddl"))
        s.sendall(query(b"SELECT 1\0 CREATE TABLE nul_canary()"))
        f = expect_fatal_close(s, {"08P01"})
        assert "NUL" in f["M"] or "terminat" in f["M"], f
    time.sleep(0.2)
    assert admin("SELECT to_regclass('public.nul_canary')") == [(None,)]


def test_nul_query_after_a_good_one_in_the_same_packet(proxy, admin):
    admin("DROP TABLE IF EXISTS nul_canary2")
    with connect(proxy.port) as s:
        login(s, proxy.token("ddl"))
        s.sendall(query("SELECT 1") + query(b"SELECT 2\0 CREATE TABLE nul_canary2()"))
        data, closed = read_to_eof(s)
    assert closed
    msgs = split_msgs(data)
    assert msgs and msgs[-1][0] == b"E" and fields(msgs[-1][1])["C"] == "08P01", msgs
    time.sleep(0.2)
    assert admin("SELECT to_regclass('public.nul_canary2')") == [(None,)]


def test_query_without_terminator(proxy):
    with connect(proxy.port) as s:
        login(s, proxy.token("read"))
        s.sendall(msg(b"Q", b"SELECT 1"))
        expect_fatal_close(s, {"08P01"})


def test_query_invalid_utf8(proxy):
    with connect(proxy.port) as s:
        login(s, proxy.token("read"))
        s.sendall(query(b"SELECT '\xff\xfe'"))
        data, closed = read_to_eof(s, timeout=5)
        msgs = split_msgs(data)
        errs = [fields(b) for t, b in msgs if t == b"E"]
        assert errs and errs[0]["C"] in {"22021", "08P01"}, msgs


def test_unknown_message_type_after_login(proxy):
    with connect(proxy.port) as s:
        login(s, proxy.token("read"))
        s.sendall(msg(b"z", b"hello"))
        f = expect_fatal_close(s, {"08P01"})
        assert "'z'" in f["M"] or "type" in f["M"], f


def test_backend_message_type_from_client(proxy):
    with connect(proxy.port) as s:
        login(s, proxy.token("read"))
        s.sendall(msg(b"Z", b"I"))
        expect_fatal_close(s, {"08P01"})


def test_function_call_refused(proxy):
    """The fast-path FunctionCall is admin class: refused with 42501, never forwarded.
    The session may end (FATAL) or go on (ERROR + ReadyForQuery), but not run the call."""
    with connect(proxy.port) as s:
        login(s, proxy.token("ddl"))
        body = struct.pack("!i", 2236) + struct.pack("!hhi", 0, 0, 0) + struct.pack("!h", 0)
        s.sendall(msg(b"F", body))
        try:
            first = read_msg(s)
        except (EOFError, ConnectionResetError):
            pytest.fail("closed without an error")
        assert first[0] == b"E", first
        f = fields(first[1])
        assert f["C"] == "42501" and "FunctionCall" in f["M"], f
        if f["S"] == "FATAL":
            assert read_to_eof(s)[1]
        else:
            assert read_msg(s) == (b"Z", b"I")
            assert (b"D", struct.pack("!hi", 1, 1) + b"1") in simple_query(s, "SELECT 1")


def test_terminate_closes_cleanly(proxy):
    with connect(proxy.port) as s:
        login(s, proxy.token("read"))
        s.sendall(msg(b"X"))
        data, closed = read_to_eof(s)
    assert closed and data == b""


# --------------------------------------------------------------------------- cancel


def test_cancel_request_unknown_key_silently_closed(proxy):
    with connect(proxy.port) as s:
        s.sendall(struct.pack("!iiiI", 16, CANCEL_REQUEST_CODE, 12345, 0xDEADBEEF))
        data, closed = read_to_eof(s)
    assert closed and data == b""


def test_cancel_request_malformed(proxy):
    with connect(proxy.port) as s:
        s.sendall(struct.pack("!iii", 12, CANCEL_REQUEST_CODE, 12345))
        expect_fatal_close(s, {"08P01"}, allow_silent=True)


def test_cancel_request_with_the_real_key_cancels(proxy):
    with connect(proxy.port) as s:
        msgs = login(s, proxy.token("read"))
        pid, key = struct.unpack("!iI", next(b for t, b in msgs if t == b"K"))
        s.sendall(query("SELECT pg_sleep(30)"))
        time.sleep(0.5)
        with connect(proxy.port) as c:
            c.sendall(struct.pack("!iiiI", 16, CANCEL_REQUEST_CODE, pid, key))
            data, closed = read_to_eof(c)
            assert closed and data == b""
        t0 = time.monotonic()
        out = read_until_ready(s)
        assert time.monotonic() - t0 < 10
        errs = [fields(b) for t, b in out if t == b"E"]
        assert errs and errs[0]["C"] == "57014", out


# --------------------------------------------------------------------------- upstream problems


def test_upstream_that_never_answers(start_proxy):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        p = start_proxy(upstream={"host": "127.0.0.1", "port": port}, server={"connect_timeout": 1})
        text, elapsed = psycopg_error(p.dsn("read", sslmode="require"), connect_timeout=20)
    assert "1 s" in text or "timeout" in text.lower() or "timed out" in text.lower(), text
    assert elapsed < 6, elapsed
    assert p.alive()


def test_upstream_with_nothing_listening(start_proxy):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = start_proxy(upstream={"host": "127.0.0.1", "port": port}, server={"connect_timeout": 5})
    text, elapsed = psycopg_error(p.dsn("read", sslmode="require"), connect_timeout=20)
    assert "could not connect" in text, text
    assert f"127.0.0.1:{port}" in text, text
    assert elapsed < 6
    # the SQLSTATE on the wire
    with connect(p.port) as s:
        start_login(s, p.token("read"))
        f = expect_fatal_close(s)
        assert f["C"] in {"08001", "08006"}, f
    assert p.alive()


def test_upstream_that_closes_immediately(start_proxy):
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def closer():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.close()

    th = threading.Thread(target=closer, daemon=True)
    th.start()
    try:
        p = start_proxy(upstream={"host": "127.0.0.1", "port": srv.getsockname()[1]},
                        server={"connect_timeout": 5})
        text, elapsed = psycopg_error(p.dsn("read", sslmode="require"), connect_timeout=20)
        assert "upstream" in text, text
        assert elapsed < 6
        assert p.alive()
    finally:
        stop.set()
        th.join(5)
        srv.close()


# --------------------------------------------------------------------------- upstream auth methods


def _hba(method: str) -> list[str]:
    return ["local all all trust", f"host all all 127.0.0.1/32 {method}", f"host all all ::1/128 {method}"]


def _proxied_user(proxy, scope="read") -> str:
    with psycopg.connect(proxy.dsn(scope), connect_timeout=10) as conn:
        return conn.execute("select current_user").fetchone()[0]


def test_upstream_auth_methods(pg, proxy, scope_roles):
    if not hasattr(pg, "set_hba"):
        pytest.skip("needs EmbeddedPostgres (set_hba)")
    role, password = scope_roles["read"]
    try:
        # md5 -- with the role's password stored as md5, so the server really asks for md5
        pg.execute(f"SET password_encryption = 'md5'; ALTER ROLE {role} PASSWORD '{password}'")
        assert pg.query(f"SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = '{role}'") == [(True,)]
        pg.set_hba(_hba("md5"))
        assert _proxied_user(proxy) == role
        # cleartext password
        pg.set_hba(_hba("password"))
        assert _proxied_user(proxy) == role
        # trust: no password asked
        pg.set_hba(_hba("trust"))
        assert _proxied_user(proxy) == role
        # scram (the default) with the password back in SCRAM form
        pg.execute(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD '{password}'")
        pg.set_hba(_hba("scram-sha-256"))
        assert _proxied_user(proxy) == role
    finally:
        pg.execute(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD '{password}'")
        pg.set_hba(DEFAULT_HBA)


def test_upstream_rejects_the_login(pg, proxy):
    if not hasattr(pg, "set_hba"):
        pytest.skip("needs EmbeddedPostgres (set_hba)")
    try:
        pg.set_hba(["local all all trust", "host all all 127.0.0.1/32 reject", "host all all ::1/128 reject"])
        text, _ = psycopg_error(proxy.dsn("read", sslmode="require"), connect_timeout=10)
        assert "upstream" in text and "pg_hba.conf" in text, text
        assert proxy.alive()
    finally:
        pg.set_hba(DEFAULT_HBA)


# --------------------------------------------------------------------------- upstream TLS


@pytest.fixture(scope="module")
def tls_pg(scope_roles):
    """A second PostgreSQL with ssl=on, its scope roles using the same passwords as the main one."""
    from proxy.embedded import EmbeddedPostgres, create_scope_roles
    from proxy.tlsutil import make_self_signed_cert

    d = Path(tempfile.mkdtemp(prefix="pgw-tls-pg-", dir="/tmp"))
    try:
        cert, key = make_self_signed_cert(d, ("localhost", "127.0.0.1"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam(os.environ.get("PGWARDEN_PG_USER", "postgres"))
            for path in (d, cert, key):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(d, 0o755)
        os.chmod(cert, 0o644)
        os.chmod(key, 0o600)
        server = EmbeddedPostgres(extra_conf={"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)})
        try:
            server.start()
        except RuntimeError as e:
            pytest.skip(f"cannot start a TLS PostgreSQL here: {e}")
        try:
            create_scope_roles(server, DB)
            for scope, (role, password) in scope_roles.items():
                server.execute(f"ALTER ROLE {role} PASSWORD '{password}'")
            yield server, cert
        finally:
            server.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _write_config_and_start(proxy_obj, replace: dict[str, str]):
    text = proxy_obj.config_path.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    proxy_obj.config_path.write_text(text)
    return proxy_obj.start()


def test_upstream_tls_require(tls_pg, start_proxy):
    server, _ = tls_pg
    p = start_proxy(upstream={"host": "127.0.0.1", "port": server.port, "sslmode": "require"})
    with psycopg.connect(p.dsn("read"), connect_timeout=10) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert conn.execute("select current_user").fetchone() == ("pgw_read",)
    assert row[0] is True and row[1].startswith("TLSv1."), row
    assert '"upstream_tls":"TLSv1.' in p.log(), p.log()[-2000:]


def test_upstream_sslmode_disable_stays_plaintext(tls_pg, start_proxy):
    """disable: no SSLRequest at all, even to a server that offers TLS."""
    server, _ = tls_pg
    p = start_proxy(upstream={"host": "127.0.0.1", "port": server.port, "sslmode": "disable"})
    with psycopg.connect(p.dsn("read", sslmode="require"), connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use                     # the client leg is TLS ...
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (False,)
    assert '"upstream_tls":null' in p.log(), p.log()[-2000:]


def test_upstream_tls_prefer_uses_tls(tls_pg, start_proxy):
    server, _ = tls_pg
    p = start_proxy(upstream={"host": "127.0.0.1", "port": server.port})
    with psycopg.connect(p.dsn("write"), connect_timeout=10) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_upstream_tls_verify_full(tls_pg, pg, scope_roles, proxy_assets, tmp_path):
    from tests.integration.conftest import _make_proxy
    from proxy.tlsutil import make_self_signed_cert

    server, cert = tls_pg
    good = _make_proxy(pg, scope_roles, proxy_assets, name=f"vf-{uuid.uuid4().hex[:8]}",
                       upstream={"host": "127.0.0.1", "port": server.port, "sslmode": "verify-full"})
    _write_config_and_start(good, {'sslmode = "verify-full"': f'sslmode = "verify-full"\nsslrootcert = "{cert}"'})
    try:
        with psycopg.connect(good.dsn("read"), connect_timeout=10) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    finally:
        good.stop()

    other_ca, _ = make_self_signed_cert(tmp_path / "other-ca")
    bad = _make_proxy(pg, scope_roles, proxy_assets, name=f"vf-{uuid.uuid4().hex[:8]}",
                      upstream={"host": "127.0.0.1", "port": server.port, "sslmode": "verify-full"})
    _write_config_and_start(bad, {'sslmode = "verify-full"': f'sslmode = "verify-full"\nsslrootcert = "{other_ca}"'})
    try:
        text, _ = psycopg_error(bad.dsn("read", sslmode="require"), connect_timeout=10)
        assert "certificate" in text.lower() or "verify" in text.lower(), text
        assert bad.alive()
    finally:
        bad.stop()


def test_upstream_require_against_server_without_tls(pg, start_proxy):
    p = start_proxy(upstream={"host": pg.host, "port": pg.port, "sslmode": "require"})
    text, _ = psycopg_error(p.dsn("read", sslmode="require"), connect_timeout=10)
    assert "does not support TLS" in text and "sslmode=require" in text, text
    assert p.alive()


# --------------------------------------------------------------------------- more startup shapes


def test_startup_password_and_query_pipelined(proxy):
    """Bytes that arrive while the upstream logs in are held, never dropped."""
    with connect(proxy.port) as s:
        s.sendall(startup_packet() + msg(b"p", proxy.token("read").encode() + b"\0") + query("SELECT 42"))
        assert read_msg(s) == (b"R", struct.pack("!i", 3))
        first = read_until_ready(s)
        assert first[0] == (b"R", struct.pack("!i", 0))
        second = read_until_ready(s)
        assert (b"D", struct.pack("!hi", 1, 2) + b"42") in second, second


def test_startup_split_into_single_bytes(proxy):
    with connect(proxy.port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in startup_packet():
            s.sendall(bytes([b]))
        login(s, proxy.token("read"), send_startup=False)
        assert simple_query(s, "SELECT 1")[-1][0] == b"Z"


def test_protocol_extension_negotiated(proxy):
    params = {"user": USER, "database": DB, "_pq_.pgwarden_test": "1"}
    with connect(proxy.port) as s:
        s.sendall(startup_packet(params, protocol=(3 << 16) | 2))
        mtype, vbody = read_msg(s)
        assert mtype == b"v", (mtype, vbody)
        newest_minor, n = struct.unpack_from("!ii", vbody)
        # The field is the whole version, 3.0, as PostgreSQL sends it.
        assert newest_minor == 196608 and n == 1 and b"_pq_.pgwarden_test\0" in vbody
        login(s, proxy.token("read"), send_startup=False)
        assert simple_query(s, "SELECT 1")[-1][0] == b"Z"


def test_plaintext_after_ssl_accept(proxy):
    # 'S' was answered, but the client goes on without TLS: a failed handshake, closed.
    with connect(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert recv_exact(s, 1) == b"S"
        s.sendall(startup_packet())
        data, closed = read_to_eof(s)
    assert closed and b"R\x00\x00\x00\x08" not in data


def test_require_tls_always(start_proxy):
    p = start_proxy(server={"require_tls": "always"})
    with connect(p.port) as s:
        s.sendall(startup_packet())
        f = expect_fatal_close(s, {"28000"})
        assert "TLS" in f["M"] and "sslmode=require" in f["M"], f
    text, _ = psycopg_error(p.dsn("read", sslmode="disable"), connect_timeout=10)
    assert "TLS" in text, text
    with psycopg.connect(p.dsn("read", sslmode="require"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    # a CancelRequest is still taken without TLS (and a wrong key dropped silently)
    with connect(p.port) as s:
        s.sendall(struct.pack("!iiiI", 16, CANCEL_REQUEST_CODE, 1, 2))
        assert read_to_eof(s) == (b"", True)


def test_many_half_open_connections(start_proxy):
    p = start_proxy(server={"startup_timeout": 2})
    socks = [connect(p.port) for _ in range(50)]
    try:
        for i, s in enumerate(socks):
            s.sendall(startup_packet()[: 1 + i % 10])
        with psycopg.connect(p.dsn("read"), connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        for s in socks:
            data, closed = read_to_eof(s, timeout=10)
            assert closed
    finally:
        for s in socks:
            s.close()
    assert p.alive()


def test_non_utf8_client_encoding(proxy):
    """client_encoding is an allowed startup setting, so either the proxy refuses it at startup
    (naming it), or a LATIN1 client can send non-ASCII text as it can to PostgreSQL."""
    try:
        conn = psycopg.connect(proxy.dsn("read", client_encoding="LATIN1"), connect_timeout=10)
    except psycopg.OperationalError as e:
        assert "client_encoding" in str(e), str(e)
        return
    with conn:
        assert conn.info.encoding in ("iso8859-1", "latin1", "latin-1"), conn.info.encoding
        assert conn.execute("select 'caf\u00e9'").fetchone() == ("caf\u00e9",)


@pytest.mark.parametrize("stmt", ["SET client_encoding TO 'LATIN1'", "SET NAMES 'LATIN1'"])
def test_set_client_encoding_in_session(proxy, stmt):
    """Switching to a non-UTF-8 client_encoding in the session must not leave a session that
    dies on the next non-ASCII statement: either the SET is refused, or the text works."""
    with psycopg.connect(proxy.dsn("write"), connect_timeout=10, autocommit=True) as conn:
        try:
            conn.execute(stmt)
        except psycopg.Error as e:
            assert not isinstance(e, psycopg.OperationalError), e
            assert e.sqlstate == "42501", e
            assert conn.execute("select 'caf\u00e9'").fetchone() == ("caf\u00e9",)
            return
        assert conn.execute("select 'caf\u00e9'").fetchone() == ("caf\u00e9",)


def test_client_only_encoding_cannot_smuggle_statements(proxy):
    """In SJIS, the UTF-8 bytes of U+0101 (C4 81) end in a lead byte that swallows the following
    backslash: pgwarden would read one string literal, the server a literal then a SET."""
    with connect(proxy.port) as s:
        login(s, proxy.token("read"))
        out = simple_query(s, "SET client_encoding TO 'SJIS'")
        if any(t == b"E" for t, _ in out):
            return                                  # refused: nothing to smuggle with
        s.sendall(query("SELECT E'\u0101\\'; SET default_transaction_read_only = off; --'".encode("utf-8")))
        read_until_ready(s)
        out = simple_query(s, "SHOW default_transaction_read_only")
        assert (b"D", struct.pack("!hi", 1, 2) + b"on") in out, out


# --------------------------------------------------------------------------- sessions ending badly


def _upstream_backends(admin, tag: str) -> int:
    return admin("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", (f"%{tag}%",))[0][0]


def test_client_reset_mid_query_frees_the_upstream(proxy, admin):
    """The client vanishes (RST) while a statement runs: the statement does not outlive the
    session (pgwarden cancels it and closes the upstream connection)."""
    jti = uuid.uuid4().hex
    token = proxy.token("read", jti=jti)
    s = connect(proxy.port)
    login(s, token)
    s.sendall(query("SELECT pg_sleep(60)"))
    assert wait_for(lambda: _upstream_backends(admin, jti[:12]) == 1)
    time.sleep(0.3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # RST on close
    s.close()
    assert wait_for(lambda: _upstream_backends(admin, jti[:12]) == 0, timeout=10), \
        "upstream statement left running after the client vanished"


def test_idle_client_reset_frees_the_upstream(proxy, admin):
    jti = uuid.uuid4().hex
    s = connect(proxy.port)
    login(s, proxy.token("read", jti=jti))
    assert wait_for(lambda: _upstream_backends(admin, jti[:12]) == 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert wait_for(lambda: _upstream_backends(admin, jti[:12]) == 0, timeout=10)


def test_client_gone_while_upstream_logs_in(start_proxy):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        p = start_proxy(upstream={"host": "127.0.0.1", "port": silent.getsockname()[1]},
                        server={"connect_timeout": 3})
        s = connect(p.port)
        s.sendall(startup_packet() + msg(b"p", p.token("read").encode() + b"\0"))
        assert read_msg(s) == (b"R", struct.pack("!i", 3))
        s.close()
        time.sleep(0.5)
        assert p.alive()
        log = p.log()
    assert "internal_error" not in log and "Traceback" not in log, log[-3000:]


def test_upstream_backend_terminated(proxy, admin):
    jti = uuid.uuid4().hex
    conn = psycopg.connect(proxy.dsn("read", token=proxy.token("read", jti=jti)), connect_timeout=10)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
              (f"%{jti[:12]}%",))
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()


# --------------------------------------------------------------------------- misbehaving upstreams


class FakeUpstream:
    """A TCP server whose connections are handled by `handler(sock)` in a thread."""

    def __init__(self, handler):
        import threading

        self.handler = handler
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            try:
                c.settimeout(5)
                self.handler(c)
            except Exception:
                pass
            finally:
                c.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.srv.close()


def _read_upstream_startup(c) -> dict:
    """Answer SSLRequest with 'N' and return the startup parameters."""
    while True:
        (length,) = struct.unpack("!i", recv_exact(c, 4))
        body = recv_exact(c, length - 4)
        (code,) = struct.unpack_from("!i", body)
        if code == SSL_REQUEST_CODE:
            c.sendall(b"N")
            continue
        parts = body[4:].split(b"\0")
        return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 2, 2)}


def _error_body(code: str, text: str) -> bytes:
    return b"SFATAL\0VFATAL\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0"


@pytest.mark.parametrize("name, reply, needles", [
    ("bad_ssl_answer", None, ["SSLRequest"]),
    ("invalid_length", b"R" + struct.pack("!i", 2), ["upstream"]),
    ("huge_length", b"R" + struct.pack("!i", 1 << 30), ["upstream"]),
    ("gss_auth", msg(b"R", struct.pack("!i", 7)), ["authentication method 7"]),
    ("error", msg(b"E", _error_body("53300", "sorry, too many clients already")), ["too many clients"]),
    ("unexpected_message", msg(b"D", b"\0\0"), ["unexpected", "upstream"]),
    ("truncated", b"R\0\0", ["upstream"]),
])
def test_misbehaving_upstream_during_login(start_proxy, name, reply, needles):
    def handler(c):
        if name == "bad_ssl_answer":
            recv_exact(c, 8)
            c.sendall(b"X")
            time.sleep(1)
            return
        _read_upstream_startup(c)
        c.sendall(reply)
        time.sleep(1)

    fake = FakeUpstream(handler)
    try:
        p = start_proxy(upstream={"host": "127.0.0.1", "port": fake.port}, server={"connect_timeout": 3})
        text, elapsed = psycopg_error(p.dsn("read", sslmode="require"), connect_timeout=20)
        for needle in needles:
            assert needle in text, text
        assert p.alive()
        assert "internal_error" not in p.log(), p.log()[-3000:]
    finally:
        fake.close()


def test_upstream_startup_parameters_are_filtered(start_proxy):
    """What the upstream receives: the scope's role, the read-only setting, allowed settings only."""
    seen: list[dict] = []

    def handler(c):
        seen.append(_read_upstream_startup(c))
        c.sendall(msg(b"E", _error_body("28000", "fake upstream")))

    fake = FakeUpstream(handler)
    try:
        p = start_proxy(upstream={"host": "127.0.0.1", "port": fake.port}, server={"connect_timeout": 3})
        psycopg_error(p.dsn("read", sslmode="require", options="-c statement_timeout=5s",
                            application_name="myapp"), connect_timeout=20)
    finally:
        fake.close()
    assert seen, "the fake upstream saw no startup"
    params = seen[0]
    assert params["user"] == "pgw_read" and params["database"] == DB
    assert params.get("default_transaction_read_only") == "on"
    assert params.get("statement_timeout") == "5s"
    assert "options" not in params
    assert params["application_name"].startswith("myapp (pgwarden:alice:")

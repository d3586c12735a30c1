"""Sessions end when their grant does: on time, mid-statement, mid-transaction, mid-COPY.

What users rely on: at the token's expiry the statement in flight is cancelled,
the upstream connection is dropped (an open transaction rolls back), the client
gets FATAL 57P01 saying why, a WARNING notice comes first, and SIGTERM drains
gracefully.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest

from policy.tokens import format_ts

TTL = 3.0


def _backend_alive(admin, grant: str) -> bool:
    rows = admin("select count(*) from pg_stat_activity where application_name like %s", (f"%{grant[:12]}%",))
    return rows[0][0] > 0


def _wait(pred, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


@pytest.fixture
def table(admin):
    name = f"exp_{uuid.uuid4().hex[:10]}"
    admin(f"create table {name} (id int)")
    yield name
    admin(f"drop table if exists {name}")


def _short(proxy, scope="write", ttl=TTL):
    jti = uuid.uuid4().hex
    now = time.time()
    token = proxy.token(scope, ttl=ttl, now=now, jti=jti)
    return proxy.dsn(scope, token=token), jti, now + ttl


def test_running_statement_is_cancelled_at_expiry(proxy, admin):
    dsn, jti, exp = _short(proxy)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError) as e:
            conn.execute("select pg_sleep(60)")
        ended = time.time()
    assert "57P01" == getattr(e.value, "sqlstate", None) or "expired" in str(e.value)
    assert f"grant {jti} expired at {format_ts(exp)}" in str(e.value)
    assert ended - exp < 2.0, f"cut {ended - exp:.2f}s after the deadline"
    # the upstream backend is gone within a second of the cut
    assert _wait(lambda: not _backend_alive(admin, jti), 1.5) is not None


def test_open_transaction_is_not_committed(proxy, admin, table):
    dsn, jti, exp = _short(proxy)
    conn = psycopg.connect(dsn)
    try:
        conn.execute(f"insert into {table} values (1)")          # transaction open, not committed
        time.sleep(max(0, exp - time.time()) + 0.5)
        with pytest.raises(psycopg.OperationalError) as e:
            conn.execute("commit")
        assert "expired" in str(e.value)
    finally:
        conn.close()
    assert admin(f"select count(*) from {table}") == [(0,)]


def test_idle_psql_session_gets_fatal(proxy):
    jti = uuid.uuid4().hex
    token = proxy.token("read", ttl=TTL, jti=jti)
    env = proxy.env("read", token=token)
    p = subprocess.Popen(["psql", "-X"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, text=True)
    try:
        p.stdin.write("select 'before';\n")
        p.stdin.flush()
        time.sleep(TTL + 1.0)
        out, err = p.communicate("select 'after';\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert "before" in out
    assert "after" not in out
    assert f"grant {jti} expired at" in err, err


def test_copy_in_progress_is_cut_and_not_committed(proxy, admin, table):
    dsn, jti, exp = _short(proxy)
    with psycopg.connect(dsn) as conn:
        with pytest.raises(psycopg.OperationalError):
            with conn.cursor() as cur:
                with cur.copy(f"copy {table} (id) from stdin") as copy:
                    i = 0
                    while time.time() < exp + 5:
                        copy.write_row((i,))
                        i += 1
                        if i % 100 == 0:
                            time.sleep(0.01)
    assert admin(f"select count(*) from {table}") == [(0,)]


def test_warning_notice_arrives_before_expiry(start_proxy):
    p = start_proxy(server={"expiry_warnings": [2]})
    notices = []
    token = p.token("read", ttl=4)
    with psycopg.connect(p.dsn("read", token=token), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        conn.execute("select pg_sleep(2.5)")          # the warning is due at 2 s, during the statement
        assert any(sev == "WARNING" and "expires at" in msg for sev, msg in notices), notices


def test_warning_notice_reaches_idle_psql(start_proxy):
    p = start_proxy(server={"expiry_warnings": [1]})
    token = p.token("read", ttl=2.5)
    proc = subprocess.Popen(["psql", "-X"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=p.env("read", token=token), text=True)
    try:
        proc.stdin.write("select 1;\n")
        proc.stdin.flush()
        time.sleep(1.8)                                # warning sent while psql is idle
        out, err = proc.communicate("select 2;\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "expires at" in err, err


def test_sigterm_drains_then_cuts(start_proxy):
    p = start_proxy(server={"drain_timeout": 2})
    idle = psycopg.connect(p.dsn("read"), autocommit=True)
    busy = psycopg.connect(p.dsn("read"), autocommit=True)
    result: dict = {}

    def run_busy():
        try:
            result["row"] = busy.execute("select pg_sleep(1), 'finished'").fetchone()
        except Exception as e:           # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=run_busy)
    t.start()
    time.sleep(0.3)
    p.proc.send_signal(signal.SIGTERM)
    t.join(10)
    # the running statement was allowed to finish within the drain period
    assert "error" not in result, result
    assert result["row"][1] == "finished"
    with pytest.raises(psycopg.OperationalError) as e:
        idle.execute("select 1")
    assert "shutting down" in str(e.value)
    assert p.proc.wait(10) == 0
    idle.close()
    busy.close()
    # every recording was sealed before the process ended: verify finds none unterminated
    out = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", "-c", str(p.config_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 ok, 0 failed, 0 unterminated" in out.stderr
    assert "shutdown" in out.stdout


def test_client_that_is_not_reading_does_not_delay_the_cut(proxy, admin):
    """A client that asked for a huge result and stopped reading (its socket buffers full, the
    proxy's write buffer full, the server blocked on send) is cut at the deadline all the same:
    the upstream backend is gone within a second of it."""
    import socket

    from proxy.wire import encode

    jti = uuid.uuid4().hex
    now = time.time()
    token = proxy.token("read", ttl=TTL, now=now, jti=jti)
    deadline = now + TTL
    s = socket.create_connection((proxy.host, proxy.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.sendall(encode.startup_message({"user": "alice", "database": "appdb"}))
        assert s.recv(9)[:1] == b"R"                              # cleartext password request
        s.sendall(encode.password_message(token.encode() + b"\0"))
        buf = b""
        while not buf.endswith(encode.ready_for_query(b"I")):
            buf += s.recv(65536)
        s.sendall(encode.query("select repeat('x', 1000) from generate_series(1, 5000000)"))
        time.sleep(1.0)                                           # buffers fill; nobody reads
        assert _backend_alive(admin, jti)
        assert time.time() < deadline
        gone = _wait(lambda: not _backend_alive(admin, jti), TTL + 10)
        assert gone is not None, "the backend outlived the deadline"
        assert time.time() - deadline < 1.0, f"cut {time.time() - deadline:.2f}s after the deadline"
        # the client's connection is reset: what was queued for the ended session is dropped
        s.settimeout(10)
        t0 = time.monotonic()
        with pytest.raises((ConnectionResetError, EOFError)):
            while True:
                if not s.recv(1 << 20):
                    raise EOFError
        assert time.monotonic() - t0 < 5
    finally:
        s.close()


def test_copy_out_in_progress_is_cut(proxy, admin):
    dsn, jti, deadline = _short(proxy, "read")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError):
            with conn.cursor().copy("COPY (SELECT g, repeat('x', 100) FROM generate_series(1, 100000000) g) "
                                    "TO STDOUT") as copy:
                for _ in copy:
                    time.sleep(0.001)
        assert time.time() - deadline < 1.5
    assert _wait(lambda: not _backend_alive(admin, jti), 1.0) is not None

"""The relay's I/O promises, against the real PostgreSQL.

- uvloop is used when importable, and the default asyncio loop keeps working: `pgwarden serve`
  with uvloop hidden serves sessions (COPY, cancel) as well.
- TCP_NODELAY on both legs, on both loops (an in-process ProxyServer).
- Backpressure, server to client: a client that stops reading a huge result does not make the
  proxy buffer it (its memory stays flat while the server could send gigabytes).
- Backpressure, client to server: a client streaming COPY data at a server that is not reading
  (the table is locked) is stopped by the proxy (its send blocks) and the proxy's memory stays
  flat; the proxy keeps serving other sessions meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import _make_proxy, inprocess_server
from tests.integration.rawpg import login, msg

pytestmark = pytest.mark.integration

MB = 1 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def loaded_uvloop(pid: int) -> bool:
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


# =========================================================================== uvloop, or not


def test_serve_uses_uvloop_when_importable(proxy):
    if proxy.proc is None:
        pytest.skip("no proxy process")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pytest.skip("uvloop is not installed here")
    assert loaded_uvloop(proxy.proc.pid), "pgwarden serve did not load uvloop"


def test_serve_works_on_the_default_loop(pg, scope_roles, proxy_assets, tmp_path, monkeypatch):
    blocker = tmp_path / "no-uvloop"
    blocker.mkdir()
    (blocker / "uvloop.py").write_text("raise ImportError('uvloop hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]))
    p = _make_proxy(pg, scope_roles, proxy_assets, name=f"noloop-{uuid.uuid4().hex[:8]}").start()
    try:
        assert not loaded_uvloop(p.proc.pid)
        with psycopg.connect(p.dsn("read", sslmode="require"), connect_timeout=10, autocommit=True) as conn:
            assert conn.execute("select current_user").fetchone() == ("pgw_read",)
            with conn.cursor() as cur:
                with cur.copy("COPY (select generate_series(1, 1000)) TO STDOUT") as copy:
                    assert len(b"".join(bytes(b) for b in copy).splitlines()) == 1000
            # cancel through the proxy's own key
            t = threading.Timer(0.5, conn.cancel)
            t.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
            t.join()
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        p.stop()


# =========================================================================== TCP_NODELAY, in process, both loops


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_tcp_nodelay_on_both_legs(proxy, loop_kind):
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    with inprocess_server(proxy.config_path, loop=loop) as server:
        dsn = proxy.dsn("read").replace(f":{proxy.port}/", f":{server.port}/")
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)

            async def options():
                out = []
                for s in server.sessions:
                    for tr in (s.transport, s.up_transport):
                        sock = tr.get_extra_info("socket")
                        out.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                return out
            got = asyncio.run_coroutine_threadsafe(options(), loop).result(10)
        assert got and len(got) == 2 and all(got), got


# =========================================================================== backpressure


def test_client_that_stops_reading_is_not_buffered(start_proxy):
    """~2 GB of result rows, a client that reads nothing: the proxy pauses the server."""
    p = start_proxy()
    pid = p.proc.pid
    with socket.create_connection((p.host, p.port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        login(s, p.token("read"))
        base = rss(pid)
        s.sendall(msg(b"Q", b"SELECT repeat('x', 1000000) FROM generate_series(1, 2000)\0"))
        time.sleep(4)
        grown = rss(pid) - base
        assert grown < 64 * MB, f"proxy memory grew by {grown / MB:.0f} MB for a client that does not read"
        # still alive and serving others meanwhile
        with psycopg.connect(p.dsn("read"), connect_timeout=10) as other:
            assert other.execute("select 1").fetchone() == (1,)
        # the paused session can still be read to the end of a first row
        s.settimeout(20)
        head = s.recv(5)
        assert head[:1] == b"T", head
    assert p.alive()


def test_client_streaming_at_a_server_that_does_not_read_is_stopped(start_proxy, admin, pg):
    p = start_proxy()
    pid = p.proc.pid
    table = f"bp_{uuid.uuid4().hex[:10]}"
    admin(f"create table public.{table} (v text)")
    lock = psycopg.connect(pg.dsn("appdb"), connect_timeout=10)                   # not autocommit
    try:
        lock.execute(f"LOCK TABLE public.{table} IN ACCESS EXCLUSIVE MODE")     # in a transaction: held
        with socket.create_connection((p.host, p.port), timeout=20) as s:
            login(s, p.token("write"))
            base = rss(pid)
            s.sendall(msg(b"Q", f"COPY public.{table} FROM STDIN\0".encode()))
            row = msg(b"d", b"y" * 65530 + b"\n")
            s.settimeout(3)
            sent = 0
            blocked = False
            while sent < 1024 * MB:
                try:
                    s.sendall(row)
                except (socket.timeout, TimeoutError):
                    blocked = True
                    break
                sent += len(row)
            assert blocked, f"sent {sent / MB:.0f} MB without the proxy pushing back"
            grown = rss(pid) - base
            assert grown < 64 * MB, f"proxy memory grew by {grown / MB:.0f} MB (sent {sent / MB:.0f} MB)"
            with psycopg.connect(p.dsn("read"), connect_timeout=10) as other:
                assert other.execute("select 1").fetchone() == (1,)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        lock.rollback()
        lock.close()
        admin(f"drop table if exists public.{table}")
    assert p.alive()

"""Several worker processes on one port (`--workers N` / server.workers, SO_REUSEPORT).

What users rely on: sessions spread over the workers work as with one; a
CancelRequest reaches the right session whichever worker accepts it; each
worker cuts its own sessions at expiry; SIGTERM stops them all.
"""

import os
import threading
import time
from pathlib import Path

import psycopg
import pytest

WORKERS = 3


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


@pytest.fixture
def multi(start_proxy):
    p = start_proxy(server={"workers": WORKERS})
    deadline = time.monotonic() + 10
    while len(_children(p.proc.pid)) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.05)
    return p


def test_workers_serve_sessions(multi):
    assert len(_children(multi.proc.pid)) == WORKERS
    conns = [psycopg.connect(multi.dsn("read"), autocommit=True) for _ in range(12)]
    try:
        for c in conns:
            assert c.execute("select current_user").fetchone() == ("pgw_read",)
    finally:
        for c in conns:
            c.close()


def test_cancel_reaches_the_right_worker(multi):
    """libpq sends each CancelRequest on a new connection; the kernel picks a worker at random."""
    for _ in range(6):
        with psycopg.connect(multi.dsn("read"), autocommit=True) as conn:
            timer = threading.Timer(0.5, conn.cancel)
            timer.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            timer.join()
            assert time.monotonic() - started < 10


def test_each_worker_cuts_its_sessions_at_expiry(multi):
    conns = [psycopg.connect(multi.dsn("read", token=multi.token("read", ttl=2)), autocommit=True)
             for _ in range(6)]
    time.sleep(3)
    for c in conns:
        with pytest.raises(psycopg.OperationalError, match="expired"):
            c.execute("select 1")
        c.close()


def test_sigterm_stops_every_worker(multi):
    kids = _children(multi.proc.pid)
    multi.proc.terminate()
    assert multi.proc.wait(20) == 0
    for k in kids:
        assert not Path(f"/proc/{k}").exists() or "zombie" in Path(f"/proc/{k}/status").read_text()

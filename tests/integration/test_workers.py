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


def test_revocation_reaches_every_worker(start_proxy):
    """Each worker watches the grant store itself: a revocation from another process cuts the
    grant's sessions on every worker."""
    from policy.grants import GrantRules, GrantState, apply
    from proxy.store import open_store
    from proxy.store.config import load_grants_config

    p = start_proxy(server={"workers": WORKERS}, extra_toml='[grants]\nstore = "grants.db"\n')
    deadline = time.monotonic() + 10
    while len(_children(p.proc.pid)) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.05)
    rules: GrantRules = load_grants_config(p.config_path).rules
    now = time.time()
    with open_store("grants.db", base=p.config_path.parent) as store:
        g = store.create(rules.request(requester="alice", subject="alice", database="appdb", scope="read",
                                       duration=600, reason="workers test", now=now))
        event = rules.initial_event(g)               # read scope: approved automatically
        assert event is not None
        g = store.update(apply(g, event, actor="alice", now=now), GrantState.REQUESTED)
        conns = [psycopg.connect(p.dsn("read", token=p.token("read", jti=g.id)), autocommit=True)
                 for _ in range(9)]
        pids = {c.execute("select pg_backend_pid()").fetchone()[0] for c in conns}
        assert len(pids) == 9
        store.update(rules.revoke(store.get(g.id), actor="carol", now=time.time(), reason="workers test over"),
                     g.state)
    t0 = time.monotonic()
    for c in conns:
        with pytest.raises(psycopg.OperationalError, match=f"grant {g.id} revoked by carol"):
            while True:
                c.execute("select 1")
                assert time.monotonic() - t0 < 3, "a worker kept a revoked grant's session"
                time.sleep(0.05)
        c.close()


def test_each_worker_serves_its_own_metrics_port(start_proxy):
    import urllib.request

    from .conftest import free_port

    import socket

    while True:                                   # two free ports in a row
        base = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
                break
            except OSError:
                continue
    p = start_proxy(server={"workers": 2, "metrics_listen": f"127.0.0.1:{base}"})
    deadline = time.monotonic() + 30
    bodies = {}
    while len(bodies) < 2:
        for port in (base, base + 1):
            try:
                bodies[port] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            except OSError:
                pass
        assert time.monotonic() < deadline, f"metrics endpoints answering: {sorted(bodies)}"
        time.sleep(0.1)
    assert all(b"pgwarden_sessions_active" in b for b in bodies.values())
    assert p.alive()

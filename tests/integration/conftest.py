"""Proxy fixtures: a real `pgwarden serve` process in front of the real PostgreSQL.

``proxy``         one pgwarden process for the whole run (TLS on, loopback, default settings)
``start_proxy``   factory for a pgwarden process with other settings (stopped at test end)
A ``Proxy`` mints tokens with the run's signing key: ``proxy.token("read", sub="alice")``,
and builds DSNs: ``proxy.dsn("write")`` (libpq URL, token as password).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from policy.tokens import mint
from proxy.demo import write_config
from proxy.keys import generate_keypair, load_private_key
from proxy.tlsutil import make_self_signed_cert

DB = "appdb"
USER = "alice"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05):
    """Call ``pred`` until it returns something true or ``timeout`` seconds pass; its last result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    return pred()


class Proxy:
    def __init__(self, workdir: Path, config_path: Path, port: int, keypair, *, audience: str = "pgwarden"):
        self.workdir = workdir
        self.config_path = config_path
        self.port = port
        self.host = "127.0.0.1"
        self.keypair = keypair
        self.private = load_private_key(keypair.private_path)
        self.audience = audience
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"pgwarden-{port}.log"

    def start(self) -> "Proxy":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.config_path), "--log-format", "json",
             "--log-level", "debug"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgwarden exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgwarden did not listen on {self.port}:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, event: str) -> list[dict]:
        """The JSON log records (``--log-format json``) whose "event" is ``event``, oldest first."""
        out = []
        for line in self.log().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == event:
                out.append(rec)
        return out

    def token(self, scope: str = "read", *, sub: str = USER, db: str = DB, ttl: float = 600, now: float | None = None,
              audience: str | None = None, **extra) -> str:
        return mint(self.private, kid=self.keypair.kid, sub=sub, db=db, scope=scope,
                    audience=audience or self.audience, now=time.time() if now is None else now, ttl=ttl,
                    reason=extra.pop("reason", "test"), **extra)

    def dsn(self, scope: str = "read", *, user: str = USER, db: str = DB, token: str | None = None,
            sslmode: str = "prefer", **params) -> str:
        token = token if token is not None else self.token(scope, sub=user, db=db)
        q = "&".join([f"sslmode={sslmode}"] + [f"{k}={quote(str(v))}" for k, v in params.items()])
        return f"postgresql://{quote(user)}:{quote(token)}@{self.host}:{self.port}/{quote(db)}?{q}"

    def env(self, scope: str = "read", *, user: str = USER, token: str | None = None) -> dict[str, str]:
        """Environment for libpq programs (psql, pgbench): PGHOST/PGPORT/PGUSER/PGDATABASE/PGPASSWORD."""
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=user, PGDATABASE=DB,
                   PGPASSWORD=token if token is not None else self.token(scope, sub=user), PGSSLMODE="prefer")
        return env


@contextlib.contextmanager
def inprocess_server(config_path: Path, *, loop=None, setup=None):
    """The real ``ProxyServer`` for the config at ``config_path`` (listen_port 0: any free port),
    on ``loop`` (default: a new asyncio loop) in a thread of this process; yields the server
    (``server.port``) and shuts it down afterwards. ``setup(server)`` runs on the loop before
    the server starts listening."""
    from proxy import config as config_mod
    from proxy.net.server import ProxyServer

    loop = asyncio.new_event_loop() if loop is None else loop
    cfg = dataclasses.replace(config_mod.load(config_path), listen_port=0)
    ready = threading.Event()
    box: dict = {}

    def run():
        asyncio.set_event_loop(loop)

        async def main():
            server = ProxyServer(cfg, loop)
            if setup is not None:
                setup(server)
            await server.start()
            box["server"] = server
            ready.set()
            await server.stopped.wait()

        loop.run_until_complete(main())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(20), "the in-process ProxyServer did not start"
    server = box["server"]
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(20)
        th.join(20)
        loop.close()


@pytest.fixture(scope="session")
def proxy_assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("pgwarden")
    kp = generate_keypair(d / "keys", "test")
    cert, key = make_self_signed_cert(d / "tls")
    return d, kp, cert, key


def _make_proxy(pg, scope_roles, proxy_assets, *, name: str, tls: bool = True, upstream: dict | None = None,
                server: dict | None = None, record: bool = True, extra_toml: str = "",
                audit: dict | None = None) -> Proxy:
    base, kp, cert, key = proxy_assets
    work = base / name
    work.mkdir(exist_ok=True)
    port = free_port()
    cfg = write_config(work, pg_host=(upstream or {}).get("host", pg.host), pg_port=(upstream or {}).get("port", pg.port),
                       scope_roles=scope_roles, listen_port=port, kid=kp.kid, private_path=kp.private_path,
                       public_path=kp.public_path, cert=cert if tls else None, key=key if tls else None,
                       extra_server=server, record=record, audit=audit)
    if extra_toml:
        cfg.write_text(cfg.read_text() + "\n" + extra_toml)
    if upstream and "sslmode" in upstream:
        text = cfg.read_text().replace('sslmode = "prefer"', f'sslmode = "{upstream["sslmode"]}"')
        cfg.write_text(text)
    return Proxy(work, cfg, port, kp)


@pytest.fixture(scope="session")
def proxy(pg, scope_roles, proxy_assets):
    p = _make_proxy(pg, scope_roles, proxy_assets, name="main").start()
    yield p
    p.stop()


@pytest.fixture
def start_proxy(pg, scope_roles, proxy_assets):
    """start_proxy(tls=False, upstream={"host":..., "port":..., "sslmode":...}, server={"connect_timeout": 1},
    record=False, extra_toml="[grants]..."): every proxy records its sessions in <workdir>/recordings unless
    record=False; extra_toml is appended to its pgwarden.toml."""
    started: list[Proxy] = []
    counter = iter(range(10_000))

    def factory(**kw) -> Proxy:
        p = _make_proxy(pg, scope_roles, proxy_assets, name=f"p{os.getpid()}-{time.monotonic_ns()}-{next(counter)}", **kw)
        started.append(p.start())
        return p

    yield factory
    for p in started:
        p.stop()


@pytest.fixture(scope="session")
def admin(pg):
    """Run SQL as superuser directly against appdb: admin("sql") -> rows (or None)."""
    import psycopg

    def run(sql: str, params=None):
        with psycopg.connect(pg.dsn(DB), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else None
    return run

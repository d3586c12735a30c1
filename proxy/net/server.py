"""Listener, session registry, cancel keys, signals and staged shutdown.

The server owns what sessions share: the configuration, the token public
keys, the TLS context and the map from pgwarden's own backend keys to live
sessions (for CancelRequest). uvloop is used when importable; the default
loop keeps working.
"""

from __future__ import annotations

import asyncio
import secrets
import signal

import structlog

from ..config import Config
from ..keys import load_public_keys
from .client_conn import ClientConn
from ..session.judge import Judge
from .gate import PolicyGate
from .tls import server_context

log = structlog.get_logger("pgwarden.server")


class ProxyServer:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.loop = loop or asyncio.get_running_loop()
        self.public_keys = load_public_keys(config.public_keys)
        self.tls_context = server_context(config.tls_cert, config.tls_key) if config.tls_enabled else None
        self.sessions: set[ClientConn] = set()
        self.cancel_keys: dict[tuple[int, int], ClientConn] = {}
        self.tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None
        self.stopped = asyncio.Event()
        self.cuts: dict[str, int] = {}
        self.cut_lags: list[float] = []
        self.peers = None                    # CancelPeers when running as one of several workers
        self.judge = Judge(config.policy_scopes, max_length=config.max_statement_length, catalog=config.catalog)
        self.gate = PolicyGate(self.loop, self.judge, max_length=config.max_statement_length,
                               enforce=config.upstream.enforce)
        self.recorders = None                # proxy.audit RecorderFactory when [audit] is configured
        if config.audit is not None:
            from concurrent.futures import ThreadPoolExecutor

            from ..audit.writer import RecorderFactory
            # fsync at session end runs here, not on the event loop
            self.recorders = RecorderFactory.from_config(
                config.audit, executor=ThreadPoolExecutor(2, thread_name_prefix="pgwarden-fsync"))
        self.timing = config.metrics_listen is not None   # observe the relay latency histogram
        self.grants = None                   # GrantWatch when the config has a [grants] store
        if config.grants is not None:
            from .grant_watch import GrantWatch
            self.grants = GrantWatch(self, config.grants)

    async def start(self) -> None:
        cfg = self.config
        self._server = await self.loop.create_server(
            lambda: ClientConn(self), cfg.listen_host, cfg.listen_port,
            reuse_port=True if (self.peers is not None or cfg.workers > 1) else None, backlog=1024)
        if self.peers is not None:
            await self.peers.start(self)
        if self.grants is not None:
            self.grants.start()
        if cfg.metrics_listen is not None:
            from .. import metrics
            try:
                self.metrics_port = metrics.start_metrics_server(cfg.metrics_listen)
            except OSError as e:         # metrics are not worth refusing service for: say so loudly
                log.error("metrics_listen_failed", listen=cfg.metrics_listen, error=e.strerror or str(e))
            else:
                log.info("metrics_listening", listen=cfg.metrics_listen, port=self.metrics_port)
        socks = self._server.sockets
        self.port = socks[0].getsockname()[1] if socks else cfg.listen_port
        log.info("listening", host=cfg.listen_host, port=self.port, tls=self.tls_context is not None)

    def new_cancel_key(self, session: ClientConn, pid: int) -> tuple[int, int]:
        """The client sees the upstream's pid (pg_backend_pid() and notifications carry it, and
        clients compare them) with a secret key of pgwarden's own."""
        while True:
            key = secrets.randbits(32)
            if (pid, key) not in self.cancel_keys:
                self.cancel_keys[(pid, key)] = session
                return pid, key

    def forget(self, session: ClientConn) -> None:
        self.sessions.discard(session)
        if session.pid:
            self.cancel_keys.pop((session.pid, session.key), None)

    def record_cut(self, reason: str, lag_ms: float | None) -> None:
        self.cuts[reason] = self.cuts.get(reason, 0) + 1
        if lag_ms is not None:
            self.cut_lags.append(lag_ms)
            if len(self.cut_lags) > 10000:
                del self.cut_lags[:5000]

    def sessions_of_grant(self, grant_id: str) -> list[ClientConn]:
        return [s for s in self.sessions if s.claims is not None and s.claims.jti == grant_id]

    def track(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def shutdown(self, drain: float = 0.0, force: asyncio.Event | None = None) -> None:
        """Staged shutdown (uvicorn's Server.shutdown): stop accepting; close sessions as soon as
        they are idle outside a transaction; cut the rest at the drain deadline (or on `force`)."""
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + drain
        while self.sessions and self.loop.time() < deadline and not (force and force.is_set()):
            for s in list(self.sessions):
                if s.idle:
                    s.shutdown("pgwarden is shutting down")
            await asyncio.sleep(0.05)
        for s in list(self.sessions):
            s.shutdown("pgwarden is shutting down" + (" (drain deadline reached)" if drain else ""))
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        if self.grants is not None:
            await self.grants.close()
        if self.recorders is not None and self.recorders.executor is not None:
            # every recording sealed by the cuts above reaches the disk before the process ends
            await self.loop.run_in_executor(None, self.recorders.executor.shutdown, True)
        self.stopped.set()


async def serve(config: Config, *, ready=None, peers=None) -> None:
    loop = asyncio.get_running_loop()
    server = ProxyServer(config, loop)
    server.peers = peers
    await server.start()
    if ready is not None:
        ready(server)
    stop = asyncio.Event()
    force = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            force.set()                  # a second signal: cut everything now
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()
    log.info("shutting_down", sessions=len(server.sessions), drain_timeout=config.drain_timeout)
    await server.shutdown(drain=config.drain_timeout, force=force)


def run(config: Config, workers: int | None = None) -> int:
    count = workers or config.workers
    if count > 1:
        from .workers import run_workers
        return run_workers(config, count, lambda i, peers: _run_loop(serve(_for_worker(config, i), peers=peers)))
    _run_loop(serve(config))
    return 0


def _for_worker(config: Config, index: int) -> Config:
    """Worker `index`'s config: its metrics endpoint on port + index (one registry per process,
    so each worker serves its own counts; scrape them all, or sum them in Prometheus)."""
    if config.metrics_listen is None:
        return config
    host, _, port = config.metrics_listen.rpartition(":")
    if int(port) == 0:
        return config
    from dataclasses import replace
    return replace(config, metrics_listen=f"{host}:{int(port) + index}")


def _run_loop(coro) -> None:
    try:
        import uvloop
    except ImportError:                      # the default loop must keep working
        uvloop = None
    if uvloop is not None:
        uvloop.run(coro)
    else:
        asyncio.run(coro)

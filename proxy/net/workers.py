"""Several worker processes on one port (SO_REUSEPORT), and cancel requests between them.

The kernel spreads new connections over the workers' listening sockets, so
a client's CancelRequest may reach a worker other than the one holding its
session. Each worker also listens on a unix socket in a private run
directory; a worker that does not know a cancel key passes the 8-byte
(pid, key) to its peers, and the one that owns the session acts on it. The
key itself never leaves the host and stays a full 32-bit secret.

The parent only supervises: it forwards SIGTERM/SIGINT to the workers,
waits for them, and restarts a worker that died unexpectedly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import struct
import sys
import tempfile
import time

import structlog

log = structlog.get_logger("pgwarden.workers")

_PAIR = struct.Struct("!iI")


class CancelPeers:
    """This worker's cancel relay: listen for peers' requests, broadcast unknown keys."""

    def __init__(self, rundir: str, index: int, count: int) -> None:
        self.rundir = rundir
        self.index = index
        self.paths = [os.path.join(rundir, f"worker-{i}.sock") for i in range(count)]

    async def start(self, server) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                pid, key = _PAIR.unpack(await reader.readexactly(_PAIR.size))
                target = server.cancel_keys.get((pid, key))
                if target is not None:
                    target.cancel_upstream()
            except (asyncio.IncompleteReadError, OSError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_unix_server(handle, path=self.paths[self.index])

    async def broadcast(self, pid: int, key: int) -> None:
        for i, path in enumerate(self.paths):
            if i == self.index:
                continue
            try:
                _, writer = await asyncio.open_unix_connection(path)
                writer.write(_PAIR.pack(pid, key))
                await writer.drain()
                writer.close()
            except OSError:
                continue


def run_workers(config, count: int, serve_one) -> int:
    """Fork `count` workers running serve_one(index, peers); supervise until a signal."""
    rundir = tempfile.mkdtemp(prefix="pgwarden-run-")
    os.chmod(rundir, 0o700)
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)      # the worker's loop installs its own
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                serve_one(index, CancelPeers(rundir, index, count))
            except BaseException:
                log.exception("worker_crashed", worker=index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(count):
        spawn(i)
    log.info("workers_started", workers=count, pids=sorted(children))
    status = 0
    while children:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(st)
        if not stopping:
            log.error("worker_died", worker=index, exit=code)
            time.sleep(1)
            spawn(index)
        elif code not in (0, -signal.SIGTERM, -signal.SIGINT):
            # Killed by the forwarded signal before its event loop took the signal over
            # (a worker still starting) is a clean stop too.
            status = 1
    shutil.rmtree(rundir, ignore_errors=True)
    return status

"""A bare relay: the floor for a Python proxy on this machine.

Accepts TCP connections and pipes bytes to and from the upstream server on
uvloop, parsing nothing: no framing, no policy, no recording, no token (the
client logs in to the server through it). The issue's baseline measured one
like it; the suite runs it beside pgwarden with ``--bare`` so that "what a
Python relay costs at all" and "what pgwarden adds" are told apart in one run.

With ``--record DIR`` it also keeps the least a per-statement recording can
do, and nothing else: per session one file in DIR, and for each
ReadyForQuery the server sends, before the bytes go on to the client, one
JSON line shaped like pgwarden's statement record that carries the SHA-256
of the previous line, written with one ``write(2)``. It parses nothing
either (it finds ReadyForQuery by its type and length bytes, and misses one
split across two reads: enough for pgbench's workloads, not a recording
anyone could use): the floor for any Python relay that records each
statement as DESIGN.md asks, with no policy and no statement tracking.

With ``--record DIR --mmap`` the same lines go into a shared mapping of the
file instead of through ``write(2)``: a store into a MAP_SHARED mapping is in
the page cache at once, so a crash of the relay loses no line it stored, as
with ``write(2)``. The file grows by ``posix_fallocate`` in 1 MiB steps
(blocks reserved up front, so a full disk is an error there and not a
SIGBUS at a store) and is cut to its length when the session ends. Between
those, and forever after a crash, the file ends in zero bytes: the price of
this way of writing, which pgwarden does not pay (it writes with
``write(2)``); the relay offers it to measure what the system call costs.

    python -m benchmarks.bare_relay --listen 6433 --upstream 127.0.0.1:5432 [--record DIR [--mmap]]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import mmap
import os
import socket
import time
import uuid
from pathlib import Path

_MAP_STEP = 1 << 20                 # --mmap: the file grows by this much at a time
_READY = b"Z\x00\x00\x00\x05"      # ReadyForQuery: type, length 5 (its status byte follows)
# A pgwarden statement record of pgbench -S -M prepared, field for field (about 380 bytes).
_LINE = (b'{"class":"read","decision":"allowed","duration_ms":%.3f,"params":["%d"],"prev":"%s","rows":1,'
         b'"rule":"read.select","seq":%d,"started":"%s","tag":"SELECT 1",'
         b'"text":"SELECT abalance FROM pgbench_accounts WHERE aid = $1;","ts":"%s","type":"statement",'
         b'"via":"execute"}\n')


class _Recording:
    """One file per session; one hash-chained line and one write(2) per ReadyForQuery.  Like
    pgwarden's, it reads the clock when the client's message comes and when the answer does, and
    formats the date and time of day once per second."""

    __slots__ = ("fd", "n", "prev", "started", "_second", "_prefix", "map", "off")

    def __init__(self, directory: Path, mapped: bool = False) -> None:
        flags = os.O_RDWR | os.O_CREAT if mapped else os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.fd = os.open(directory / f"{uuid.uuid4().hex}.jsonl", flags, 0o600)
        self.map: mmap.mmap | None = None       # with --mmap: the file's mapping, grown by _grow
        self.off = 0                            # bytes stored in the mapping
        if mapped:
            self._grow(_MAP_STEP)
        self.n = 0
        self.prev = b"0" * 64
        self.started = time.time()
        self._second, self._prefix = -1, b""

    def _iso(self, t: float) -> bytes:
        second = int(t)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return b"%s.%06dZ" % (self._prefix, int((t - second) * 1e6))

    def client_data(self) -> None:
        self.started = time.time()

    def server_data(self, data: bytes) -> None:
        for _ in range(data.count(_READY)):
            now = time.time()
            self.n += 1
            line = _LINE % ((now - self.started) * 1e3, self.n, self.prev, self.n, self._iso(self.started),
                            self._iso(now))
            self.prev = hashlib.sha256(line).hexdigest().encode()
            if self.map is None:
                os.write(self.fd, line)
            else:
                end = self.off + len(line)
                if end > len(self.map):
                    self._grow(len(self.map) + _MAP_STEP)
                self.map[self.off:end] = line
                self.off = end

    def _grow(self, size: int) -> None:
        os.posix_fallocate(self.fd, 0, size)     # the blocks first: no SIGBUS at a store for want of space
        if self.map is None:
            self.map = mmap.mmap(self.fd, size)
        else:
            self.map.resize(size)

    def close(self) -> None:
        if self.fd >= 0:
            if self.map is not None:
                self.map.close()
                os.ftruncate(self.fd, self.off)
            os.close(self.fd)
            self.fd = -1


class _Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.peer: _Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.recording: _Recording | None = None       # set on the server side with --record

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.recording is not None:
            self.recording.server_data(data)
        peer = self.peer
        if peer is not None and peer.recording is not None:     # the client's message (only the server side records)
            peer.recording.client_data()
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc) -> None:
        if self.recording is not None:
            self.recording.close()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Client(_Pipe):
    def __init__(self, upstream: tuple[str, int], record: Path | None = None, mapped: bool = False) -> None:
        super().__init__()
        self.upstream = upstream
        self.record = record
        self.mapped = mapped

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(_Pipe, *self.upstream)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():          # the client left while the server was dialled
            up.transport.close()
            return
        up.peer, self.peer = self, up
        if self.record is not None:
            up.recording = _Recording(self.record, self.mapped)
        if self.pending:
            up.transport.write(b"".join(self.pending))
            self.pending.clear()


async def serve(listen: int, upstream: tuple[str, int], record: Path | None = None, mapped: bool = False) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream, record, mapped), "127.0.0.1", listen,
                                      backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="host:port")
    ap.add_argument("--record", type=Path, metavar="DIR",
                    help="also write one hash-chained line per ReadyForQuery to a file per session in DIR")
    ap.add_argument("--mmap", action="store_true",
                    help="with --record: store the lines into a shared mapping of the file, not with write(2)")
    args = ap.parse_args(argv)
    if args.mmap and args.record is None:
        ap.error("--mmap goes with --record")
    host, _, port = args.upstream.rpartition(":")
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(args.listen, (host, int(port)), args.record, args.mmap))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A bare relay: the floor for a Python proxy on this machine.

Accepts TCP connections and pipes bytes to and from the upstream server on
uvloop, parsing nothing: no framing, no policy, no recording, no token (the
client logs in to the server through it). The issue's baseline measured one
like it; the suite runs it beside pgwarden with ``--bare`` so that "what a
Python relay costs at all" and "what pgwarden adds" are told apart in one run.

    python -m benchmarks.bare_relay --listen 6433 --upstream 127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import asyncio
import socket


class _Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.peer: _Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Client(_Pipe):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream

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
        if self.pending:
            up.transport.write(b"".join(self.pending))
            self.pending.clear()


async def serve(listen: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream), "127.0.0.1", listen, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="host:port")
    args = ap.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(args.listen, (host, int(port))))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TLS for both legs.

Client leg: TLS is terminated in memory (ssl.MemoryBIO + SSLObject) rather
than with loop.start_tls. Every byte the client sends passes through
ClientConn.data_received, so pgwarden sees exactly what arrived before the
handshake (bytes after an SSLRequest and before the ClientHello end the
connection: CVE-2021-23214 class) and can accept direct TLS (PostgreSQL 17
sslnegotiation=direct), whose first bytes are already the ClientHello.

Upstream leg: an ssl.SSLContext built from upstream.sslmode, used with
StreamWriter.start_tls after the SSLRequest answer.
"""

from __future__ import annotations

import ssl
from pathlib import Path

ALPN_POSTGRESQL = "postgresql"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols([ALPN_POSTGRESQL])
    return ctx


def upstream_context(sslmode: str, rootcert: Path | None) -> ssl.SSLContext | None:
    if sslmode == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if sslmode == "verify-full":
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if rootcert:
            ctx.load_verify_locations(str(rootcert))
        else:
            ctx.load_default_certs()
    else:                                   # prefer / require: encrypt, do not verify (libpq semantics)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MemoryTLS:
    """Server-side TLS over memory buffers: feed ciphertext in, get plaintext and ciphertext out."""

    __slots__ = ("_in", "_out", "obj", "handshake_done", "direct")

    def __init__(self, ctx: ssl.SSLContext, *, direct: bool) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.handshake_done = False
        self.direct = direct

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Returns (plaintext received, ciphertext to send). Raises ssl.SSLError on a bad peer."""
        self._in.write(data)
        plain = []
        if not self.handshake_done:
            try:
                self.obj.do_handshake()
                self.handshake_done = True
                alpn = self.obj.selected_alpn_protocol()
                if self.direct and alpn != ALPN_POSTGRESQL:
                    # PostgreSQL 17 refuses direct TLS without ALPN "postgresql": it is what
                    # proves the client meant to speak PostgreSQL, not some other protocol.
                    raise ssl.SSLError("direct TLS connection without ALPN protocol \"postgresql\"")
            except ssl.SSLWantReadError:
                return b"", self._out.read()
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            plain.append(chunk)
        return b"".join(plain), self._out.read()

    def send(self, data: bytes) -> bytes:
        """Encrypt plaintext; returns the ciphertext to write."""
        self.obj.write(data)
        return self._out.read()

    def close(self) -> bytes:
        """Start the TLS shutdown; returns the close_notify alert to send."""
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        return self._out.read()

    def version(self) -> str | None:
        return self.obj.version()

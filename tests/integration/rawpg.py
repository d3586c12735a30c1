"""The PostgreSQL wire protocol by hand, for tests that talk to pgwarden over a raw socket.

Built independently of pgwarden's own encoder (``proxy.wire``) on purpose: these helpers are
what a client puts on the wire, including what a well-behaved client never would.

Messages are ``(type, body)`` pairs: ``(b"Z", b"I")``.

Sending:  ``startup_packet``, ``msg``, ``query``, ``parse_msg``, ``bind_msg``, ``execute_msg``, ``SYNC``.
Reading:  ``recv_exact``, ``read_msg``, ``read_until_ready``, ``read_to_eof``, ``split_msgs``.
Decoding: ``fields`` (an ErrorResponse/NoticeResponse), ``error_of``, ``types``, ``data_values``,
          ``command_tag``, ``tx_status``.
Sessions: ``connect`` (a plain TCP socket), ``start_login``, ``login``, ``raw_session``.
"""

from __future__ import annotations

import socket
import struct
import time

from tests.integration.conftest import DB, USER

PROTOCOL_3_0 = 196608
AUTH_CLEARTEXT = (b"R", struct.pack("!i", 3))
AUTH_OK = (b"R", struct.pack("!i", 0))

# --------------------------------------------------------------------------- building messages


def cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def startup_packet(params: dict[str, str] | None = None, *, protocol: int = PROTOCOL_3_0) -> bytes:
    """A StartupMessage; ``params`` defaults to ``{"user": USER, "database": DB}``."""
    params = {"user": USER, "database": DB} if params is None else params
    body = struct.pack("!i", protocol)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def msg(mtype: bytes, body: bytes = b"") -> bytes:
    """A typed message: type byte, length, body."""
    return mtype + struct.pack("!i", len(body) + 4) + body


def query(sql: str | bytes) -> bytes:
    """A simple-protocol Query."""
    return msg(b"Q", cstr(sql))


def parse_msg(sql: str | bytes, name: str | bytes = "") -> bytes:
    """Parse of ``sql`` as statement ``name``, no parameter types."""
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0))


def bind_msg(statement: str = "", portal: str = "") -> bytes:
    # no parameter formats, no parameters, no result formats
    return msg(b"B", cstr(portal) + cstr(statement) + struct.pack("!hhh", 0, 0, 0))


def execute_msg(portal: str = "") -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!i", 0))


SYNC = msg(b"S")

# --------------------------------------------------------------------------- reading messages


def recv_exact(sock, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_msg(sock) -> tuple[bytes, bytes]:
    mtype, length = struct.unpack("!ci", recv_exact(sock, 5))
    return mtype, recv_exact(sock, length - 4)


def read_until_ready(sock) -> list[tuple[bytes, bytes]]:
    """Messages up to and including the next ReadyForQuery."""
    msgs = []
    while True:
        m = read_msg(sock)
        msgs.append(m)
        if m[0] == b"Z":
            return msgs


def read_to_eof(sock, timeout: float = 10) -> tuple[bytes, bool]:
    """Everything the server sends until it closes; (data, closed). closed False on timeout."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        except (socket.timeout, TimeoutError):
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


def split_msgs(data: bytes) -> list[tuple[bytes, bytes]]:
    """``data`` (as read by ``read_to_eof``) cut into messages; it must end on a message boundary."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        mtype, length = struct.unpack_from("!ci", data, pos)
        out.append((mtype, data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    assert pos == len(data), f"trailing partial message: {data[pos:]!r}"
    return out

# --------------------------------------------------------------------------- decoding messages


def fields(body: bytes) -> dict[str, str]:
    """An ErrorResponse's (or NoticeResponse's) fields: {"S": "ERROR", "C": "42501", "M": ...}.
    Bytes that are not UTF-8 (a server echoing a client's bad text) are replaced, not fatal."""
    out = {}
    for part in body.rstrip(b"\0").split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


def error_of(msgs) -> dict[str, str] | None:
    """The fields of the first ErrorResponse among ``msgs``, or None."""
    for t, body in msgs:
        if t == b"E":
            return fields(body)
    return None


def types(msgs) -> list[str]:
    return [m[0].decode() for m in msgs]


def data_values(body: bytes) -> list[str | None]:
    """A DataRow's column values (text format), None for NULL."""
    (n,) = struct.unpack_from("!h", body)
    pos, out = 2, []
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + ln].decode())
            pos += ln
    return out


def command_tag(body: bytes) -> str:
    return body.rstrip(b"\0").decode()


def tx_status(msgs) -> str:
    """The transaction status of the ReadyForQuery that ends ``msgs``: "I", "T" or "E"."""
    assert msgs[-1][0] == b"Z", msgs
    return msgs[-1][1].decode()

# --------------------------------------------------------------------------- sessions


def connect(port: int, timeout: float = 10, *, host: str = "127.0.0.1") -> socket.socket:
    """A plain TCP connection; ``timeout`` applies to every later socket operation too."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def start_login(sock, password: str | bytes, *, user: str = USER, db: str = DB,
                extra: dict[str, str] | None = None, send_startup: bool = True) -> None:
    """StartupMessage (unless already sent), expect the cleartext password request, send ``password``."""
    if send_startup:
        sock.sendall(startup_packet({"user": user, "database": db, **(extra or {})}))
    mtype, body = read_msg(sock)
    assert (mtype, body) == AUTH_CLEARTEXT, (mtype, body, fields(body) if mtype == b"E" else None)
    sock.sendall(msg(b"p", cstr(password)))


def login(sock, token: str, **kw) -> list[tuple[bytes, bytes]]:
    """A successful login with ``token`` (keywords as ``start_login``): the messages up to the
    first ReadyForQuery, starting with AuthenticationOk."""
    start_login(sock, token, **kw)
    msgs = read_until_ready(sock)
    assert msgs[0] == AUTH_OK, msgs
    return msgs


def simple_query(sock, sql: str | bytes) -> list[tuple[bytes, bytes]]:
    """A simple Query and its answer up to ReadyForQuery."""
    sock.sendall(query(sql))
    return read_until_ready(sock)


def raw_session(proxy, scope: str = "read", *, timeout: float = 20) -> socket.socket:
    """A logged-in plaintext (loopback) session with a ``scope`` token of ``proxy``."""
    s = connect(proxy.port, timeout, host=proxy.host)
    login(s, proxy.token(scope))
    return s

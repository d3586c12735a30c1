"""The upstream leg: connect, negotiate TLS, log in as the scope's role, then relay.

Login is linear code on asyncio streams (it happens once per session and
reads best top to bottom). Once the server says ReadyForQuery, the transport
is handed to UpstreamProtocol, a plain asyncio.Protocol, for the relay: the
hot path never goes through a StreamReader.

Authentication: SCRAM-SHA-256 (scramp), md5, cleartext and trust. The
server's own FATAL during login is passed to the client as it was sent,
prefixed so the client knows it came from the upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from dataclasses import dataclass, field

from scramp import ScramClient

from ..config import UpstreamConfig
from ..wire import constants as c
from ..wire import decode, encode
from ..wire.errors import ServerProtocolError
from . import tls

_HDR = struct.Struct("!Bi")
MAX_LOGIN_MESSAGE = 1 << 20


class UpstreamError(Exception):
    """Login failed. sqlstate/message are what the client is told."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


@dataclass
class LoginResult:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    backend_pid: int = 0
    backend_key: int = 0
    parameters: list[tuple[str, str]] = field(default_factory=list)
    notices: list[bytes] = field(default_factory=list)
    tls_version: str | None = None


async def open_and_login(cfg: UpstreamConfig, *, database: str, role: str, password: str | None,
                         settings: dict[str, str]) -> LoginResult:
    try:
        if cfg.is_unix:
            reader, writer = await asyncio.open_unix_connection(f"{cfg.host}/.s.PGSQL.{cfg.port}")
        else:
            reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
    except OSError as e:
        raise UpstreamError(c.SQLSTATE_CANNOT_CONNECT,
                            f"could not connect to upstream {_where(cfg)}: {e.strerror or e}") from None
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls_version = None
        if cfg.sslmode != "disable" and not cfg.is_unix:
            writer.write(encode.ssl_request())
            answer = await reader.readexactly(1)
            if answer == b"S":
                ctx = tls.upstream_context(cfg.sslmode, cfg.sslrootcert)
                await writer.start_tls(ctx, server_hostname=cfg.host if cfg.sslmode == "verify-full" else None)
                ssl_obj = writer.get_extra_info("ssl_object")
                tls_version = ssl_obj.version() if ssl_obj else None
            elif answer == b"N":
                if cfg.sslmode in ("require", "verify-full"):
                    raise UpstreamError(c.SQLSTATE_CANNOT_CONNECT,
                                        f"upstream {_where(cfg)} does not support TLS (sslmode={cfg.sslmode})")
            else:
                raise UpstreamError(c.SQLSTATE_CANNOT_CONNECT,
                                    f"upstream {_where(cfg)} answered the SSLRequest with {answer!r}")
        params = {"user": role, "database": database, **settings}
        writer.write(encode.startup_message(params))
        result = LoginResult(reader, writer, tls_version=tls_version)
        await _login(reader, writer, role, password, result)
        return result
    except BaseException:
        writer.transport.abort()
        raise


async def _read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    try:
        header = await reader.readexactly(5)
    except asyncio.IncompleteReadError:
        raise UpstreamError(c.SQLSTATE_CONNECTION_FAILURE, "upstream closed the connection during login") from None
    mtype, length = _HDR.unpack(header)
    if length < 4 or length > MAX_LOGIN_MESSAGE:
        raise ServerProtocolError(f"upstream sent a message of invalid length {length} during login")
    body = await reader.readexactly(length - 4)
    return mtype, body


async def _login(reader, writer, role: str, password: str | None, result: LoginResult) -> None:
    scram: ScramClient | None = None
    while True:
        mtype, body = await _read_message(reader)
        if mtype == c.PqMsg_AuthenticationRequest:
            code, data = decode.decode_auth_request(body, 0, len(body))
            if code == c.AUTH_OK:
                continue
            if code in (c.AUTH_CLEARTEXT_PASSWORD, c.AUTH_MD5_PASSWORD, c.AUTH_SASL) and password is None:
                raise UpstreamError(c.SQLSTATE_INVALID_PASSWORD,
                                    f"upstream asks for a password for role {role!r} and none is configured")
            if code == c.AUTH_CLEARTEXT_PASSWORD:
                writer.write(encode.password_message(password.encode() + b"\x00"))
            elif code == c.AUTH_MD5_PASSWORD:
                inner = hashlib.md5(password.encode() + role.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + data[:4]).hexdigest()
                writer.write(encode.password_message(b"md5" + outer.encode() + b"\x00"))
            elif code == c.AUTH_SASL:
                mechs = decode.decode_sasl_mechanisms(data)
                if "SCRAM-SHA-256" not in mechs:
                    raise UpstreamError(c.SQLSTATE_INVALID_AUTHORIZATION,
                                        f"upstream offers no supported SASL mechanism ({', '.join(mechs)})")
                scram = ScramClient(["SCRAM-SHA-256"], role, password)
                writer.write(encode.sasl_initial_response("SCRAM-SHA-256", scram.get_client_first().encode()))
            elif code == c.AUTH_SASL_CONTINUE and scram is not None:
                scram.set_server_first(data.decode())
                writer.write(encode.password_message(scram.get_client_final().encode()))
            elif code == c.AUTH_SASL_FINAL and scram is not None:
                try:
                    scram.set_server_final(data.decode())
                except Exception:
                    raise UpstreamError(c.SQLSTATE_INVALID_AUTHORIZATION,
                                        "upstream server's SCRAM signature did not verify") from None
            else:
                raise UpstreamError(c.SQLSTATE_FEATURE_NOT_SUPPORTED,
                                    f"upstream asks for authentication method {code}, which pgwarden does not support")
        elif mtype == c.PqMsg_ErrorResponse:
            f = decode.decode_fields(body, 0, len(body))
            raise UpstreamError(f.get("C", c.SQLSTATE_CONNECTION_FAILURE),
                                f"upstream refused the login: {f.get('M', 'unknown error')}", f.get("D"))
        elif mtype == c.PqMsg_ParameterStatus:
            result.parameters.append(decode.decode_parameter_status(body, 0, len(body)))
        elif mtype == c.PqMsg_BackendKeyData:
            result.backend_pid, result.backend_key = decode.decode_backend_key_data(body, 0, len(body))
        elif mtype == c.PqMsg_NoticeResponse:
            result.notices.append(encode.message(b"N", body))
        elif mtype == c.PqMsg_NegotiateProtocolVersion:
            continue
        elif mtype == c.PqMsg_ReadyForQuery:
            return
        else:
            raise ServerProtocolError(f"upstream sent unexpected message {chr(mtype)!r} during login")


class UpstreamProtocol(asyncio.Protocol):
    """Relay-phase protocol for the upstream socket: everything goes to the session."""

    __slots__ = ("session", "transport")

    def __init__(self, session) -> None:
        self.session = session
        self.transport = None

    def connection_made(self, transport) -> None:     # not called after set_protocol; kept for clarity
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.session.on_server_data(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.session.on_upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_client_reading()

    def resume_writing(self) -> None:
        self.session.resume_client_reading()


async def send_cancel(cfg: UpstreamConfig, pid: int, key: int) -> None:
    """CancelRequest to the upstream on a fresh connection, as libpq does."""
    if cfg.is_unix:
        reader, writer = await asyncio.open_unix_connection(f"{cfg.host}/.s.PGSQL.{cfg.port}")
    else:
        reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
    try:
        writer.write(encode.cancel_request(pid, key))
        await writer.drain()
        await asyncio.wait_for(reader.read(1), 5)     # the server closes when done
    finally:
        writer.close()


def _where(cfg: UpstreamConfig) -> str:
    return f"{cfg.host}/.s.PGSQL.{cfg.port}" if cfg.is_unix else f"{cfg.host}:{cfg.port}"

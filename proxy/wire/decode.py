"""Decode the message bodies pgwarden must look at; everything else is forwarded as bytes.

Each decode_<msg>(buf, start, end) reads a body framed by FrameScanner.
Malformed bodies raise the error class passed in (the client's fault by
default). Text is decoded as strict UTF-8: a body that is not valid UTF-8
is an error, never replaced or escaped (policy must see exactly what the
server would run).

``decode_bind`` (once per executed statement, for the recording) runs in C
when the optional extension ``proxy.wire._scan`` was built; ``decode_bind_py``
is the reference, and the fallback for anything the C code refuses
(``BIND_IMPL`` says which is in use).
"""

import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import constants as c
from .errors import ClientProtocolError, ProtocolError, ServerProtocolError

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")


@dataclass(frozen=True, slots=True)
class StartupPacket:
    code: int                       # PROTOCOL_3_0 (or 3.x), or one of the *_REQUEST_CODEs
    params: dict[str, str]          # StartupMessage parameters, in order
    cancel_pid: int = 0
    cancel_key: int = 0

    @property
    def major(self) -> int:
        return self.code >> 16

    @property
    def minor(self) -> int:
        return self.code & 0xFFFF


def _cstring(buf, pos: int, end: int, err: type[ProtocolError], what: str) -> tuple[str, int]:
    nul = buf.find(b"\x00", pos, end)
    if nul < 0:
        raise err(f"{what}: missing string terminator")
    try:
        return buf[pos:nul].decode("utf-8"), nul + 1
    except UnicodeDecodeError:
        raise err(f"{what}: invalid UTF-8", sqlstate="22021") from None


def decode_startup(buf, start: int, end: int) -> StartupPacket:
    err = ClientProtocolError
    if end - start < 4:
        raise err("startup packet too short")
    (code,) = _I32.unpack_from(buf, start)
    pos = start + 4
    if code == c.CANCEL_REQUEST_CODE:
        if end - pos != 8:
            raise err("malformed CancelRequest")
        pid, key = struct.unpack_from("!iI", buf, pos)
        return StartupPacket(code, {}, pid, key)
    if code in (c.SSL_REQUEST_CODE, c.GSSENC_REQUEST_CODE):
        if end != pos:
            raise err("malformed SSLRequest/GSSENCRequest")
        return StartupPacket(code, {})
    if code >> 16 != 3:
        raise err(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0",
                  sqlstate="0A000")
    params: dict[str, str] = {}
    while True:
        if pos >= end:
            raise err("startup packet: missing final terminator")
        if buf[pos] == 0:
            if pos + 1 != end:
                raise err("startup packet: bytes after the final terminator")
            break
        name, pos = _cstring(buf, pos, end, err, "startup packet")
        value, pos = _cstring(buf, pos, end, err, "startup packet")
        if name in params:
            raise err(f"startup packet: parameter {name!r} given twice")
        params[name] = value
    return StartupPacket(code, params)


def decode_password(buf, start: int, end: int) -> str:
    """PasswordMessage: one C string; the token. Never echo it in errors."""
    if end <= start or buf[end - 1] != 0:
        raise ClientProtocolError("password message is not a terminated string")
    raw = bytes(buf[start:end - 1])
    if b"\x00" in raw:
        raise ClientProtocolError("password message contains a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientProtocolError("password is not valid UTF-8", sqlstate="28P01") from None


def decode_query(buf, start: int, end: int) -> str:
    """Query: the text ends at its first NUL, which must be the body's last byte.

    Bytes after an inner NUL would be invisible to PostgreSQL's parser and to
    pglast alike; they are a protocol violation, never dropped or passed on.
    """
    nul = buf.find(b"\x00", start, end)
    if nul < 0 or nul != end - 1:
        if nul < 0:
            raise ClientProtocolError("Query message is missing its string terminator")
        raise ClientProtocolError("Query message has bytes after the terminating NUL")
    try:
        return bytes(buf[start:nul]).decode("utf-8")
    except UnicodeDecodeError:
        raise ClientProtocolError("Query text is not valid UTF-8", sqlstate="22021") from None


class Parse(NamedTuple):          # a tuple: made once per Parse message, on the relay's path
    name: str
    query: str
    param_types: tuple[int, ...]


def decode_parse(buf, start: int, end: int) -> Parse:
    err = ClientProtocolError
    if start < end and buf[start] == 0:          # the unnamed statement, as most drivers send
        name, pos = "", start + 1
    else:
        name, pos = _cstring(buf, start, end, err, "Parse statement name")
    query, pos = _cstring(buf, pos, end, err, "Parse query")
    if end - pos < 2:
        raise err("Parse message truncated")
    (n,) = _I16.unpack_from(buf, pos)
    pos += 2
    if n < 0 or end - pos != 4 * n:
        raise err("Parse message: parameter type count does not match its length")
    types = struct.unpack_from(f"!{n}I", buf, pos) if n else ()
    return Parse(name, query, types)


def decode_fields(buf, start: int, end: int, err: type[ProtocolError] = ServerProtocolError) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields keyed by their one-letter code."""
    fields: dict[str, str] = {}
    pos = start
    while pos < end and buf[pos] != 0:
        code = chr(buf[pos])
        nul = buf.find(b"\x00", pos + 1, end)
        if nul < 0:
            raise err("error/notice field without terminator")
        fields[code] = bytes(buf[pos + 1:nul]).decode("utf-8", "replace")
        pos = nul + 1
    return fields


def decode_auth_request(buf, start: int, end: int) -> tuple[int, bytes]:
    if end - start < 4:
        raise ServerProtocolError("authentication request too short")
    (code,) = _I32.unpack_from(buf, start)
    return code, bytes(buf[start + 4:end])


def decode_parameter_status(buf, start: int, end: int) -> tuple[str, str]:
    err = ServerProtocolError
    name, pos = _cstring(buf, start, end, err, "ParameterStatus")
    value, _ = _cstring(buf, pos, end, err, "ParameterStatus")
    return name, value


def decode_backend_key_data(buf, start: int, end: int) -> tuple[int, int]:
    if end - start != 8:
        raise ServerProtocolError("malformed BackendKeyData")
    return struct.unpack_from("!iI", buf, start)


def decode_sasl_mechanisms(data: bytes) -> list[str]:
    return [m.decode("utf-8", "replace") for m in data.split(b"\x00") if m]


def decode_bind_statement(buf, start: int, end: int) -> str:
    """The prepared statement a Bind names (its second string)."""
    portal_end = buf.find(b"\x00", start, end)
    if portal_end < 0:
        raise ClientProtocolError("Bind message: missing portal name terminator")
    name, _ = _cstring(buf, portal_end + 1, end, ClientProtocolError, "Bind statement name")
    return name


def decode_close(buf, start: int, end: int) -> tuple[str, str]:
    """Close: ('S' statement | 'P' portal, name)."""
    if end - start < 2:
        raise ClientProtocolError("Close message too short")
    name, _ = _cstring(buf, start + 1, end, ClientProtocolError, "Close name")
    return chr(buf[start]), name


_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")


def decode_bind_py(buf, start: int, end: int) -> tuple[str, str, list[tuple[bytes | None, bool]]]:
    """Bind: (portal, statement, [(value or None for NULL, binary?)]) -- for the recording.

    The reference for ``proxy.wire._scan.decode_bind`` and the fallback of
    ``decode_bind``.  More lenient than PostgreSQL (which the compiled version
    refuses and leaves to this one): any negative length is NULL, any non-zero
    format code is binary, extra parameter format codes are ignored, and the
    result format codes after the parameters are not read.
    """
    err = ClientProtocolError
    if start < end and buf[start] == 0:          # the unnamed portal, as nearly every driver sends
        portal, pos = "", start + 1
    else:
        portal, pos = _cstring(buf, start, end, err, "Bind portal name")
    if pos < end and buf[pos] == 0:
        statement, pos = "", pos + 1
    else:
        statement, pos = _cstring(buf, pos, end, err, "Bind statement name")
    try:
        (nfmt,) = _U16.unpack_from(buf, pos)
        pos += 2
        if nfmt == 0:
            fmt_all = 0
        elif nfmt == 1:
            (fmt_all,) = _U16.unpack_from(buf, pos)
        else:
            fmt_all = -1
            formats = struct.unpack_from(f"!{nfmt}H", buf, pos)
        pos += 2 * nfmt
        (nparams,) = _U16.unpack_from(buf, pos)
        pos += 2
        params: list[tuple[bytes | None, bool]] = []
        unpack = _I32.unpack_from
        for i in range(nparams):
            (size,) = unpack(buf, pos)
            pos += 4
            binary = bool(fmt_all if fmt_all >= 0 else formats[i])
            if size < 0:
                params.append((None, binary))
                continue
            if pos + size > end:
                raise err("Bind message: parameter runs past the end of the message")
            params.append((bytes(buf[pos:pos + size]), binary))
            pos += size
    except (struct.error, IndexError):
        raise err("Bind message: truncated parameter list") from None
    if pos > end:
        raise err("Bind message: parameter list runs past the end of the message")
    return portal, statement, params


# Bind runs once per executed statement: decoded in C when the optional
# extension was built (a pgbench Bind: 1.28 µs in Python, 0.16 µs through
# this wrapper in C).  The C version returns None for anything it does not
# accept as well-formed, and the reference then decodes it or raises the
# ClientProtocolError.
try:
    from ._scan import decode_bind as decode_bind_c
except ImportError:        # built without a C compiler (or an older build): the reference
    decode_bind_c = None

BIND_IMPL = "c" if decode_bind_c is not None else "python"

if decode_bind_c is not None:
    def decode_bind(buf, start: int, end: int, _c=decode_bind_c,
                    _py=decode_bind_py) -> tuple[str, str, list[tuple[bytes | None, bool]]]:
        """Bind: (portal, statement, [(value or None for NULL, binary?)]); see decode_bind_py."""
        r = _c(buf, start, end)
        return r if r is not None else _py(buf, start, end)
else:
    decode_bind = decode_bind_py


def decode_execute(buf, start: int, end: int) -> str:
    """Execute: the portal name."""
    if start < end and buf[start] == 0:
        return ""
    name, _ = _cstring(buf, start, end, ClientProtocolError, "Execute portal name")
    return name

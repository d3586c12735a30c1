"""Build backend (and the few frontend) messages pgwarden sends on its own.

Pure functions returning bytes. Constant messages are precomputed module
constants so the hot path never rebuilds them.
"""

import struct

from . import constants as c

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")


def message(type_byte: bytes, body: bytes = b"") -> bytes:
    """One typed message: type byte, int32 length (counting itself), body."""
    return _HDR.pack(type_byte, len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


AUTH_OK = message(b"R", _I32.pack(c.AUTH_OK))
AUTH_CLEARTEXT = message(b"R", _I32.pack(c.AUTH_CLEARTEXT_PASSWORD))
READY_IDLE = message(b"Z", b"I")
SSL_ACCEPT = b"S"
SSL_REFUSE = b"N"
TERMINATE = message(b"X")
SYNC = message(b"S")


def error_response(sqlstate: str, msg: str, *, severity: str = "ERROR", detail: str | None = None,
                   hint: str | None = None) -> bytes:
    """ErrorResponse with S (localized), V (non-localized) severity, C, M and optional D/H."""
    return message(b"E", _fields(severity, sqlstate, msg, detail, hint))


def fatal(sqlstate: str, msg: str, *, detail: str | None = None, hint: str | None = None) -> bytes:
    return error_response(sqlstate, msg, severity="FATAL", detail=detail, hint=hint)


def notice(msg: str, *, sqlstate: str = "01000", severity: str = "WARNING", detail: str | None = None,
           hint: str | None = None) -> bytes:
    return message(b"N", _fields(severity, sqlstate, msg, detail, hint))


def _fields(severity: str, sqlstate: str, msg: str, detail: str | None, hint: str | None) -> bytes:
    parts = [b"S", cstr(severity), b"V", cstr(severity), b"C", cstr(sqlstate), b"M", cstr(msg)]
    if detail:
        parts += [b"D", cstr(detail)]
    if hint:
        parts += [b"H", cstr(hint)]
    parts.append(b"\x00")
    return b"".join(parts)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return message(b"K", struct.pack("!iI", pid, key))


def ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


def negotiate_protocol_version(newest_minor: int, unrecognized: list[str]) -> bytes:
    # The field is the whole version (3 << 16 | minor), as PostgreSQL sends it; libpq 18
    # reads a bare 0 as a downgrade to a pre-3.0 protocol and refuses.
    body = _I32.pack(c.PROTOCOL_3_0 | newest_minor) + _I32.pack(len(unrecognized)) + b"".join(cstr(o) for o in unrecognized)
    return message(b"v", body)


# --- frontend messages pgwarden sends upstream ------------------------------

def startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(c.PROTOCOL_3_0) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, c.SSL_REQUEST_CODE)


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiiI", 16, c.CANCEL_REQUEST_CODE, pid, key)


def password_message(payload: bytes) -> bytes:
    return message(b"p", payload)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))

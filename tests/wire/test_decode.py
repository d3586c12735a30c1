"""proxy.wire.decode: bodies pgwarden must read, and how malformed ones are refused."""

from __future__ import annotations

import struct

import pytest

from proxy.wire import constants as c
from proxy.wire import decode, encode
from proxy.wire.errors import ClientProtocolError, ServerProtocolError


def whole(body: bytes):
    return body, 0, len(body)


def startup_body(code: int, params: bytes) -> bytes:
    return struct.pack("!i", code) + params


# --------------------------------------------------------------------------- startup


def test_startup_message_params_in_order():
    pkt = encode.startup_message({"user": "alice", "database": "appdb", "application_name": "psql"})
    p = decode.decode_startup(pkt, 4, len(pkt))
    assert p.code == c.PROTOCOL_3_0 and (p.major, p.minor) == (3, 0)
    assert list(p.params.items()) == [("user", "alice"), ("database", "appdb"), ("application_name", "psql")]


def test_startup_offsets_inside_a_larger_buffer():
    pkt = encode.startup_message({"user": "bob"})
    buf = bytearray(b"junk" + pkt + b"more")
    p = decode.decode_startup(buf, 8, 4 + len(pkt))
    assert p.params == {"user": "bob"}


def test_startup_minor_version():
    body = startup_body((3 << 16) | 2, b"user\0a\0\0")
    p = decode.decode_startup(*whole(body))
    assert (p.major, p.minor) == (3, 2)


def test_startup_utf8_values():
    body = startup_body(c.PROTOCOL_3_0, "user\0zoë\0\0".encode())
    assert decode.decode_startup(*whole(body)).params == {"user": "zoë"}


def test_startup_empty_params():
    p = decode.decode_startup(*whole(startup_body(c.PROTOCOL_3_0, b"\0")))
    assert p.params == {}


@pytest.mark.parametrize("code", [c.SSL_REQUEST_CODE, c.GSSENC_REQUEST_CODE])
def test_ssl_and_gssenc_requests(code):
    p = decode.decode_startup(*whole(struct.pack("!i", code)))
    assert p.code == code and p.params == {}


@pytest.mark.parametrize("code", [c.SSL_REQUEST_CODE, c.GSSENC_REQUEST_CODE])
def test_ssl_request_with_a_body_is_malformed(code):
    with pytest.raises(ClientProtocolError, match="malformed"):
        decode.decode_startup(*whole(struct.pack("!ii", code, 0)))


def test_cancel_request():
    body = struct.pack("!iiI", c.CANCEL_REQUEST_CODE, 4242, 0xFFFFFFFF)
    p = decode.decode_startup(*whole(body))
    assert (p.code, p.cancel_pid, p.cancel_key) == (c.CANCEL_REQUEST_CODE, 4242, 0xFFFFFFFF)


@pytest.mark.parametrize("rest", [b"", b"\0\0\0\1", b"\0" * 7, b"\0" * 9, b"\0" * 12])
def test_cancel_request_wrong_size(rest):
    with pytest.raises(ClientProtocolError, match="CancelRequest"):
        decode.decode_startup(*whole(struct.pack("!i", c.CANCEL_REQUEST_CODE) + rest))


def test_protocol_2_refused_as_unsupported():
    with pytest.raises(ClientProtocolError) as ei:
        decode.decode_startup(*whole(startup_body(2 << 16, b"user\0a\0\0")))
    assert ei.value.sqlstate == "0A000" and "2.0" in ei.value.message


@pytest.mark.parametrize("code", [0, 1234, 4 << 16, -1])
def test_other_codes_unsupported(code):
    with pytest.raises(ClientProtocolError):
        decode.decode_startup(*whole(startup_body(code, b"\0")))


@pytest.mark.parametrize("body, match", [
    (b"", "too short"),
    (b"\0\0\3", "too short"),
    (startup_body(c.PROTOCOL_3_0, b""), "final terminator"),
    (startup_body(c.PROTOCOL_3_0, b"user\0alice\0"), "final terminator"),
    (startup_body(c.PROTOCOL_3_0, b"user\0alice"), "terminator"),
    (startup_body(c.PROTOCOL_3_0, b"user"), "terminator"),
    (startup_body(c.PROTOCOL_3_0, b"user\0a\0\0x"), "after the final terminator"),
    (startup_body(c.PROTOCOL_3_0, b"\0\0"), "after the final terminator"),
    (startup_body(c.PROTOCOL_3_0, b"user\0a\0user\0b\0\0"), "twice"),
])
def test_startup_malformed(body, match):
    with pytest.raises(ClientProtocolError, match=match) as ei:
        decode.decode_startup(*whole(body))
    assert ei.value.sqlstate == "08P01"


def test_startup_invalid_utf8():
    with pytest.raises(ClientProtocolError) as ei:
        decode.decode_startup(*whole(startup_body(c.PROTOCOL_3_0, b"user\0\xff\xfe\0\0")))
    assert ei.value.sqlstate == "22021"


def test_startup_respects_end_offset():
    # a terminator that lies beyond `end` must not be used
    body = startup_body(c.PROTOCOL_3_0, b"user\0alice\0\0")
    with pytest.raises(ClientProtocolError):
        decode.decode_startup(body, 0, len(body) - 3)


# --------------------------------------------------------------------------- query


def test_query():
    assert decode.decode_query(*whole(b"SELECT 1\0")) == "SELECT 1"
    assert decode.decode_query(*whole("SELECT 'ü'\0".encode())) == "SELECT 'ü'"


def test_empty_query():
    assert decode.decode_query(*whole(b"\0")) == ""


def test_query_in_a_larger_buffer():
    buf = bytearray(encode.query("SELECT 1") + encode.query("SELECT 2"))
    assert decode.decode_query(buf, 5, 14) == "SELECT 1"
    assert decode.decode_query(buf, 19, len(buf)) == "SELECT 2"


def test_query_missing_terminator():
    with pytest.raises(ClientProtocolError, match="terminator") as ei:
        decode.decode_query(*whole(b"SELECT 1"))
    assert ei.value.sqlstate == "08P01"


def test_query_empty_body_inside_a_buffer():
    # how the proxy calls it: the body starts after the 5-byte header
    buf = b"Q\0\0\0\4"
    with pytest.raises(ClientProtocolError, match="terminator"):
        decode.decode_query(buf, 5, 5)


def test_query_empty_body_at_offset_zero():
    with pytest.raises(ClientProtocolError, match="terminator"):
        decode.decode_query(b"", 0, 0)


@pytest.mark.parametrize("body", [b"SELECT 1\0 CREATE TABLE x()\0", b"\0\0", b"SELECT 1\0x"])
def test_query_with_bytes_after_nul(body):
    with pytest.raises(ClientProtocolError, match="after the terminating NUL") as ei:
        decode.decode_query(*whole(body))
    assert ei.value.sqlstate == "08P01"


def test_query_invalid_utf8():
    with pytest.raises(ClientProtocolError) as ei:
        decode.decode_query(*whole(b"SELECT '\xc3'\0"))
    assert ei.value.sqlstate == "22021"


# --------------------------------------------------------------------------- parse


def parse_body(name: bytes, sql: bytes, types: tuple[int, ...], count: int | None = None) -> bytes:
    n = len(types) if count is None else count
    return name + b"\0" + sql + b"\0" + struct.pack("!h", n) + b"".join(struct.pack("!I", t) for t in types)


def test_parse():
    p = decode.decode_parse(*whole(parse_body(b"s1", b"SELECT $1::int, $2", (23, 0))))
    assert p == decode.Parse("s1", "SELECT $1::int, $2", (23, 0))


def test_parse_unnamed_no_types():
    assert decode.decode_parse(*whole(parse_body(b"", b"SELECT 1", ()))) == decode.Parse("", "SELECT 1", ())


def test_parse_high_oid():
    assert decode.decode_parse(*whole(parse_body(b"", b"x", (0xFFFFFFFF,)))).param_types == (0xFFFFFFFF,)


@pytest.mark.parametrize("body, match", [
    (b"", "statement name"),
    (b"s1", "statement name"),
    (b"s1\0SELECT 1", "Parse query"),
    (b"s1\0SELECT 1\0", "truncated"),
    (b"s1\0SELECT 1\0\0", "truncated"),
    (parse_body(b"", b"SELECT 1", (23,), count=2), "count"),
    (parse_body(b"", b"SELECT 1", (23, 25), count=1), "count"),
    (parse_body(b"", b"SELECT 1", (), count=-1), "count"),
    (parse_body(b"", b"SELECT 1", (23,)) + b"\0", "count"),
])
def test_parse_malformed(body, match):
    with pytest.raises(ClientProtocolError, match=match):
        decode.decode_parse(*whole(body))


def test_parse_invalid_utf8():
    with pytest.raises(ClientProtocolError) as ei:
        decode.decode_parse(*whole(parse_body(b"", b"SELECT '\xff'", ())))
    assert ei.value.sqlstate == "22021"


# --------------------------------------------------------------------------- password


def test_password():
    assert decode.decode_password(*whole(b"eyJ.abc.def\0")) == "eyJ.abc.def"


def test_empty_password_string():
    assert decode.decode_password(*whole(b"\0")) == ""


@pytest.mark.parametrize("body, match", [
    (b"", "not a terminated string"),
    (b"secret", "not a terminated string"),
    (b"sec\0ret\0", "NUL"),
])
def test_password_malformed(body, match):
    with pytest.raises(ClientProtocolError, match=match) as ei:
        decode.decode_password(*whole(body))
    assert "secret" not in ei.value.message and "sec" not in ei.value.message.replace("second", "")


def test_password_invalid_utf8_never_echoed():
    with pytest.raises(ClientProtocolError) as ei:
        decode.decode_password(*whole(b"tok\xffen\0"))
    assert ei.value.sqlstate == "28P01"
    assert "tok" not in ei.value.message


# --------------------------------------------------------------------------- server-side bodies


def test_fields():
    body = b"SERROR\0VERROR\0C42501\0Mpermission denied\0\0"
    assert decode.decode_fields(*whole(body)) == {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "permission denied"}


def test_fields_roundtrip_with_encode():
    raw = encode.fatal("28P01", "pgwarden: token expired at T", detail="d", hint="h")
    f = decode.decode_fields(raw, 5, len(raw))
    assert f == {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": "pgwarden: token expired at T", "D": "d", "H": "h"}


def test_fields_unterminated():
    with pytest.raises(ServerProtocolError):
        decode.decode_fields(*whole(b"SERROR"))
    with pytest.raises(ClientProtocolError):
        decode.decode_fields(*whole(b"SERROR"), err=ClientProtocolError)


def test_auth_request():
    assert decode.decode_auth_request(*whole(struct.pack("!i", 5) + b"salt")) == (5, b"salt")
    with pytest.raises(ServerProtocolError):
        decode.decode_auth_request(*whole(b"\0\0"))


def test_parameter_status_and_backend_key():
    assert decode.decode_parameter_status(*whole(b"TimeZone\0UTC\0")) == ("TimeZone", "UTC")
    with pytest.raises(ServerProtocolError):
        decode.decode_parameter_status(*whole(b"TimeZone\0UTC"))
    assert decode.decode_backend_key_data(*whole(struct.pack("!iI", 7, 0xFFFFFFFF))) == (7, 0xFFFFFFFF)
    with pytest.raises(ServerProtocolError):
        decode.decode_backend_key_data(*whole(b"\0" * 7))


def test_sasl_mechanisms():
    assert decode.decode_sasl_mechanisms(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0") == [
        "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]

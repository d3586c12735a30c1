"""Fuzz the client-side codec: FrameScanner + decode_* on arbitrary bytes.

Properties:
- the frames (and decoded bodies) do not depend on how the bytes were chunked: all at once,
  byte by byte, or at arbitrary split points, with compact() after every chunk as ClientConn does;
- the codec only ever raises ProtocolError subclasses (anything else would be a pgwarden bug
  reported to the client as an internal error).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire import constants as c
from proxy.wire import decode, encode
from proxy.wire.errors import ProtocolError
from proxy.wire.framing import NEED_DATA, FrameScanner

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DECODERS = {
    "query": decode.decode_query,
    "parse": decode.decode_parse,
    "password": decode.decode_password,
    "fields": decode.decode_fields,
    "auth": decode.decode_auth_request,
    "parameter_status": decode.decode_parameter_status,
    "backend_key": decode.decode_backend_key_data,
}


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except ProtocolError as e:                         # anything else escapes and fails the test
        return ("error", type(e).__name__, e.message, e.sqlstate)


def run(chunks: list[bytes], *, startup: bool, max_size: int):
    """Scan like ClientConn does; return (frames with every decoder's outcome, final error)."""
    sc = FrameScanner(max_size)
    out = []
    in_startup = startup
    try:
        for chunk in chunks:
            sc.feed(chunk)
            while True:
                if in_startup:
                    f = sc.next_startup_packet()
                    if f is NEED_DATA:
                        break
                    start, end = f
                    res = _outcome(decode.decode_startup, sc.buf, start, end)
                    out.append(("startup", bytes(sc.buf[start:end]), res))
                    if res[0] == "error":
                        return out, res
                    if res[1].code not in (c.SSL_REQUEST_CODE, c.GSSENC_REQUEST_CODE):
                        in_startup = False
                else:
                    f = sc.next_frame()
                    if f is NEED_DATA:
                        break
                    mtype, start, end = f
                    assert 5 <= end - start + 5 <= max_size + 1
                    body = bytes(sc.buf[start:end])
                    results = {name: _outcome(fn, sc.buf, start, end) for name, fn in DECODERS.items()}
                    # the offsets must mean the same as the body copied out
                    for name, fn in DECODERS.items():
                        assert _outcome(fn, body, 0, len(body)) == results[name] or not body, name
                    out.append((mtype, body, results))
            sc.compact()
            assert sc.pos == 0
    except ProtocolError as e:
        return out, ("scanner", type(e).__name__, e.message, e.sqlstate)
    return out, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(x, 0), len(data)) for x in cuts})
    chunks, prev = [], 0
    for p in points:
        chunks.append(data[prev:p])
        prev = p
    chunks.append(data[prev:])
    return chunks


# --------------------------------------------------------------------------- strategies

typed_message = st.one_of(
    st.builds(lambda t, b: t + struct.pack("!i", len(b) + 4) + b,
              st.sampled_from([b"Q", b"P", b"p", b"B", b"E", b"S", b"X", b"d", b"F", b"z", b"\0"]),
              st.binary(max_size=200)),
    st.text(max_size=80).map(lambda s: encode.query(s.replace("\0", ""))),
    st.builds(lambda q, n: encode.message(b"P", b"\0" + q.encode() + b"\0" + struct.pack("!h", n) + b"\0" * 4 * max(n, 0)),
              st.text(max_size=40).map(lambda s: s.replace("\0", "")), st.integers(-2, 3)),
    st.builds(lambda t, n: t + struct.pack("!i", n), st.sampled_from([b"Q", b"d"]),
              st.integers(-(2**31), 2**31 - 1)),                                # header only, any length
    st.binary(min_size=1, max_size=2500).map(lambda b: encode.message(b"d", b)),  # sometimes over the limit
)

startup_prefix = st.one_of(
    st.just(b""),
    st.just(encode.ssl_request()),
    st.just(struct.pack("!ii", 8, c.GSSENC_REQUEST_CODE)),
    st.dictionaries(st.text(min_size=1, max_size=10).map(lambda s: s.replace("\0", "") or "k"),
                    st.text(max_size=20).map(lambda s: s.replace("\0", "")), max_size=4).map(encode.startup_message),
    st.builds(lambda n, b: struct.pack("!i", n) + b, st.integers(-5, 12_000), st.binary(max_size=40)),
    st.just(encode.cancel_request(1, 2)),
)

stream = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda p, ms, tail: p + b"".join(ms) + tail, startup_prefix,
              st.lists(typed_message, max_size=8), st.binary(max_size=10)),
)


# --------------------------------------------------------------------------- properties


@FUZZ
@given(data=stream, startup=st.booleans(), max_size=st.sampled_from([1024, 4096, 64 << 20]))
def test_whole_equals_byte_by_byte(data, startup, max_size):
    whole = run([data], startup=startup, max_size=max_size)
    bytewise = run([data[i:i + 1] for i in range(len(data))], startup=startup, max_size=max_size)
    assert whole == bytewise


@FUZZ
@given(data=stream, cuts=st.lists(st.integers(0, 700), max_size=10), startup=st.booleans())
def test_any_chunking_gives_the_same_frames(data, cuts, startup):
    assert run(split(data, cuts), startup=startup, max_size=4096) == run([data], startup=startup, max_size=4096)


@FUZZ
@given(data=stream)
def test_frames_cover_the_consumed_bytes(data):
    """Concatenating the frames re-creates the consumed prefix of the stream exactly."""
    frames, err = run([data], startup=False, max_size=64 << 20)
    rebuilt = b"".join(bytes([t]) + struct.pack("!i", len(b) + 4) + b for t, b, _ in frames)
    assert data.startswith(rebuilt)
    if err is None:
        assert len(data) - len(rebuilt) < 5 or struct.unpack_from("!i", data, len(rebuilt) + 1)[0] + 1 > len(data) - len(rebuilt)


@FUZZ
@given(body=st.binary(max_size=300), pad=st.binary(max_size=8), tail=st.binary(max_size=8))
def test_decoders_raise_only_protocol_errors(body, pad, tail):
    buf = bytearray(pad + body + tail)
    start, end = len(pad), len(pad) + len(body)
    for fn in (*DECODERS.values(), decode.decode_startup):
        _outcome(fn, buf, start, end)
        _outcome(fn, body, 0, len(body))
    decode.decode_sasl_mechanisms(body)


@FUZZ
@given(body=st.binary(max_size=300), pad=st.binary(min_size=1, max_size=8), tail=st.binary(max_size=8))
def test_decoders_never_read_outside_their_body(body, pad, tail):
    """The same body at an offset, with arbitrary bytes around it, decodes the same."""
    buf = bytearray(pad + body + tail)
    start, end = len(pad), len(pad) + len(body)
    for name, fn in {**DECODERS, "startup": decode.decode_startup}.items():
        assert _outcome(fn, buf, start, end) == _outcome(fn, b"\xa5" + body + b"\0\0", 1, 1 + len(body)), name


@FUZZ
@given(params=st.dictionaries(st.text(min_size=1, max_size=20).map(lambda s: s.replace("\0", "") or "k"),
                              st.text(max_size=40).map(lambda s: s.replace("\0", "")), max_size=6))
def test_startup_roundtrip(params):
    pkt = encode.startup_message(params)
    sc = FrameScanner()
    sc.feed(pkt)
    start, end = sc.next_startup_packet()
    assert decode.decode_startup(sc.buf, start, end).params == params


@FUZZ
@given(sql=st.text(max_size=200).map(lambda s: s.replace("\0", "")))
def test_query_roundtrip(sql):
    sc = FrameScanner()
    sc.feed(encode.query(sql))
    mtype, start, end = sc.next_frame()
    assert mtype == c.PqMsg_Query and decode.decode_query(sc.buf, start, end) == sql

"""proxy.wire.framing: FrameScanner offsets, NEED_DATA, limits and startup framing."""

from __future__ import annotations

import struct

import pytest

from proxy.wire import encode
from proxy.wire.constants import MAX_STARTUP_PACKET
from proxy.wire.errors import ClientProtocolError, ProtocolError, ServerProtocolError
from proxy.wire.framing import HARD_MAX_MESSAGE_SIZE, NEED_DATA, FrameScanner


def frame(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!i", len(body) + 4) + body


def body_of(sc: FrameScanner, f) -> bytes:
    return bytes(sc.buf[f[1]:f[2]])


# --------------------------------------------------------------------------- typed frames


def test_empty_scanner_needs_data():
    sc = FrameScanner()
    assert sc.next_frame() is NEED_DATA
    assert sc.buffered == 0
    assert repr(NEED_DATA) == "NEED_DATA"


@pytest.mark.parametrize("n", range(0, 5))
def test_partial_header_needs_data(n):
    sc = FrameScanner()
    sc.feed(frame(b"Q", b"SELECT 1\0")[:n])
    assert sc.next_frame() is NEED_DATA
    assert sc.pos == 0 and sc.buffered == n


def test_partial_body_needs_data_then_completes():
    data = frame(b"Q", b"SELECT 1\0")
    sc = FrameScanner()
    sc.feed(data[:-1])
    assert sc.next_frame() is NEED_DATA
    sc.feed(data[-1:])
    f = sc.next_frame()
    assert f == (ord("Q"), 5, len(data))
    assert body_of(sc, f) == b"SELECT 1\0"
    assert sc.buffered == 0
    assert sc.next_frame() is NEED_DATA


def test_type_is_an_int():
    sc = FrameScanner()
    sc.feed(frame(b"S", b""))
    mtype, start, end = sc.next_frame()
    assert isinstance(mtype, int) and mtype == ord("S")
    assert start == end == 5


def test_several_frames_offsets():
    a, b, c = frame(b"P", b"\0SELECT 1\0\0\0"), frame(b"B", b"\0\0" + b"\0" * 6), frame(b"S", b"")
    sc = FrameScanner()
    sc.feed(a + b + c + b"E\0")          # plus the start of a fourth
    f1, f2, f3 = sc.next_frame(), sc.next_frame(), sc.next_frame()
    assert f1 == (ord("P"), 5, len(a))
    assert f2 == (ord("B"), len(a) + 5, len(a) + len(b))
    assert f3 == (ord("S"), len(a) + len(b) + 5, len(a) + len(b) + len(c))
    assert sc.next_frame() is NEED_DATA
    assert sc.buffered == 2


def test_compact_keeps_unconsumed_bytes_and_resets_offsets():
    a, b = frame(b"Q", b"one\0"), frame(b"Q", b"two\0")
    sc = FrameScanner()
    sc.feed(a + b[:3])
    assert body_of(sc, sc.next_frame()) == b"one\0"
    sc.compact()
    assert sc.pos == 0 and bytes(sc.buf) == b[:3]
    sc.feed(b[3:])
    f = sc.next_frame()
    assert f == (ord("Q"), 5, len(b))
    assert body_of(sc, f) == b"two\0"
    sc.compact()
    assert sc.buf == bytearray() and sc.pos == 0


def test_compact_without_progress_is_a_no_op():
    sc = FrameScanner()
    sc.feed(b"Q\0\0")
    sc.compact()
    assert bytes(sc.buf) == b"Q\0\0"


def test_take_rest():
    sc = FrameScanner()
    sc.feed(frame(b"S", b"") + b"leftover")
    sc.next_frame()
    assert sc.take_rest() == b"leftover"
    assert sc.buffered == 0 and sc.pos == 0


def test_minimum_length_4_is_an_empty_body():
    sc = FrameScanner()
    sc.feed(b"X\x00\x00\x00\x04")
    assert sc.next_frame() == (ord("X"), 5, 5)


@pytest.mark.parametrize("length", [3, 0, -1, -(2**31)])
def test_length_below_4_is_a_protocol_error(length):
    sc = FrameScanner()
    sc.feed(b"Q" + struct.pack("!i", length))
    with pytest.raises(ClientProtocolError) as ei:
        sc.next_frame()
    assert ei.value.sqlstate == "08P01"
    assert str(length) in ei.value.message and "'Q'" in ei.value.message


def test_error_class_is_the_one_given():
    sc = FrameScanner(error_class=ServerProtocolError)
    sc.feed(b"D" + struct.pack("!i", 2))
    with pytest.raises(ServerProtocolError):
        sc.next_frame()


def test_unprintable_type_shown_in_hex():
    sc = FrameScanner()
    sc.feed(b"\x01" + struct.pack("!i", 1))
    with pytest.raises(ClientProtocolError, match="0x01"):
        sc.next_frame()


def test_over_the_limit_raised_from_the_header_alone():
    sc = FrameScanner(max_message_size=1024)
    sc.feed(b"Q" + struct.pack("!i", 1025))            # no body byte yet
    with pytest.raises(ClientProtocolError) as ei:
        sc.next_frame()
    assert ei.value.sqlstate == "54000"
    assert "1025" in ei.value.message and "1024" in ei.value.message


def test_exactly_the_limit_is_allowed():
    sc = FrameScanner(max_message_size=1024)
    sc.feed(b"d" + struct.pack("!i", 1024))
    assert sc.next_frame() is NEED_DATA
    sc.feed(b"x" * 1020)
    assert sc.next_frame() == (ord("d"), 5, 1025)


def test_limit_is_capped_at_one_gib():
    sc = FrameScanner(max_message_size=1 << 40)
    assert sc.max_message_size == HARD_MAX_MESSAGE_SIZE == 1 << 30
    sc.feed(b"Q" + struct.pack("!i", (1 << 30) + 1))
    with pytest.raises(ClientProtocolError):
        sc.next_frame()
    ok = FrameScanner(max_message_size=1 << 40)
    ok.feed(b"Q" + struct.pack("!i", 1 << 30))
    assert ok.next_frame() is NEED_DATA


def test_error_does_not_consume():
    sc = FrameScanner()
    sc.feed(frame(b"S", b"") + b"Q" + struct.pack("!i", 1))
    assert sc.next_frame() == (ord("S"), 5, 5)
    for _ in range(2):
        with pytest.raises(ProtocolError):
            sc.next_frame()
    assert sc.pos == 5


def test_encoded_query_roundtrip():
    from proxy.wire import decode

    sc = FrameScanner()
    sc.feed(encode.query("SELECT 'é'"))
    mtype, s, e = sc.next_frame()
    assert mtype == ord("Q")
    assert decode.decode_query(sc.buf, s, e) == "SELECT 'é'"


# --------------------------------------------------------------------------- startup packets


def test_startup_needs_four_bytes():
    sc = FrameScanner()
    for n in range(4):
        sc.buf = bytearray(b"\x00\x00\x00\x08"[:n])
        assert sc.next_startup_packet() is NEED_DATA


def test_startup_packet_offsets():
    pkt = encode.startup_message({"user": "alice", "database": "appdb"})
    sc = FrameScanner()
    sc.feed(pkt + encode.ssl_request())
    assert sc.next_startup_packet() == (4, len(pkt))
    assert sc.next_startup_packet() == (len(pkt) + 4, len(pkt) + 8)
    assert sc.next_startup_packet() is NEED_DATA


def test_startup_partial_needs_data():
    pkt = encode.startup_message({"user": "alice"})
    sc = FrameScanner()
    sc.feed(pkt[:-1])
    assert sc.next_startup_packet() is NEED_DATA
    sc.feed(pkt[-1:])
    assert sc.next_startup_packet() == (4, len(pkt))


@pytest.mark.parametrize("length", [7, 4, 0, -1, -(2**31), MAX_STARTUP_PACKET + 1, 2**31 - 1])
def test_startup_length_out_of_range(length):
    sc = FrameScanner()
    sc.feed(struct.pack("!i", length))
    with pytest.raises(ClientProtocolError) as ei:
        sc.next_startup_packet()
    assert ei.value.sqlstate == "08P01" and str(length) in ei.value.message


@pytest.mark.parametrize("length", [8, MAX_STARTUP_PACKET])
def test_startup_length_bounds_allowed(length):
    assert MAX_STARTUP_PACKET == 10_000
    sc = FrameScanner()
    sc.feed(struct.pack("!i", length) + b"\0" * (length - 5))
    assert sc.next_startup_packet() is NEED_DATA
    sc.feed(b"\0")
    assert sc.next_startup_packet() == (4, length)


def test_startup_cap_independent_of_message_limit():
    sc = FrameScanner(max_message_size=1024)
    sc.feed(struct.pack("!i", 5000))
    assert sc.next_startup_packet() is NEED_DATA


def test_startup_then_typed_frames():
    sc = FrameScanner()
    pkt = encode.startup_message({"user": "u"})
    sc.feed(pkt + encode.password_message(b"tok\0") + encode.query("SELECT 1"))
    assert sc.next_startup_packet() == (4, len(pkt))
    m1 = sc.next_frame()
    assert m1[0] == ord("p") and body_of(sc, m1) == b"tok\0"
    m2 = sc.next_frame()
    assert m2[0] == ord("Q") and body_of(sc, m2) == b"SELECT 1\0"

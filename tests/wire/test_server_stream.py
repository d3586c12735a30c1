"""ServerStream: header-only scanning of the server stream, in any chunking.

What users rely on: every byte the server sends reaches the client unchanged
(except an ErrorResponse pgwarden rewrites), whatever the TCP chunking, and
the transaction status pgwarden tracks is the last ReadyForQuery's.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import encode
from proxy.wire.errors import ServerProtocolError
from proxy.wire.server_stream import ServerStream

MARK = "pgwarden_mark"
DENIAL = encode.error_response("42501", "denied")

message = st.one_of(
    st.binary(max_size=300).map(lambda b: encode.message(b"D", b)),
    st.sampled_from([b"I", b"T", b"E"]).map(encode.ready_for_query),
    st.sampled_from([f'syntax error at or near "{MARK}"', "division by zero"]).map(
        lambda m: encode.error_response("42601", m)),
    st.just(encode.message(b"C", b"SELECT 1\x00")),
)


def rewrite(body: bytes):
    return DENIAL if MARK.encode() in body else None


def feed_in_chunks(stream: ServerStream, data: bytes, cuts: list[int]) -> bytes:
    out, i = b"", 0
    for k in cuts:
        out += stream.feed(data[i:i + k])
        i += k
    return out + stream.feed(data[i:])


@settings(max_examples=300, deadline=None)
@given(st.lists(message, max_size=40), st.lists(st.integers(1, 64), max_size=200), st.booleans())
def test_bytes_pass_through_in_any_chunking(msgs, cuts, hook):
    data = b"".join(msgs)
    s = ServerStream(rewrite if hook else None)
    out = feed_in_chunks(s, data, cuts)
    if hook:
        expected = b"".join(DENIAL if m[:1] == b"E" and MARK.encode() in m else m for m in msgs)
    else:
        expected = data
    assert out == expected
    statuses = [m[5:6] for m in msgs if m[:1] == b"Z"]
    assert s.ready_count == len(statuses)
    assert s.txn_status == (statuses[-1] if statuses else b"I")


def test_untouched_chunk_is_forwarded_as_is():
    chunk = encode.message(b"D", b"x" * 100) + encode.ready_for_query(b"T")
    s = ServerStream(None)
    assert s.feed(chunk) is chunk
    assert s.txn_status == b"T"


def test_invalid_length_is_the_servers_fault():
    with pytest.raises(ServerProtocolError):
        ServerStream(None).feed(b"D\x00\x00\x00\x02")


watched_message = st.one_of(
    message,
    st.binary(max_size=200).map(lambda b: encode.message(b"d", b)),
    st.sampled_from([b"INSERT 0 3\x00", b"COPY 10\x00", b"UPDATE 0\x00"]).map(lambda t: encode.message(b"C", t)),
    st.sampled_from([b"I", b"s", b"G", b"H"]).map(lambda t: encode.message(t, b"\x00\x00\x00" if t in b"GH" else b"")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(watched_message, max_size=40), st.lists(st.integers(1, 64), max_size=200), st.booleans())
def test_message_hook_sees_every_watched_message_whole_in_any_chunking(msgs, cuts, rewrite_on):
    """The recording's view: each statement-ending message once, whole, in order; CopyData counted."""
    seen: list[tuple[int, bytes]] = []
    data = b"".join(msgs)
    s = ServerStream(rewrite if rewrite_on else None, lambda t, body: seen.append((t, body)))
    out = feed_in_chunks(s, data, cuts)
    if rewrite_on:
        assert out == b"".join(DENIAL if m[:1] == b"E" and MARK.encode() in m else m for m in msgs)
    else:
        assert out == data
    shown = [DENIAL if rewrite_on and m[:1] == b"E" and MARK.encode() in m else m for m in msgs]
    assert seen == [(m[0], m[5:]) for m in shown if m[:1] in b"CIsEGHWZ" and len(m[:1]) == 1]
    assert s.copy_bytes == sum(len(m) - 5 for m in msgs if m[:1] == b"d")
    assert s.at_boundary


def test_no_message_hook_no_copy_count():
    s = ServerStream(None)
    s.feed(encode.message(b"d", b"abc") + encode.message(b"C", b"COPY 1\x00"))
    assert s.copy_bytes == 0

"""ServerStream: header-only scanning of the server stream, in any chunking.

What users rely on: every byte the server sends reaches the client unchanged
(except an ErrorResponse pgwarden rewrites), whatever the TCP chunking, and
the transaction status pgwarden tracks is the last ReadyForQuery's.

Every test runs once per header walk: the pure-Python reference
(``skip_messages_py``, and feed's own loop body for the watched messages)
and the compiled one (``proxy.wire._scan``'s skip and walk_server) when it
was built.  The compiled delivery walk has its own differential tests in
test_walk_server.py.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import encode, server_stream
from proxy.wire.errors import ServerProtocolError
from proxy.wire.server_stream import ServerStream, skip_messages_c, skip_messages_py, walk_server_c

WALKS = [pytest.param((skip_messages_py, None), id="python")]
if skip_messages_c is not None:
    WALKS.append(pytest.param((skip_messages_c, walk_server_c), id="c"))


@pytest.fixture(autouse=True, scope="module", params=WALKS)
def walk(request):
    """Run the module's tests with each header walk (module scope: hypothesis-friendly); yields the
    skip walk."""
    saved = server_stream.skip_messages, server_stream.walk_server
    server_stream.skip_messages, server_stream.walk_server = request.param
    yield request.param[0]
    server_stream.skip_messages, server_stream.walk_server = saved

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


# --------------------------------------------------------------------------- the walk itself


def test_walk_stops_where_python_must_look(walk):
    stop = server_stream._STOP[0]                       # ReadyForQuery only
    rows = encode.message(b"D", b"x" * 10) * 3
    ready = encode.ready_for_query(b"I")
    data = rows + ready + rows
    assert walk(data, 0, stop, False) == (len(rows), 0)
    assert walk(data, len(rows) + len(ready), stop, False) == (len(data), 0)
    assert walk(data[:-3], 0, stop, False) == (len(rows), 0)
    cut = len(rows) + len(ready) + 2 * 15 + 2           # a header split in the last row
    assert walk(data[:cut], len(rows) + len(ready), stop, False) == (cut - 2, 0)
    assert walk(b"D\x00\x00\x00\x02rest", 0, stop, False) == (0, 0)   # invalid length: Python raises
    copies = encode.message(b"d", b"abc") + encode.message(b"d", b"") + encode.message(b"d", b"z" * 100)
    assert walk(copies, 0, stop, True) == (len(copies), 103)
    assert walk(copies, 0, stop, False) == (len(copies), 0)
    assert walk(bytearray(rows), 0, stop, False) == (len(rows), 0)
    assert walk(memoryview(rows), 0, stop, False) == (len(rows), 0)


@pytest.mark.skipif(skip_messages_c is None, reason="the C extension was not built")
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 410), st.binary(min_size=256, max_size=256), st.booleans())
def test_compiled_walk_equals_the_reference_on_any_bytes(data, pos, stop, count_copy):
    pos = min(pos, len(data))
    assert skip_messages_c(data, pos, stop, count_copy) == skip_messages_py(data, pos, stop, count_copy)


@pytest.mark.skipif(skip_messages_c is None, reason="the C extension was not built")
@settings(max_examples=200, deadline=None)
@given(st.lists(watched_message, max_size=60), st.integers(0, 3), st.booleans())
def test_compiled_walk_equals_the_reference_on_streams(msgs, which, count_copy):
    data = b"".join(msgs)
    stop = server_stream._STOP[which]
    pos = 0
    while pos < len(data):
        got = skip_messages_c(data, pos, stop, count_copy)
        assert got == skip_messages_py(data, pos, stop, count_copy)
        pos = got[0] + 1 if got[0] == pos else got[0]


def test_compiled_walk_rejects_bad_arguments():
    if skip_messages_c is None:
        pytest.skip("the C extension was not built")
    with pytest.raises(ValueError):
        skip_messages_c(b"", 0, b"short", False)
    with pytest.raises(ValueError):
        skip_messages_c(b"", -1, bytes(256), False)
    with pytest.raises(TypeError):
        skip_messages_c(b"", 0, bytes(256))


def test_scanner_impl_is_reported():
    assert server_stream.SCANNER_IMPL == ("c" if skip_messages_c is not None else "python")


@settings(max_examples=200, deadline=None)
@given(st.lists(watched_message, max_size=30), st.lists(st.integers(1, 64), max_size=100), st.booleans())
def test_watch_rows_shows_data_rows_only_while_on(msgs, cuts, hold_errors):
    """The hook turns row watching off after the first DataRow and on again at the next
    CommandComplete: it sees exactly the first DataRow after each (re)start, whatever the chunking,
    also when ErrorResponses are held for the rewrite hook (the hook runs on their release)."""
    seen: list[tuple[int, bytes]] = []
    s = ServerStream((lambda body: None) if hold_errors else None, None)

    def hook(t, body):
        seen.append((t, body))
        s.watch_rows = t != ord("D")
    s.on_message = hook
    s.watch_rows = True
    data = b"".join(msgs)
    assert feed_in_chunks(s, data, cuts) == data
    expected, on = [], True
    for m in msgs:
        t = m[0]
        if t == ord("D"):
            if on:
                expected.append((t, m[5:]))
                on = False
        elif m[:1] in (b"C", b"I", b"s", b"E", b"G", b"H", b"W", b"Z"):
            expected.append((t, m[5:]))
            on = True
    assert seen == expected

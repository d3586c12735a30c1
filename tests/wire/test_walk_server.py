"""walk_server: the compiled walk that delivers watched messages to ServerStream's message hook.

What the recording relies on: the walk is only an accelerator.  With the
compiled ``proxy.wire._scan.walk_server`` a stream with a message hook is
exactly what it is with ``server_stream.walk_server = None`` (skip_messages
and feed's own loop body, the reference): the same feed outputs (value and
type), the same exceptions, the same hook calls with the same arguments,
the same stream state seen from inside each hook call (ready_count,
txn_status, copy_bytes, watch_rows), and the same final state -- in any
chunking, whatever the hooks do to the stream (toggle watch_rows, set or
clear on_error, replace or clear on_message, raise).

The direct tests pin the walk's contract: what it delivers and where it
stops, argument checks, memory.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire import encode, server_stream
from proxy.wire.server_stream import MAX_ERROR_SIZE, WATCHED, ServerStream, skip_messages_py, walk_server_c
from tests.wire.test_walk_client import assert_no_growth

needs_c = pytest.mark.skipif(walk_server_c is None, reason="the C extension was not built")

MARK = "pgwarden_mark"
DENIAL = encode.error_response("42501", "denied")
ALL_STOP = b"\x01" * 256
NO_STOP = bytes(256)


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def bad_length(t: bytes, length: int, tail: bytes = b"\x00" * 6) -> bytes:
    return t + struct.pack("!i", length) + tail


PGBENCH_RESPONSE = msg(b"2") + msg(b"D", struct.pack("!hi", 1, 4) + b"1234") + msg(b"C", b"SELECT 1\x00") + msg(
    b"Z", b"I")

# Large enough to cross MAX_ERROR_SIZE; built once.
AT_LIMIT = msg(b"C", b"x" * (MAX_ERROR_SIZE - 4))
OVER_LIMIT = msg(b"C", b"x" * (MAX_ERROR_SIZE - 3))
OVER_LIMIT_Z = msg(b"Z", b"T" * (MAX_ERROR_SIZE - 3))

server_message = st.one_of(
    st.binary(max_size=40).map(lambda b: msg(b"D", b)),
    st.binary(max_size=40).map(lambda b: msg(b"d", b)),
    st.sampled_from([b"I", b"T", b"E"]).map(encode.ready_for_query),
    st.sampled_from([b"I", b"T", b"E"]).map(encode.ready_for_query),
    st.sampled_from([b"", b"TT", b"I\x00x"]).map(lambda b: msg(b"Z", b)),         # odd ReadyForQuery bodies
    st.sampled_from([f'syntax error at or near "{MARK}"', "division by zero"]).map(
        lambda m: encode.error_response("42601", m)),
    st.sampled_from([b"SELECT 1\x00", b"INSERT 0 3\x00", b"COPY 10\x00", b""]).map(lambda t: msg(b"C", t)),
    st.sampled_from([b"I", b"s", b"G", b"H", b"W"]).map(lambda t: msg(t, b"\x00\x00\x00" if t in b"GHW" else b"")),
    st.sampled_from([b"T", b"N", b"S", b"1", b"2", b"n", b"t", b"c", b"A", b"K"]).map(lambda t: msg(t, b"ab\x00")),
    st.tuples(st.integers(0, 255).map(lambda i: bytes([i])), st.binary(max_size=8)).map(lambda tb: msg(*tb)),
)
rare_message = st.one_of(
    st.tuples(st.sampled_from([b"C", b"Z", b"E", b"D", b"d", b"T"]), st.sampled_from([-1, 0, 3])).map(
        lambda tl: bad_length(*tl)),
    st.tuples(st.sampled_from([b"C", b"Z", b"E", b"D"]), st.just(MAX_ERROR_SIZE + 1)).map(
        lambda tl: bad_length(*tl)),                                       # oversized, never whole
    st.sampled_from([AT_LIMIT, OVER_LIMIT, OVER_LIMIT_Z]),
)

ACTIONS = ["record", "record", "record", "observe", "observe", "watch_rows", "raise", "on_error", "on_message",
           "clear_on_message", "reset_copy"]


def rewrite(body: bytes):
    return DENIAL if MARK.encode() in body else None


def keep(body: bytes):
    return None


ON_ERRORS = {"none": None, "rewrite": rewrite, "keep": keep}


@st.composite
def scenario(draw):
    msgs = draw(st.lists(server_message, max_size=30))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        msgs.insert(draw(st.integers(0, len(msgs))), draw(rare_message))
    data = b"".join(msgs)
    if draw(st.booleans()) and data:                          # a truncated tail
        extra = draw(server_message)
        data += extra[:draw(st.integers(1, max(len(extra) - 1, 1)))]
    small = [c for c in draw(st.lists(st.integers(1, 64), max_size=12))]
    cuts, at = [], 0
    for c in small:
        at += c
        if at < len(data):
            cuts.append(at)
    if data and draw(st.booleans()):                          # a cut at each message boundary too
        b = 0
        for m in msgs:
            b += len(m)
            if 0 < b < len(data):
                cuts.append(b)
    cuts = sorted(set(cuts))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    kinds = draw(st.lists(st.sampled_from(["bytes"] * 6 + ["bytearray", "memoryview"]), min_size=1, max_size=4))
    actions = draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=8))
    return dict(chunks=chunks, kinds=kinds, actions=actions, on_error=draw(st.sampled_from(list(ON_ERRORS))),
                watch_rows=draw(st.booleans()))


def seen(x):
    return (type(x).__name__, bytes(x) if isinstance(x, (bytes, bytearray, memoryview)) else x)


def state(s: ServerStream) -> dict:
    return dict(remaining=s.remaining, header=seen(s.header), cur_type=s.cur_type,
                held=None if s.held is None else seen(s.held), txn_status=seen(s.txn_status),
                ready_count=s.ready_count, side=None if s.side is None else seen(s.side),
                copy_bytes=s.copy_bytes, watch_rows=s.watch_rows, table=s._table,
                on_error=getattr(s.on_error, "__name__", None), on_message=getattr(s.on_message, "tag", None),
                at_boundary=s.at_boundary)


class Hook:
    """A message hook that logs its calls and does the scenario's next action to the stream."""

    def __init__(self, tag: str, stream: ServerStream, log: list, actions: list, counter: list) -> None:
        self.tag, self.stream, self.log, self.actions, self.counter = tag, stream, log, actions, counter

    def __call__(self, mtype, body):
        i = self.counter[0]
        self.counter[0] += 1
        s = self.stream
        action = self.actions[i % len(self.actions)]
        self.log.append((self.tag, i, type(mtype).__name__, mtype, seen(body), action))
        if action == "observe":
            self.log.append(("saw", s.ready_count, seen(s.txn_status), s.copy_bytes, s.watch_rows))
        elif action == "watch_rows":
            s.watch_rows = not s.watch_rows
        elif action == "raise":
            raise RuntimeError(f"hook failed at call {i}")
        elif action == "on_error":
            s.on_error = None if s.on_error is not None else rewrite
        elif action == "on_message":
            s.on_message = Hook(self.tag + "'", s, self.log, self.actions, self.counter)
        elif action == "clear_on_message":
            s.on_message = None
        elif action == "reset_copy":
            s.copy_bytes = 0


def run(walk, case) -> dict:
    """Feed the scenario's chunks with server_stream.walk_server = walk; everything observable."""
    saved = server_stream.walk_server
    server_stream.walk_server = walk
    try:
        log: list = []
        s = ServerStream(ON_ERRORS[case["on_error"]])
        s.on_message = Hook("h", s, log, case["actions"], [0])
        s.watch_rows = case["watch_rows"]
        outs = []
        for i, chunk in enumerate(case["chunks"]):
            kind = case["kinds"][i % len(case["kinds"])]
            arg = bytearray(chunk) if kind == "bytearray" else memoryview(chunk) if kind == "memoryview" else chunk
            try:
                outs.append(("out", seen(s.feed(arg))))
            except Exception as e:
                outs.append(("raised", type(e).__name__, str(e)))
            outs.append(state(s))
        return dict(outs=outs, log=log)
    finally:
        server_stream.walk_server = saved


@needs_c
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario())
def test_the_walk_changes_nothing_observable(case):
    got = run(walk_server_c, case)
    assert got == run(None, case)


@needs_c
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 9, 13, 1000])
@pytest.mark.parametrize("actions", [["record"], ["observe"], ["watch_rows", "observe"], ["observe", "raise"],
                                     ["on_error", "observe"], ["observe", "on_message", "record", "clear_on_message"],
                                     ["reset_copy", "observe"]])
def test_pgbench_and_copy_responses_in_fixed_chunkings(size, actions):
    data = (PGBENCH_RESPONSE * 3 + msg(b"H", b"\x00\x00\x00") + msg(b"d", b"abc") * 3 + msg(b"c")
            + msg(b"C", b"COPY 3\x00") + encode.error_response("42601", MARK) + encode.ready_for_query(b"E")
            + PGBENCH_RESPONSE)
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    for on_error in ON_ERRORS:
        for watch in (False, True):
            case = dict(chunks=chunks, kinds=["bytes"], actions=actions, on_error=on_error, watch_rows=watch)
            got = run(walk_server_c, case)
            assert got == run(None, case)
            if "raise" not in actions and "clear_on_message" not in actions:
                assert not any(o[0] == "raised" for o in got["outs"] if isinstance(o, tuple))


# ---------------------------------------------------------------- feed uses it

def test_deliver_impl_is_reported():
    assert server_stream.DELIVER_IMPL == ("c" if walk_server_c is not None else "python")
    assert server_stream.walk_server is walk_server_c


@needs_c
def test_feed_walks_with_the_compiled_walk_when_a_hook_is_set(monkeypatch):
    """Fails if the extension is built but feed does not use it: one walk call for a whole pgbench
    response, skip_messages never called, and the hook gets the CommandComplete and ReadyForQuery."""
    calls = []

    def spy(*args):
        calls.append(args[2])
        return walk_server_c(*args)

    def no_skip(*args):
        raise AssertionError("feed used skip_messages with a hook set")

    monkeypatch.setattr(server_stream, "walk_server", spy)
    monkeypatch.setattr(server_stream, "skip_messages", no_skip)
    got = []
    s = ServerStream(None, lambda t, b: got.append((t, b)))
    assert s.feed(PGBENCH_RESPONSE * 2) == PGBENCH_RESPONSE * 2
    assert calls == [0]
    assert got == [(ord("C"), b"SELECT 1\x00"), (ord("Z"), b"I")] * 2
    assert (s.ready_count, s.txn_status) == (2, b"I")
    # Without a hook, feed walks with skip as before.
    monkeypatch.setattr(server_stream, "skip_messages", server_stream.skip_messages_c)
    calls.clear()
    ServerStream(None).feed(PGBENCH_RESPONSE)
    assert calls == []


# ---------------------------------------------------------------- the walk itself

class Recorder:
    def __init__(self, stream=None, fail_at=None):
        self.calls = []
        self.stream = stream
        self.fail_at = fail_at

    def __call__(self, mtype, body):
        s = self.stream
        self.calls.append((mtype, body) if s is None else (mtype, body, s.ready_count, s.txn_status, s.copy_bytes))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError("hook failed")


def stream_with(hook_cls=Recorder, on_error=None, watch_rows=False):
    s = ServerStream(on_error)
    h = hook_cls(s)
    s.on_message = h
    s.watch_rows = watch_rows
    return s, h


@needs_c
def test_delivers_a_pgbench_response_in_one_call():
    s, h = stream_with()
    data = b"junk" + PGBENCH_RESPONSE + msg(b"d", b"abcd") + msg(b"C", b"COPY 1\x00")
    assert walk_server_c(s, data, 4, s._table, h) == len(data)
    assert h.calls == [(ord("C"), b"SELECT 1\x00", 0, b"I", 0), (ord("Z"), b"I", 1, b"I", 0),
                       (ord("C"), b"COPY 1\x00", 1, b"I", 4)]
    assert (s.ready_count, s.txn_status, s.copy_bytes) == (1, b"I", 4)


@needs_c
def test_delivers_exactly_the_watched_types():
    for t in range(256):
        s, h = stream_with()
        data = msg(bytes([t]), b"body") + b"S\x00"                    # the table is the stream's after a call
        got = walk_server_c(s, data, 0, ALL_STOP, h)
        if t in WATCHED:
            assert got == 9 and h.calls == [(t, b"body", int(t == ord("Z")), b"b" if t == ord("Z") else b"I", 0)]
        else:
            assert got == 0 and h.calls == [], t
    assert ord("D") not in WATCHED


@needs_c
def test_an_error_response_is_python_s_while_on_error_is_set():
    err = encode.error_response("42601", "x")
    s, h = stream_with(on_error=rewrite)
    assert walk_server_c(s, msg(b"C", b"A\x00") + err, 0, server_stream._STOP[2], h) == 7
    assert len(h.calls) == 1
    s.on_error = None
    assert walk_server_c(s, err, 0, server_stream._STOP[2], h) == len(err)
    assert h.calls[-1][:2] == (ord("E"), err[5:])


@needs_c
def test_stops_where_python_must_look():
    s, h = stream_with()
    table = s._table
    cc = msg(b"C", b"SELECT 1\x00")
    for tail in [bad_length(b"C", 3), bad_length(b"D", -1), bad_length(b"Z", 0), cc[:-1], b"C\x00\x00\x00",
                 b"Z", b"", OVER_LIMIT, bad_length(b"E", MAX_ERROR_SIZE + 1)]:
        h.calls.clear()
        assert walk_server_c(s, cc + tail, 0, table, h) == len(cc), tail[:8]
        assert len(h.calls) == 1
    assert walk_server_c(s, AT_LIMIT, 0, table, h) == len(AT_LIMIT)
    assert walk_server_c(s, cc, 50, table, h) == 50                        # past the end: nothing
    s.watch_rows = True                                                    # a DataRow: row capture is Python's
    assert walk_server_c(s, cc + msg(b"D", b"r") + cc, 0, s._table, h) == len(cc)


@needs_c
def test_ready_for_query_state_is_set_before_the_hook_runs():
    s, h = stream_with()
    data = msg(b"d", b"xy") + encode.ready_for_query(b"T") + msg(b"d", b"z") + msg(b"Z") + b"E"
    assert walk_server_c(s, data, 0, s._table, h) == len(data) - 1
    # A ReadyForQuery with no body takes the next byte as its status, as feed's loop body does.
    assert h.calls == [(ord("Z"), b"T", 1, b"T", 2), (ord("Z"), b"", 2, b"E", 3)]


@needs_c
def test_bytearray_and_memoryview_data_are_left_to_python():
    s, h = stream_with()
    data = msg(b"d", b"abc") + PGBENCH_RESPONSE
    for arg in (bytearray(data), memoryview(data)):
        assert walk_server_c(s, arg, 0, s._table, h) == len(msg(b"d", b"abc")) + 5 + 15       # at the CommandComplete
        assert h.calls == []
    assert s.copy_bytes == 6 and s.ready_count == 0


@needs_c
def test_the_table_is_read_again_after_each_call():
    s = ServerStream(None)
    seen_calls = []

    def hook(t, body):
        seen_calls.append(t)
        s.watch_rows = True                 # the next DataRow must stop the walk
    s.on_message = hook
    data = msg(b"D", b"a") + msg(b"C", b"x\x00") + msg(b"D", b"b")
    assert walk_server_c(s, data, 0, s._table, hook) == 13
    assert seen_calls == [ord("C")]
    # Replaced by an unusable table: the walk raises as skip would.
    s2, h = stream_with()

    class Bad(Recorder):
        def __call__(self, mtype, body):
            super().__call__(mtype, body)
            object.__setattr__(s2, "_table", b"short")
    s2.on_message = bad = Bad(s2)
    with pytest.raises(ValueError):
        walk_server_c(s2, msg(b"C", b"x\x00") * 2, 0, server_stream._STOP[2], bad)
    assert len(bad.calls) == 1


@needs_c
def test_a_hook_exception_propagates_with_the_state_reached():
    """Documented state: copy_bytes, ready_count and txn_status updated up to the message whose
    hook call raised; the offset is lost (feed raises it too)."""
    s = ServerStream(None)
    h = Recorder(s, fail_at=2)
    s.on_message = h
    data = msg(b"C", b"A\x00") + msg(b"d", b"abc") + encode.ready_for_query(b"T") + msg(b"d", b"zz") + msg(b"C", b"")
    with pytest.raises(RuntimeError, match="hook failed"):
        walk_server_c(s, data, 0, s._table, h)
    assert (s.ready_count, s.txn_status, s.copy_bytes) == (1, b"T", 3)
    assert len(h.calls) == 2


@needs_c
def test_argument_errors():
    s, h = stream_with()
    with pytest.raises(TypeError):
        walk_server_c(s, b"", 0, NO_STOP)
    with pytest.raises(TypeError):
        walk_server_c(s, "not a buffer", 0, NO_STOP, h)
    with pytest.raises(TypeError):
        walk_server_c(s, b"", 0, "x" * 256, h)
    with pytest.raises(ValueError):
        walk_server_c(s, b"", 0, bytes(255), h)
    with pytest.raises(ValueError):
        walk_server_c(s, b"", -1, NO_STOP, h)
    with pytest.raises(TypeError):
        walk_server_c(s, b"", 0.0, NO_STOP, h)
    with pytest.raises(TypeError):                          # a hook that is not callable
        walk_server_c(s, msg(b"C"), 0, ALL_STOP, 42)
    with pytest.raises(AttributeError):                     # not a ServerStream
        walk_server_c(object(), msg(b"C"), 0, ALL_STOP, h)
    # No hook: skip's walk, no copy count, nothing delivered.
    data = msg(b"d", b"abc") + msg(b"C")
    assert walk_server_c(s, data, 0, NO_STOP, None) == len(data) and s.copy_bytes == 0
    assert walk_server_c(s, data, 0, ALL_STOP, None) == 0
    buf = bytearray(data)
    assert walk_server_c(s, buf, 0, bytearray(256), h) == len(data)
    buf += b"x"                                             # every path above released the export
    del buf[:1]


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 310), st.binary(min_size=256, max_size=256))
def test_steps_as_skip_does_where_it_delivers_nothing(data, pos, stop):
    """With no hook, or with data not bytes, the walk is skip's (no copy count without a hook)."""
    pos = min(pos, len(data))
    s, h = stream_with()
    assert walk_server_c(s, data, pos, stop, None) == skip_messages_py(data, pos, stop, False)[0]
    assert walk_server_c(s, bytearray(data), pos, stop, h) == skip_messages_py(data, pos, stop, True)[0]
    assert s.copy_bytes == skip_messages_py(data, pos, stop, True)[1] and h.calls == []


@needs_c
def test_does_not_leak():
    class Quiet:
        def __call__(self, mtype, body):
            pass

    class Failing:
        def __call__(self, mtype, body):
            raise RuntimeError("no")

    cases = [(PGBENCH_RESPONSE * 2 + msg(b"d", b"abc") + encode.error_response("42601", "x"), Quiet(), None),
             (PGBENCH_RESPONSE, Failing(), None),
             (PGBENCH_RESPONSE + encode.error_response("42601", "x"), Quiet(), rewrite),
             (msg(b"C", b"x\x00") + msg(b"D", b"r"), "watch", None)]
    for data, hook, on_error in cases:
        s = ServerStream(on_error)
        if hook == "watch":
            def hook(t, b, s=s):
                s.watch_rows = not s.watch_rows
        s.on_message = hook

        def once():
            s.watch_rows = False
            try:
                walk_server_c(s, data, 0, s._table, hook)
            except RuntimeError:
                pass
            s.ready_count = s.copy_bytes = 0
        assert_no_growth(once, data)

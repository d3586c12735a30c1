"""walk_client: the compiled walk over the client's messages in ClientConn._relay.

What the relay relies on: the walk is only an accelerator.  With the compiled
``proxy.wire._scan.walk_client`` a session is exactly what it is with
``framing.walk_client_noop`` (which walks nothing, so _relay's own
per-message dispatch, the reference, does everything): the same bytes
forwarded upstream in the same writes, the same sync_points, the same
errors (type, message, SQLSTATE) and what the client is told of them, the
same policy calls and denials, and the same calls, with the same argument
values and types, to the statement tracker -- in any chunking.

The differential tests drive a real ClientConn (built without a server,
fake transports) twice per example and compare everything observable.
The direct tests pin the walk's contract: where it stops, what it counts,
what it asks of the tracker, its argument checks, memory and buffer safety.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.net import client_conn
from proxy.net.client_conn import RELAY, ClientConn
from proxy.session import track
from proxy.session.enforce import Enforcer, Verdict
from proxy.wire import framing
from proxy.wire.errors import ClientProtocolError
from proxy.wire.framing import FrameScanner, walk_client_c, walk_client_noop
from proxy.wire.server_stream import ServerStream
from tests.wire.test_decode_bind import bind_body, malformed, well_formed

needs_c = pytest.mark.skipif(walk_client_c is None, reason="the C extension was not built")

NO_STOP = bytes(256)


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def cstr(s: str | bytes) -> bytes:
    return (s if isinstance(s, bytes) else s.encode("utf-8")) + b"\x00"


PGBENCH_MSGS = [msg(b"B", bind_body("", "P0_1", [b"12345"], [], [0])), msg(b"E", b"\x00\x00\x00\x00\x00"), msg(b"S")]
PGBENCH_TX = b"".join(PGBENCH_MSGS)        # one pgbench -M prepared transaction, as libpq sends it


def assert_no_growth(once, label) -> None:
    """Call once() 1,000 times to warm up, then 20,000 more: traced memory must not grow (a leak per
    call would show as at least 20,000 objects)."""
    for _ in range(1000):
        once()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20000):
            once()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096, (label, grown)


# ---------------------------------------------------------------- fakes

class RecordingTracker:
    """Logs every call with its arguments and their exact types (True is not 1 here)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list = []
        self.fail_at = fail_at

    def _log(self, *entry) -> None:
        self.calls.append(entry)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError(f"tracker failed at call {self.fail_at}")

    def query(self, text, verdict):
        self._log("query", type(text), text, verdict)

    def parse(self, name, text, verdict, param_types=()):
        self._log("parse", type(name), name, text, verdict, param_types)

    def bind(self, portal, statement, params):
        typed = None if params is None else (type(params), [(type(v), v, type(b), b) for v, b in params])
        self._log("bind", type(portal), portal, type(statement), statement, typed)

    def execute(self, portal):
        self._log("execute", type(portal), portal)

    def sync(self):
        self._log("sync")

    def copy_data(self, nbytes):
        self._log("copy_data", type(nbytes), nbytes)

    def close(self, kind, name):
        self._log("close", kind, name)

    def function_call(self, verdict):
        self._log("function_call", verdict)


class RealTracker:
    """A real statement tracker (deterministic clock) whose emits are logged as snapshots."""

    def __init__(self, cls) -> None:
        self.log: list = []
        self.now = 0.0
        self.tracker = cls(self.emit, clock=self.clock, capture_params=True)

    def clock(self) -> float:
        self.now += 1.0
        return self.now

    def emit(self, statement) -> None:
        self.log.append(("emit", track._snapshot(statement)))

    def finish(self, sync_points: int) -> list:
        """Answer everything (a canned reply per sync point) and return all it emitted and holds."""
        on = self.tracker.on_server
        for _ in range(sync_points + 1):
            on(ord("C"), b"SELECT 1\x00")
            on(ord("Z"), b"I")
        return self.log + [("pending", track._snapshot(s)) for s in self.tracker.pending()]


class Transport:
    def __init__(self) -> None:
        self.writes: list = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        self.writes.append("close")

    def abort(self) -> None:
        self.writes.append("abort")

    def pause_reading(self) -> None:
        self.writes.append("pause")

    def resume_reading(self) -> None:
        self.writes.append("resume")


class Log:
    def __init__(self) -> None:
        self.events: list = []

    def bind(self, **kw):
        return self

    def info(self, event, **kw):
        self.events.append(("info", event, kw))

    def warning(self, event, **kw):
        self.events.append(("warning", event, kw))

    def exception(self, event, **kw):
        e = sys.exc_info()[1]
        self.events.append(("exception", event, kw, type(e).__name__, str(e)))


ALLOWED = Verdict(True, "", "read.select", "read")


class Gate:
    """Allows everything but texts starting "deny"; a "slow" text waits for one on_verdict."""

    def __init__(self) -> None:
        self.judged: list = []
        self.pending: set = set()

    def judge(self, text, session):
        self.judged.append(text)
        if text.startswith("slow") and text not in self.pending:
            self.pending.add(text)
            return None
        if text.startswith("deny"):
            return Verdict(False, f"pgwarden: {text} is denied [rule ddl.x]", "ddl.x", "ddl")
        return ALLOWED

    def deny_function_call(self, session):
        return True


class Conn(ClientConn):
    """A ClientConn whose _relay also records the exceptions it raises (before the callers turn
    them into the client's FATAL)."""

    __slots__ = ("errors",)

    def _relay(self):
        try:
            super()._relay()
        except Exception as e:
            self.errors.append((type(e).__name__, str(e), getattr(e, "sqlstate", None)))
            raise


def make_conn(tracker, max_size: int = 1 << 20) -> Conn:
    c = Conn.__new__(Conn)
    c.errors = []
    c.phase = RELAY
    c.tls = None
    c._seen_first_byte = True
    c.scanner = FrameScanner(max_size, ClientProtocolError)
    c.server = SimpleNamespace(timing=False, gate=Gate(), forget=lambda conn: None)
    c.waiting = None
    c.enforcer = Enforcer()
    c.enforcer.nonce = "0" * 16                # the substitutes must be comparable across runs
    c.tracker = tracker
    c.sync_points = 0
    c.up_transport = Transport()
    c.transport = Transport()
    c.closing = False
    c.stream = ServerStream(c.enforcer.rewrite_error)
    c.pending_notices = []
    c.recorder = None
    c.sql_prepared = {}
    c.log = Log()
    c.startup_timer = c.timer = c.connect_task = None
    c.live = c.grant_recorded = False
    c.reading_paused = False
    c.up_pid = 0
    c.query_walk = None
    return c


def new_tracker(kind: str):
    if kind == "none":
        return None, None
    if kind == "recording":
        t = RecordingTracker()
        return t, t
    holder = RealTracker(track.StatementTracker if kind == "real" else track.StatementTrackerPy)
    return holder.tracker, holder


def run_session(walk, chunks: list[bytes], kind: str, max_size: int, resolve: list[bool]):
    """Feed chunks through data_received with framing.walk_client = walk; everything observable."""
    saved = framing.walk_client
    framing.walk_client = walk
    try:
        tracker, holder = new_tracker(kind)
        c = make_conn(tracker, max_size)
        up = c.up_transport                      # _teardown drops the attribute
        for i, chunk in enumerate(chunks):
            c.data_received(chunk)
            if c.waiting is not None and (resolve[i % len(resolve)] if resolve else True):
                c.on_verdict(c.waiting)
        if c.waiting is not None:
            c.on_verdict(c.waiting)
        seen = (None if holder is None else holder.calls if kind == "recording"
                else holder.finish(c.sync_points))
        return dict(
            upstream=up.writes, client=c.transport.writes, sync_points=c.sync_points, errors=c.errors,
            phase=c.phase, closing=c.closing, waiting=c.waiting, log=c.log.events,
            scanner=(bytes(c.scanner.buf), c.scanner.pos), judged=c.server.gate.judged,
            denied=dict(c.enforcer.denied_statements), seq=c.enforcer.seq, pending=list(c.enforcer.pending),
            prepared=dict(c.sql_prepared), tracker=seen)
    finally:
        framing.walk_client = saved


# ---------------------------------------------------------------- client messages

GOOD_NAMES = st.sampled_from(["", "", "p1", "s1", "é"])
ODD_NAMES = st.sampled_from([b"\xff", b"\xed\xa0\x80", b"a\x80", b"\xc3", "x" * 70])   # not UTF-8; long
NAMES = st.one_of(GOOD_NAMES, ODD_NAMES)
STMT_NAMES = st.sampled_from(["", "", "s1", "s1", "s2", "nope", "é"])
TEXTS = st.sampled_from(["SELECT 1", "SELECT $1", "SELECT $1", "deny DROP TABLE t", "slow SELECT 2", "deny x",
                         "slow deny y"])
VALUES = st.one_of(st.none(), st.binary(max_size=6), st.just(b"12345"), st.just("é".encode()),
                   st.binary(min_size=1100, max_size=1100))           # longer than a recorded parameter


def _formats(draw, params):
    fmt = draw(st.sampled_from(["none", "one", "each"]))
    return {"none": [], "one": [draw(st.integers(0, 1))], "each": [draw(st.integers(0, 1)) for _ in params]}[fmt]


@st.composite
def good_bind(draw):
    params = draw(st.lists(VALUES, max_size=4))
    results = draw(st.lists(st.integers(0, 1), max_size=3))
    return msg(b"B", bind_body(draw(GOOD_NAMES), draw(STMT_NAMES), params, _formats(draw, params), results))


@st.composite
def odd_bind(draw, how=st.sampled_from(["decoder", "broken"])):
    """lenient: what the C decoder declines and decode_bind_py decodes; decoder: test_decode_bind's
    well-formed and malformed bodies (any names); broken: what decode_bind_py raises on."""
    how = draw(how)
    if how == "decoder":
        return msg(b"B", draw(st.one_of(well_formed().map(lambda x: x[0]), malformed())))
    portal, stmt = draw(GOOD_NAMES if how == "lenient" else NAMES), draw(STMT_NAMES)
    params = draw(st.lists(VALUES, max_size=4))
    formats = _formats(draw, params)
    results = draw(st.lists(st.integers(0, 1), max_size=3))
    if how == "lenient":
        which = draw(st.sampled_from(["negative", "fmt_count", "fmt_code", "result_code", "no_results"]))
        if which == "negative":
            params = params + [draw(st.sampled_from([-2, -1000, -2**31]))]
            body = bind_body(portal, stmt, params, formats if len(formats) < 2 else formats + [0], results)
        elif which == "fmt_count":
            body = bind_body(portal, stmt, params, [0] * (len(params) + 2), results)
        elif which == "fmt_code":
            body = bind_body(portal, stmt, params, [draw(st.integers(2, 0xFFFF))], results)
        elif which == "result_code":
            body = bind_body(portal, stmt, params, formats, results + [7])
        else:
            body = bind_body(portal, stmt, params, formats)[:-2] + draw(st.binary(max_size=3))
        return msg(b"B", body)
    body = bind_body(portal, stmt, params, formats, results)
    cut = draw(st.integers(0, max(len(body) - 1, 0)))
    return msg(b"B", draw(st.sampled_from([body[:cut], b"", b"no-nul", body + b"\x00\x01"])))


good_execute = st.tuples(GOOD_NAMES, st.sampled_from([b"\x00\x00\x00\x00", b"\x00\x00\x00\x05", b""])).map(
    lambda nt: msg(b"E", cstr(nt[0]) + nt[1]))
odd_execute = st.one_of(
    st.tuples(NAMES, st.sampled_from([b"\x00\x00\x00\x00", b"", b"xx\x00"])).map(
        lambda nt: msg(b"E", cstr(nt[0]) + nt[1])),
    st.sampled_from([b"", b"no-nul", b"p1", b"\xff", b"\xff\x00"]).map(lambda b: msg(b"E", b)))


def bad_length(t: bytes, length: int) -> bytes:
    return t + struct.pack("!i", length) + b"\x00" * 8


needs_nothing = st.one_of(
    st.binary(max_size=3).map(lambda b: msg(b"S", b)),                      # a Sync with a body: not checked
    st.binary(max_size=40).map(lambda b: msg(b"d", b)),                     # CopyData
    st.binary(min_size=100, max_size=300).map(lambda b: msg(b"d", b)),      # over the smaller limits
    NAMES.map(lambda n: msg(b"D", b"S" + cstr(n))),
    st.binary(max_size=4).map(lambda b: msg(b"D", b)),
    st.just(msg(b"H")),
    st.just(msg(b"c")),
    st.sampled_from([b"oops", b"\xff", b""]).map(lambda m: msg(b"f", cstr(m))),
)

good_policy = st.one_of(
    TEXTS.map(lambda t: msg(b"Q", cstr(t))),
    st.tuples(STMT_NAMES, TEXTS).map(lambda nt: msg(b"P", cstr(nt[0]) + cstr(nt[1]) + b"\x00\x00")),
    STMT_NAMES.map(lambda n: msg(b"P", cstr(n) + cstr("SELECT $1") + b"\x00\x01\x00\x00\x00\x17")),
    st.tuples(st.sampled_from([b"S", b"P"]), STMT_NAMES).map(lambda kn: msg(b"C", kn[0] + cstr(kn[1]))),
    st.just(msg(b"F", b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00")),
    st.just(msg(b"p", cstr("token"))),                                      # in FRONTEND_TYPES: forwarded
)

odd = st.one_of(
    odd_bind(), odd_execute, odd_execute,
    st.just(msg(b"Q", b"no terminator")),
    st.just(msg(b"Q", cstr(b"SELECT '\xff'"))),
    st.just(msg(b"C", b"")),
    st.tuples(st.sampled_from([b"z", b"A", b"\x00", b"\xff"]), st.binary(max_size=4)).map(lambda tb: msg(*tb)),
    st.just(msg(b"X")),
    st.tuples(st.sampled_from([b"B", b"E", b"S", b"d", b"D", b"H", b"Q"]),
              st.sampled_from([-1, 0, 1, 3, 2**31 - 1, -2**31])).map(lambda tl: bad_length(*tl)),
)

# A run of extended-protocol messages as drivers send them (Parse, Bind, Describe, Execute, Sync).
bundle = st.tuples(STMT_NAMES, TEXTS, good_bind(), good_execute, st.booleans()).map(
    lambda x: (msg(b"P", cstr(x[0]) + cstr(x[1]) + b"\x00\x00") if x[4] else b"") + x[2]
    + msg(b"D", b"P\x00") + x[3] + msg(b"S"))

# What a client could send without breaking the session (the lenient Binds included) ...
client_message = st.one_of(good_bind(), good_bind(), good_execute, st.just(msg(b"S")), needs_nothing, good_policy,
                           bundle, bundle, st.just(PGBENCH_TX), odd_bind(st.just("lenient")))


@st.composite
def session(draw):
    msgs = draw(st.lists(client_message, max_size=40))
    for _ in range(draw(st.integers(0, 2))):                  # ... and up to two that end it (or not)
        msgs.insert(draw(st.integers(0, len(msgs))), draw(odd))
    data = b"".join(msgs)
    if draw(st.booleans()) and data:                          # a truncated tail
        extra = draw(client_message)
        data += extra[:draw(st.integers(1, max(len(extra) - 1, 1)))]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(data), 1)), max_size=8))))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)]) if b > a] or [b""]
    # Some limits at a message's length field, or one below it (only the latter is over the limit).
    limits = [1 << 20, 200, 64] + [len(m) - k for m in msgs[:3] for k in (1, 2)]
    max_size = draw(st.sampled_from(limits))
    resolve = draw(st.lists(st.booleans(), max_size=4))
    return chunks, max_size, resolve


TRACKERS = ["none", "recording", "real", "real-py"]


@needs_c
@pytest.mark.parametrize("kind", TRACKERS)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session())
def test_the_walk_changes_nothing_observable(kind, case):
    chunks, max_size, resolve = case
    got = run_session(walk_client_c, chunks, kind, max_size, resolve)
    want = run_session(walk_client_noop, chunks, kind, max_size, resolve)
    assert got == want


@needs_c
@pytest.mark.parametrize("kind", ["recording", "real"])
def test_pgbench_transactions_in_any_chunking(kind):
    data = (PGBENCH_TX * 3 + msg(b"P", cstr("s1") + cstr("deny x") + b"\x00\x00")
            + msg(b"B", bind_body("", "s1", [b"1"], [])) + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S"))
    for size in (1, 2, 3, 5, 7, len(data)):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        got = run_session(walk_client_c, chunks, kind, 1 << 20, [])
        assert got == run_session(walk_client_noop, chunks, kind, 1 << 20, [])
        assert got["sync_points"] == 4 and not got["errors"]


@needs_c
def test_a_denied_statement_puts_bind_back_in_pythons_hands():
    """A Bind of a statement whose Parse was denied is substituted, walked or not."""
    data = (msg(b"P", cstr("s1") + cstr("deny DROP TABLE t") + b"\x00\x00")
            + msg(b"B", bind_body("", "s1", [b"1"], [])) + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S"))
    got = run_session(walk_client_c, [data], "recording", 1 << 20, [])
    assert got == run_session(walk_client_noop, [data], "recording", 1 << 20, [])
    assert got["seq"] == 2                                   # the Parse and the Bind were replaced
    assert b"pgwarden_denied_" + b"0" * 16 + b"_2_b" in got["upstream"][0]


# ---------------------------------------------------------------- the walk itself

@needs_c
def test_walks_a_pgbench_transaction():
    t = RecordingTracker()
    buf = bytearray(b"junk" + PGBENCH_TX)
    assert walk_client_c(buf, 4, NO_STOP, 1 << 30, t) == (len(buf), 1)
    assert t.calls == [("bind", str, "", str, "P0_1", (list, [(bytes, b"12345", bool, False)])),
                       ("execute", str, ""), ("sync",)]
    assert walk_client_c(buf, 4, NO_STOP, 1 << 30, None) == (len(buf), 1)


@needs_c
def test_walks_what_needs_nothing_and_counts_syncs():
    t = RecordingTracker()
    data = (msg(b"D", b"P\x00") + msg(b"H") + msg(b"d", b"abc") + msg(b"c") + msg(b"f", b"x\x00") + msg(b"S")
            + msg(b"E", cstr("curseur_é") + b"\x00\x00\x00\x0a") + msg(b"S", b"odd") + msg(b"d"))
    assert walk_client_c(data, 0, NO_STOP, 1 << 30, t) == (len(data), 2)
    assert t.calls == [("copy_data", int, 3), ("sync",), ("execute", str, "curseur_é"), ("sync",),
                       ("copy_data", int, 0)]


@needs_c
@pytest.mark.parametrize("stop_at", [
    msg(b"Q", cstr("SELECT 1")), msg(b"P", b"\x00x\x00\x00\x00"), msg(b"C", b"S\x00"), msg(b"F", b"\x00" * 10),
    msg(b"X"), msg(b"p", cstr("token")), msg(b"z"), msg(b"\x00"), msg(b"\xff"), msg(b"A", b"x"),
], ids=lambda m: repr(m[:1]))
def test_stops_before_every_other_type(stop_at):
    head = msg(b"S") + msg(b"H")
    for tracker in (None, RecordingTracker()):
        assert walk_client_c(head + stop_at + msg(b"S"), 0, NO_STOP, 1 << 30, tracker) == (len(head), 1)


@needs_c
def test_stops_at_the_stop_table():
    msgs = [msg(b"S"), msg(b"D", b"S\x00"), msg(b"H"), msg(b"d", b"x"), msg(b"S"), msg(b"c"), msg(b"f", b"\x00"),
            *PGBENCH_MSGS]
    data = b"".join(msgs)
    for t in b"BESdDHcf":
        table = bytes(x == t for x in range(256))
        first = next(i for i, m in enumerate(msgs) if m[0] == t)
        assert walk_client_c(data, 0, table, 1 << 30, None) == (
            sum(map(len, msgs[:first])), sum(m[0] == ord("S") for m in msgs[:first]))
    assert walk_client_c(data, 0, NO_STOP, 1 << 30, None) == (len(data), 3)
    data = msg(b"S") + PGBENCH_TX
    assert walk_client_c(data, 0, client_conn._WALK_STOP_BIND, 1 << 30, RecordingTracker()) == (5, 1)


@needs_c
def test_stops_before_bad_lengths_and_partial_messages():
    head = msg(b"S")
    for tail in [bad_length(b"S", 3), bad_length(b"S", -1), bad_length(b"d", 101), msg(b"d", b"x" * 20)[:-1],
                 b"S\x00\x00\x00", b"S", b""]:
        assert walk_client_c(head + tail, 0, NO_STOP, 100, None) == (5, 1), tail
    body = b"x" * 96                                               # length 100: the limit, allowed
    assert walk_client_c(msg(b"d", body), 0, NO_STOP, 100, None) == (101, 0)
    assert walk_client_c(msg(b"d", body + b"y"), 0, NO_STOP, 100, None) == (0, 0)
    assert walk_client_c(head, 5, NO_STOP, 100, None) == (5, 0)
    assert walk_client_c(head, 50, NO_STOP, 100, None) == (50, 0)   # past the end: nothing to walk


@needs_c
@pytest.mark.parametrize("body", [b"", b"p1", b"\xff\x00", b"a\x80\x00\x00\x00\x00\x00", b"\xed\xa0\x80\x00",
                                  b"\xc3\x00"])
def test_an_execute_decode_execute_would_refuse_is_left_to_it(body):
    t = RecordingTracker()
    data = msg(b"S") + msg(b"E", body)
    assert walk_client_c(data, 0, NO_STOP, 1 << 30, t) == (5, 1)
    assert t.calls == [("sync",)]
    assert walk_client_c(data, 0, NO_STOP, 1 << 30, None) == (len(data), 1)    # no tracker: not decoded


@needs_c
def test_a_bind_the_compiled_decoder_declines_is_left_to_python():
    for body in [b"", b"no-nul", bind_body("", "s", [-2], []), bind_body(b"\xff", "s", [], []),
                 bind_body("", "s", [b"x"], [2]), bind_body("", "s", [b"x"], [])[:-1]]:
        t = RecordingTracker()
        data = msg(b"S") + msg(b"B", body)
        assert walk_client_c(data, 0, NO_STOP, 1 << 30, t) == (5, 1)
        assert t.calls == [("sync",)]
        assert walk_client_c(data, 0, NO_STOP, 1 << 30, None) == (len(data), 1)


@needs_c
def test_a_tracker_exception_propagates_and_the_session_fails_alike():
    """Documented state: the tracker saw every call up to the one that raised; the walk's offset
    and Sync count are lost (the reference would have counted the Syncs before it). Nothing is
    forwarded either way, and the session ends with the same internal error."""
    data = PGBENCH_TX * 2
    outcome = {}
    for name, walk in (("c", walk_client_c), ("noop", walk_client_noop)):
        saved = framing.walk_client
        framing.walk_client = walk
        try:
            t = RecordingTracker(fail_at=5)                     # the second transaction's execute
            c = make_conn(t)
            up = c.up_transport
            c.data_received(data)
            outcome[name] = (t.calls, up.writes, c.transport.writes, c.errors, c.log.events, c.phase,
                             c.sync_points)
        finally:
            framing.walk_client = saved
    assert outcome["c"][:-1] == outcome["noop"][:-1]
    assert outcome["c"][3] == [("RuntimeError", "tracker failed at call 5", None)]
    assert outcome["c"][1] == [b"X\x00\x00\x00\x04", "close"]   # only _teardown's Terminate
    assert outcome["noop"][-1] == 1 and outcome["c"][-1] == 0
    with pytest.raises(RuntimeError):
        walk_client_c(bytearray(data), 0, NO_STOP, 1 << 30, RecordingTracker(fail_at=1))


@pytest.mark.parametrize("walk", [pytest.param(walk_client_c, id="c", marks=needs_c),
                                  pytest.param(walk_client_noop, id="noop")])
def test_an_error_relaying_after_an_off_loop_verdict_fails_the_session(walk):
    """on_verdict relays outside data_received: an unexpected error there (here the tracker's, on
    the Bind after the slow Query) ends the session with pgwarden's internal error, as it does in
    data_received, instead of escaping into the event loop with the session left half relayed."""
    saved = framing.walk_client
    framing.walk_client = walk
    try:
        t = RecordingTracker(fail_at=2)
        c = make_conn(t)
        c.data_received(msg(b"Q", cstr("slow SELECT 2")) + PGBENCH_TX)
        assert c.waiting == "slow SELECT 2" and t.calls == []
        c.on_verdict(c.waiting)                                # must not raise
    finally:
        framing.walk_client = saved
    assert [call[0] for call in t.calls] == ["query", "bind"]
    assert c.errors == [("RuntimeError", "tracker failed at call 2", None)]
    assert ("exception", "internal_error", {"phase": RELAY}, "RuntimeError", "tracker failed at call 2") \
        in c.log.events
    assert c.phase == client_conn.CLOSED
    assert any(isinstance(w, bytes) and w.startswith(b"E") and b"pgwarden internal error" in w
               for w in c.transport.writes)


@needs_c
def test_a_callback_resizing_the_buffer_gets_a_buffer_error():
    """The export is held for the walk: resizing the bytearray from a tracker call raises
    BufferError there (and out of the walk), never a crash; afterwards the buffer is free."""
    buf = bytearray(PGBENCH_TX * 2)

    class Resizer(RecordingTracker):
        def sync(self):
            super().sync()
            del buf[:]

    with pytest.raises(BufferError):
        walk_client_c(buf, 0, NO_STOP, 1 << 30, Resizer())

    class Rewriter(RecordingTracker):                      # same size: allowed, and read as it is now
        def execute(self, portal):
            super().execute(portal)
            buf[-5:-4] = b"Q"                              # the second Sync becomes a Query

    t = Rewriter()
    assert walk_client_c(buf, 0, NO_STOP, 1 << 30, t) == (len(buf) - 5, 1)
    buf += b"more"
    del buf[:10]


@needs_c
def test_argument_errors():
    buf = bytearray(PGBENCH_TX)
    with pytest.raises(TypeError):
        walk_client_c(buf, 0, NO_STOP, 1 << 30)
    with pytest.raises(TypeError):
        walk_client_c("not a buffer", 0, NO_STOP, 1 << 30, None)
    with pytest.raises(TypeError):
        walk_client_c(buf, 0, "x" * 256, 1 << 30, None)
    with pytest.raises(ValueError):
        walk_client_c(buf, 0, bytes(255), 1 << 30, None)
    with pytest.raises(ValueError):
        walk_client_c(buf, -1, NO_STOP, 1 << 30, None)
    with pytest.raises(TypeError):
        walk_client_c(buf, 0.0, NO_STOP, 1 << 30, None)
    with pytest.raises(OverflowError):
        walk_client_c(buf, 0, NO_STOP, 2**70, None)
    assert walk_client_c(memoryview(bytes(buf)), 0, bytearray(256), 1 << 30, None) == (len(buf), 1)
    buf += b"x"                        # every path above released the export
    del buf[:1]


def test_walk_impl_is_reported():
    assert framing.WALK_IMPL == ("c" if walk_client_c is not None else "python")
    assert (framing.walk_client is walk_client_noop) == (walk_client_c is None)
    assert walk_client_noop(b"anything", 3, NO_STOP, 10, None) == (3, 0)


@needs_c
def test_does_not_leak():
    class Quiet:
        def bind(self, portal, statement, params): pass
        def execute(self, portal): pass
        def sync(self): pass
        def copy_data(self, n): pass

    class Failing(Quiet):
        def execute(self, portal):
            raise RuntimeError("no")

    cases = [(PGBENCH_TX * 2 + msg(b"d", b"abc") + msg(b"D", b"S\x00"), Quiet()),
             (PGBENCH_TX + msg(b"E", cstr("é") + b"\x00\x00\x00\x00"), Quiet()),
             (msg(b"S") + msg(b"B", bind_body("", "s", [-2], [])), Quiet()),            # declined Bind
             (msg(b"S") + msg(b"B", bind_body("", "s", [b"x"] * 5, [])[:-1]), Quiet()),
             (msg(b"S") + msg(b"E", b"\xff\x00"), Quiet()),                                # declined Execute
             (PGBENCH_TX, Failing()),
             (PGBENCH_TX, None)]
    for data, tracker in cases:
        buf = bytearray(data)

        def once():
            try:
                walk_client_c(buf, 0, NO_STOP, 1 << 30, tracker)
            except RuntimeError:
                pass
        assert_no_growth(once, data)


# Run in a child process: a stray read is a segfault there, a failed test here.
GUARD_PAGE_SCRIPT = r"""
import ctypes, mmap, sys
from proxy.wire.framing import walk_client_c
class T:
    def bind(self, *a): pass
    def execute(self, *a): pass
    def sync(self): pass
    def copy_data(self, n): pass
page = mmap.PAGESIZE
m = mmap.mmap(-1, 2 * page)
view = memoryview(m)[:page]                             # the buffer ends where the unreadable page starts
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
if libc.mprotect(base + page, page, 0) != 0:          # PROT_NONE: the page after the data
    sys.exit("mprotect failed")
walked = 0
data = bytes.fromhex(sys.argv[1])
for cut in range(len(data) + 1):                       # every prefix, ending right at the guard page
    m[page - cut:page] = data[:cut]
    for tracker in (None, T()):
        walked += walk_client_c(view, page - cut, bytes(256), 1 << 30, tracker)[0] - (page - cut)
print(walked)
"""


@needs_c
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through ctypes")
def test_never_reads_past_the_buffer():
    data = PGBENCH_TX + msg(b"E", cstr("p1")) + msg(b"d", b"xyz") + msg(b"H")
    done = subprocess.run([sys.executable, "-c", GUARD_PAGE_SCRIPT, data.hex()], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert int(done.stdout) > 0

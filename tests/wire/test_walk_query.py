"""walk_client's statement walk: a Query, or a Parse of the unnamed statement, whose verdict the
judge has cached, let through in C.

What the relay relies on: with ``query`` (``gate.query_walk_context``) the
compiled walk lets a Query or an unnamed Parse through only where ClientConn._relay's Python
branch would find the verdict in the judge's caches, allowed and without
effects, and it then does what that branch does.  So a session is the same
with the walk as with ``walk_client_noop`` (everything in Python, the
reference): the bytes forwarded, the client's answers, sync points, errors,
the tracker's calls, and the policy's own state -- the judge's verdict caches,
the classification cache's entries, LRU order and counters, the statements
metric.  The differential test drives a real ClientConn with the real
PolicyGate and Judge twice per example, in both scopes that matter.
"""

from __future__ import annotations

import struct
import types

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy import metrics
from proxy.net import gate as gate_mod
from proxy.net.gate import PolicyGate, query_walk_context
from proxy.session.judge import Judge
from proxy.wire import _scan, framing
from proxy.wire.framing import walk_client_c, walk_client_noop
from tests.wire.test_walk_client import (
    NO_STOP, PGBENCH_TX, RecordingTracker, assert_no_growth, client_message, cstr, make_conn, msg, needs_c,
    new_tracker,
)

# Both compiled parts are needed (the walk, and the masked key the cache uses): with both built,
# the statement walk must be in use (test_the_wiring_uses_the_walk_when_built).
pytestmark = [needs_c, pytest.mark.skipif(gate_mod._masked.masked_key_c is None,
                                          reason="the compiled masked key is not in use")]

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = %d;"
UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + %d WHERE aid = %d;"
FIXED = [
    "BEGIN;", "END;", "SELECT 1", "select 1", "", "  ", ";", "-- c", "DROP TABLE t", "SELCT 1",
    "PREPARE p1 AS SELECT 1", "EXECUTE p1", "DEALLOCATE p1", "DEALLOCATE ALL", "SET statement_timeout = 5",
    "SELECT set_config('application_name', 'x', false)", "SELECT set_config('application_name', 'y', false)",
    "SELECT set_config('default_transaction_read_only', 'off', false)", "SELECT 1; SELECT 2",
    "SELECT * FROM pg_class WHERE relname = 'x'", "SELECT * FROM pg_class WHERE relname = 'y'",
    "NOTIFY c", "LISTEN c", "SELECT pg_sleep(0)", "SELECT 'é'", "SELECT 'ü'", "COPY t TO STDOUT",
]
QUERY_TEXTS = st.one_of(
    st.integers(0, 30).map(lambda n: SELECT % n),
    st.integers(0, 30).map(lambda n: SELECT % n),
    st.tuples(st.integers(-5, 5), st.integers(0, 9)).map(lambda t: UPDATE % t),
    st.sampled_from(FIXED),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00'"), max_size=6).map(
        lambda s: f"SELECT '{s}'"),
)
query_message = QUERY_TEXTS.map(lambda t: msg(b"Q", cstr(t)))
PARAM_TYPES = st.lists(st.sampled_from([0, 23, 25, 2**32 - 1]), max_size=3)


def parse(name: str, text: str, types=()) -> bytes:
    return msg(b"P", cstr(name) + cstr(text) + struct.pack(f"!h{len(types)}I", len(types), *types))


parse_message = st.tuples(st.sampled_from(["", "", "", "s1"]), QUERY_TEXTS, PARAM_TYPES).map(lambda x: parse(*x))
# pgbench -M extended's transaction, and others like it: Parse (unnamed), Bind, Describe, Execute, Sync.
extended_tx = st.tuples(QUERY_TEXTS, PARAM_TYPES).map(
    lambda x: parse("", *x) + msg(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0212\x00\x00")
    + msg(b"D", b"P\x00") + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S"))
odd_query = st.one_of(
    st.integers(0, 30).map(lambda n: msg(b"Q", (SELECT % n).encode())),               # no terminator
    st.integers(0, 30).map(lambda n: msg(b"Q", cstr(SELECT % n) + b"x\x00")),          # bytes after it
    st.integers(0, 30).map(lambda n: msg(b"Q", (SELECT % n).encode() + b"\xff\x00")),  # not UTF-8
    st.just(msg(b"Q", b"SELECT '\xed\xa0\x80'\x00")),                                  # a surrogate
    st.just(msg(b"Q")),
    st.integers(0, 30).map(lambda n: msg(b"P", b"\x00" + (SELECT % n).encode())),        # Parse: no terminator
    st.integers(0, 30).map(lambda n: msg(b"P", b"\x00" + cstr(SELECT % n))),             # no type count
    st.integers(0, 30).map(lambda n: msg(b"P", b"\x00" + cstr(SELECT % n) + b"\x00\x01")),  # count 1, no type
    st.integers(0, 30).map(lambda n: msg(b"P", b"\x00" + cstr(SELECT % n) + b"\xff\xff")),  # count -1
    st.integers(0, 30).map(lambda n: msg(b"P", b"\x00" + (SELECT % n).encode() + b"\xff\x00\x00\x00")),
    st.just(msg(b"P")),
    # named, the name ending in a cached text and no query after it: read from one byte on, it
    # would pass for an unnamed Parse of that text with no types (decode_parse: truncated)
    st.integers(0, 30).map(lambda n: msg(b"P", b"x" + cstr(SELECT % n) + b"\x00\x00")),
)


@st.composite
def query_session(draw):
    msgs = draw(st.lists(st.one_of(query_message, query_message, query_message, parse_message, extended_tx,
                                   extended_tx, client_message), max_size=40))
    if draw(st.booleans()):
        msgs.insert(draw(st.integers(0, len(msgs))), draw(odd_query))
    data = b"".join(msgs)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(data), 1)), max_size=6))))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)]) if b > a] or [b""]
    return chunks, draw(st.sampled_from(["read", "write"])), draw(st.sampled_from([None, 20, 52]))


def make_query_conn(tracker, scope: str, text_limit: int | None):
    c = make_conn(tracker)
    judge = Judge()
    if text_limit is not None:                    # texts over it are neither cached nor walked
        judge.cache.max_text_length = text_limit
    c.server.gate = PolicyGate(None, judge)
    c.claims = types.SimpleNamespace(scope=scope)
    c.query_walk = query_walk_context(c.server.gate, scope)
    assert c.query_walk is not None
    return c


def policy_state(judge: Judge) -> dict:
    cache = judge.cache
    return dict(verdicts=list(judge._verdicts.items()), masked=list(judge._masked_verdicts.items()),
                cache=list(cache._data.items()), counters=(cache.hits, cache.masked_hits, cache.misses, cache._chars))


def run_query_session(walk, chunks, kind: str, scope: str, text_limit: int | None) -> dict:
    saved = framing.walk_client
    framing.walk_client = walk
    before = dict(metrics._statement_counts)
    try:
        tracker, holder = new_tracker(kind)
        c = make_query_conn(tracker, scope, text_limit)
        up = c.up_transport
        for chunk in chunks:
            c.data_received(chunk)
        seen = (None if holder is None else holder.calls if kind == "recording"
                else holder.finish(c.sync_points))
        counts = {k: v - before.get(k, 0) for k, v in metrics._statement_counts.items() if v != before.get(k, 0)}
        return dict(upstream=up.writes, client=c.transport.writes, sync_points=c.sync_points, errors=c.errors,
                    phase=c.phase, log=c.log.events, scanner=(bytes(c.scanner.buf), c.scanner.pos),
                    prepared=dict(c.sql_prepared), denied=dict(c.enforcer.denied_statements), tracker=seen,
                    policy=policy_state(c.server.gate.judge_fn), metrics=counts)
    finally:
        framing.walk_client = saved


def walked_queries(chunks, scope: str, text_limit: int | None = None, what: str = "query") -> int:
    """How many Query (or Parse) messages the compiled walk let through itself: the tracker's
    query (parse) calls less the judge's calls from the Python branch."""
    tracker = RecordingTracker()
    c = make_query_conn(tracker, scope, text_limit)
    calls = []
    real_judge = c.server.gate.judge

    def judge(text, session):                     # the Python branch's way in
        calls.append(text)
        return real_judge(text, session)
    c.server.gate.judge = judge
    saved = framing.walk_client
    framing.walk_client = walk_client_c
    try:
        for chunk in chunks:
            c.data_received(chunk)
    finally:
        framing.walk_client = saved
    return sum(1 for call in tracker.calls if call[0] == what) - len(calls)


TRACKERS = ["none", "recording", "real", "real-py"]
PGBENCH_SIMPLE = [msg(b"Q", cstr(SELECT % n)) for n in (1, 2, 3, 2)]


@pytest.mark.parametrize("kind", TRACKERS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query_session())
@example(([b"".join(PGBENCH_SIMPLE)], "read", None))
@example(([b"".join(msg(b"Q", cstr(t)) for t in FIXED * 2)], "read", None))
@example(([b"".join(msg(b"Q", cstr(t)) for t in FIXED * 2)], "write", 20))
@example(([b"".join(msg(b"Q", cstr(SELECT % n)) for n in (1, 2, 10, 11))], "read", 52))   # one key, two lengths
@example(([b"".join(parse("", SELECT % n, (2**32 - 1, 23)) + msg(b"S") for n in (1, 2, 3))], "read", None))
@example(([msg(b"Q", cstr(SELECT % 1)), msg(b"Q", cstr(SELECT % 2)), msg(b"P", b"x" + cstr(SELECT % 3) + b"\x00\x00")],
          "read", None))
def test_the_query_walk_changes_nothing_observable(kind, case):
    chunks, scope, text_limit = case
    got = run_query_session(walk_client_c, chunks, kind, scope, text_limit)
    want = run_query_session(walk_client_noop, chunks, kind, scope, text_limit)
    assert got == want


def test_a_repeated_statement_with_other_literals_is_walked():
    """The point of it: pgbench -M simple's select, after its first sight, never reaches Python's
    branch (the first is classified there, which fills the caches)."""
    assert walked_queries([b"".join(PGBENCH_SIMPLE)], "read") == 3
    assert walked_queries([b"".join(PGBENCH_SIMPLE)], "read", text_limit=20) == 0      # too long to cache


def test_an_unnamed_parse_with_other_literals_is_walked():
    """pgbench -M extended: Parse of the unnamed statement, then Bind/Describe/Execute/Sync, all
    in C after the first; a named Parse stays in Python (its name goes into the enforcer's and
    the session's books)."""
    txs = [parse("", SELECT % n, (23,)) + msg(b"S") for n in (1, 2, 3, 4)]
    assert walked_queries(txs, "read", what="parse") == 3
    assert walked_queries([parse("s1", SELECT % n) for n in (1, 2, 3)], "read", what="parse") == 0


def test_literal_dependent_and_denied_statements_stay_in_python():
    """set_config's setting name decides its class: never walked by masked key, so the second
    call below is judged afresh, and denied in the read scope; a denied statement is never
    walked, however often it comes; nor is one with effects (PREPARE, DEALLOCATE)."""
    texts = ["SELECT set_config('application_name', 'x', false)",
             "SELECT set_config('default_transaction_read_only', 'off', false)",
             "DROP TABLE t", "DROP TABLE t", "PREPARE p1 AS SELECT 1", "PREPARE p1 AS SELECT 1",
             "DEALLOCATE p1", "DEALLOCATE p1"]
    data = b"".join(msg(b"Q", cstr(t)) for t in texts)
    assert walked_queries([data], "read") == 0
    got = run_query_session(walk_client_c, [data], "recording", "read", None)
    verdicts = [call[3] for call in got["tracker"] if call[0] == "query"]
    assert [v.allowed for v in verdicts] == [True, False, False, False, True, True, True, True]
    assert verdicts[1].rule and "read" in verdicts[1].message


def test_an_exact_repeat_is_walked_with_its_cached_verdict():
    """BEGIN and END from their second sight. A text with a literal goes on to Python's branch at
    its second sight too, as Judge has it: its first verdict went to the masked-key cache, and
    the exact text, found in the classification cache, is decided again (and then cached by text)."""
    data = b"".join(msg(b"Q", cstr(t)) for t in ["BEGIN;", "BEGIN;", "END;", "END;"] + ["SELECT 1"] * 4)
    assert walked_queries([data], "read") == 4


def test_what_the_caches_never_hold_is_still_never_walked():
    """Defence in depth, with entries the judge never makes planted in its caches: a denied
    verdict, a masked entry that is not literal independent, a text with a NUL inside (a Query
    with bytes after its terminator) are all left to Python's branch."""
    from proxy.session.enforce import Verdict

    c = make_query_conn(None, "read", None)
    judge = c.server.gate.judge_fn
    ctx = c.query_walk

    def walked(text_bytes: bytes) -> bool:
        buf = bytearray(msg(b"Q", text_bytes))
        return _scan.walk_client(buf, 0, NO_STOP, 1 << 20, None, ctx) == (len(buf), 1)

    allowed = Verdict(True, "", "read.select", "read")
    judge._verdicts[("read", "SELECT 1 x")] = Verdict(False, "no", "ddl.x", "ddl")
    assert not walked(b"SELECT 1 x\x00")
    judge._verdicts[("read", "SELECT 1 x")] = allowed
    assert walked(b"SELECT 1 x\x00")                          # the planted entry works at all
    judge._verdicts[("read", "SELECT 2\x00y")] = allowed
    assert not walked(b"SELECT 2\x00y\x00")

    c.data_received(msg(b"Q", cstr(SELECT % 1)))               # classified: masked entries made
    assert walked(cstr(SELECT % 2))
    (key, classified), = [(k, v) for k, v in judge.cache._data.items() if k[0] == "m"]
    judge.cache._data[key] = types.SimpleNamespace(literal_independent=False)
    assert not walked(cstr(SELECT % 3))
    judge.cache._data[key] = classified
    assert walked(cstr(SELECT % 3))


def test_the_wiring_uses_the_walk_when_built():
    """The shipped gate gets a context (so a compiled build does walk Queries); anything that is not
    the shipped gate, judge and cache, or a scope that is not a str, gets None."""
    assert gate_mod.STATEMENT_WALK_IMPL == "c"
    judge = Judge()
    gate = PolicyGate(None, judge)
    ctx = query_walk_context(gate, "read")
    assert ctx is not None and ctx[0] == "read" and ctx[1] is judge._verdicts and ctx[4] is judge.cache._data

    class OtherGate(PolicyGate):
        pass
    assert query_walk_context(OtherGate(None, judge), "read") is None
    assert query_walk_context(PolicyGate(None, lambda *a: None), "read") is None
    assert query_walk_context(types.SimpleNamespace(judge_fn=judge), "read") is None
    assert query_walk_context(gate, None) is None


def test_without_the_compiled_key_there_is_no_context(monkeypatch):
    monkeypatch.setattr(gate_mod._masked, "masked_key_c", None)
    assert query_walk_context(PolicyGate(None, Judge()), "read") is None


def test_a_bad_context_is_refused():
    buf = bytearray(msg(b"Q", cstr("SELECT 1")))
    for bad in [(), ("read",) * 8, [None] * 8, "ctx"]:
        with pytest.raises(TypeError):
            _scan.walk_client(buf, 0, NO_STOP, 1 << 20, None, bad)
    assert _scan.walk_client(buf, 0, NO_STOP, 1 << 20, None, None) == (0, 0)       # no context: not walked
    assert _scan.walk_client(buf, 0, NO_STOP, 1 << 20, None) == (0, 0)
    with pytest.raises(TypeError):
        _scan.walk_client(buf, 0, NO_STOP, 1 << 20, None, None, None)


def test_a_tracker_that_raises_propagates():
    c = make_query_conn(None, "read", None)
    c.data_received(msg(b"Q", cstr(SELECT % 1)))                     # classified in Python: caches filled

    class Boom:
        def query(self, text, verdict):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        _scan.walk_client(bytearray(msg(b"Q", cstr(SELECT % 2))), 0, NO_STOP, 1 << 20, Boom(), c.query_walk)


def test_no_leak_per_walked_statement():
    c = make_query_conn(None, "read", None)
    c.data_received(msg(b"Q", cstr(SELECT % 1)) + PGBENCH_TX)
    ctx = c.query_walk
    masked = bytearray(msg(b"Q", cstr(SELECT % 7)))
    exact = bytearray(msg(b"Q", cstr("BEGIN;")))
    c.data_received(msg(b"Q", cstr("BEGIN;")))
    tracker = RecordingTracker()
    extended = bytearray(parse("", SELECT % 9, (23, 25)) + msg(b"S"))

    def once():
        assert _scan.walk_client(extended, 0, NO_STOP, 1 << 20, tracker, ctx) == (len(extended), 1)
        assert _scan.walk_client(masked, 0, NO_STOP, 1 << 20, None, ctx) == (len(masked), 1)
        assert _scan.walk_client(exact, 0, NO_STOP, 1 << 20, None, ctx) == (len(exact), 1)
        assert _scan.walk_client(bytearray(msg(b"Q", cstr("DROP TABLE t"))), 0, NO_STOP, 1 << 20, None, ctx) == (0, 0)
        _scan.walk_client(masked, 0, NO_STOP, 1 << 20, tracker, ctx)
        tracker.calls.clear()
    assert_no_growth(once, "query walk")

"""The compiled statement sink (``proxy.audit._recline.write_statement``) against its reference.

``writer.statement_sink(fallback, rec, st)`` is the tracker's emit when built:
it must leave exactly what ``fallback(rec, st)`` (``client_conn._write_statement``
over ``SessionRecorder.statement``) leaves -- the recording's bytes, the
recorder's counters and chain, the clock's calls, a failure's error and
``on_failure`` call -- for every statement, ordinary or not.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import types
from functools import partial

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policy.sql.classes import StatementClass
from proxy.audit import record as R
from proxy.audit import writer
from proxy.audit.writer import SessionRecorder
from proxy.net import client_conn
from proxy.net.client_conn import _write_statement
from proxy.session import track
from proxy.session.enforce import Verdict
from proxy.session.track import StatementPy

from .conftest import INTROSPECTION_SQL, T0

pytestmark = pytest.mark.skipif(writer.write_statement_c is None, reason="proxy.audit._recline not built")

SINK = writer.write_statement_c
KEY = Ed25519PrivateKey.generate()
STATEMENT_CLASSES = [c for c in (track.StatementC, StatementPy) if c is not None]
COUNTERS = ("_n_statements", "_n_denied", "_n_errors", "_n_rows", "_n_introspection", "_copy_in", "_copy_out",
            "_copy_both", "_n_notices")


class CountingClock:
    """Deterministic: each call moves on by a little more than 123 µs."""

    def __init__(self, t: float = T0) -> None:
        self.t, self.calls = t, 0

    def __call__(self) -> float:
        self.calls += 1
        self.t += 0.000123457
        return self.t


def recorder(directory, clock, *, on_failure=None, **kw) -> SessionRecorder:
    rec = SessionRecorder(directory, "20260101T000000-a1b2c3d4e5f6", signing_key=KEY, key_id="k", clock=clock,
                          on_failure=on_failure, **kw)
    rec.start(user="alice")
    return rec


class fixed_wall_clock:
    """_write_statement reads time.time() for a statement never answered: make it deterministic."""

    def __enter__(self):
        self.saved = client_conn.time
        client_conn.time = types.SimpleNamespace(time=lambda: T0 + 5.0)

    def __exit__(self, *exc):
        client_conn.time = self.saved


def emitter(rec, compiled: bool):
    return partial(SINK, _write_statement, rec) if compiled else partial(_write_statement, rec)


def state(rec, clock):
    return ({n: getattr(rec, n) for n in COUNTERS}, rec.records, rec._chain.seq, rec._chain.prev,
            rec._chain.sealed, rec.failed, rec.error, rec.ended, clock.calls)


# ------------------------------------------------------------------ the statements

tricky = st.sampled_from(list('"\\/\x00\x1f\x7fé中😀\u2028') + ["\ud800", "\udfff"])
texts = (st.text(alphabet=tricky | st.characters(codec=None, exclude_categories=()), max_size=30)
         | st.sampled_from(["SELECT 1", INTROSPECTION_SQL, "select * from pg_catalog.pg_class",
                            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"]))
small_texts = st.text(alphabet=tricky | st.characters(codec=None, exclude_categories=()), max_size=8)
verdict_objects = st.builds(
    Verdict,
    st.booleans(),
    st.sampled_from(["", "pgwarden: denied [rule x]"]),
    st.sampled_from(["read.select", "", "write.delete"]) | small_texts | st.none(),
    st.sampled_from(["read", "write", "", "admin"]) | small_texts | st.none()
    | st.sampled_from([StatementClass.READ, StatementClass.DDL]))
verdicts = verdict_objects | verdict_objects | verdict_objects | st.none()     # mostly the fast path
params = st.none() | st.lists(st.none() | small_texts | st.binary(max_size=3), max_size=4) \
    | st.lists(st.none() | small_texts, max_size=3)
tags = st.lists(st.sampled_from(["SELECT 3", "BEGIN", "INSERT 0 5", "COPY 2", "SELECT 9223372036854775808", "X"]),
                max_size=2)
statements = st.fixed_dictionaries({
    "text": texts,
    "via": st.sampled_from(["query", "execute", "parse", "function_call"]),
    "started": st.floats(min_value=0, max_value=2.0).map(lambda d: T0 + d) | st.just(T0 + 0.25) | st.just(int(T0)),
    "duration": st.floats(min_value=-0.001, max_value=3.0) | st.sampled_from([0.0, 1e-6, 0.0015]) | st.none(),
    "verdict": verdicts,
    "params": params,
    "tags": tags,
    "sqlstate": st.none() | st.sampled_from(["42501", "42P01"]),
    "message": st.none() | small_texts | st.just("pgwarden: DELETE is write class"),
    "skipped": st.sampled_from([False] * 6 + [True]),
    "copy": st.sampled_from([None] * 6 + ["in", "out", "both"]),
    "sample": st.sampled_from([None] * 6 + [[["a", None]], [["x"], ["y"]]]),
})


def make(cls, spec):
    s = cls(spec["text"], spec["via"], spec["started"], spec["verdict"], spec["params"])
    if spec["duration"] is not None:
        s.ended = spec["started"] + spec["duration"]
    s.tags = list(spec["tags"])
    s.sqlstate, s.message, s.skipped, s.sample = spec["sqlstate"], spec["message"], spec["skipped"], spec["sample"]
    if spec["copy"] is not None:
        s.copy_direction, s.copy_bytes = spec["copy"], 1234
    return s


def record(directory, specs, cls, compiled, *, held=False, **kw):
    """The statements through one path; ``held``: between rec.hold() and rec.release() (as the relay
    walks a chunk), the bytes on disk before the release and its result appended to the results."""
    clock = CountingClock()
    rec = recorder(directory, clock, **kw)
    emit = emitter(rec, compiled)
    if held:
        rec.hold()
    with fixed_wall_clock():
        results = [emit(make(cls, s)) for s in specs]
    if held:
        results += [rec.path.read_bytes(), rec.release(), rec._held]
    return rec, clock, results


ORDINARY = {"text": "SELECT abalance FROM pgbench_accounts WHERE aid = $1", "via": "execute", "started": T0 + 0.5,
            "duration": 0.0012, "verdict": Verdict(True, "", "read.select", "read"), "params": ["42"],
            "tags": ["SELECT 1"], "sqlstate": None, "message": None, "skipped": False, "copy": None, "sample": None}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(statements, min_size=1, max_size=8), cls=st.sampled_from(STATEMENT_CLASSES),
       capture_params=st.booleans(), capture_rows=st.sampled_from([0, 1]),
       line_impl=st.sampled_from(["c", "c", "python"]), fsync=st.sampled_from(["session", "off", "statement"]),
       held=st.booleans())
@example(specs=[ORDINARY, dict(ORDINARY, text="x\ud800"), dict(ORDINARY, params=[b"\x00"]),
                dict(ORDINARY, verdict=Verdict(False, "no", "write.delete", "write"), sqlstate="42501")],
         cls=STATEMENT_CLASSES[0], capture_params=True, capture_rows=0, line_impl="c", fsync="session", held=False)
@example(specs=[ORDINARY, dict(ORDINARY, text="x\ud800"), ORDINARY], cls=STATEMENT_CLASSES[0], capture_params=True,
         capture_rows=0, line_impl="c", fsync="session", held=True)
def test_the_sink_records_what_the_reference_records(tmp_path_factory, specs, cls, capture_params, capture_rows,
                                                      line_impl, fsync, held):
    saved = R.LINE_IMPL
    R.LINE_IMPL = line_impl
    try:
        out = []
        for compiled in (False, True):
            d = tmp_path_factory.mktemp("c" if compiled else "py")
            rec, clock, results = record(d, specs, cls, compiled, held=held, capture_params=capture_params,
                                         capture_rows=capture_rows, fsync=fsync)
            data, made = rec.path.read_bytes(), rec.records
            rec.end("client_closed")
            out.append((data, state(rec, clock), rec.path.read_bytes(), results[len(specs):]))
            if compiled:            # what rec.statement would say: True when written (None: the fallback ran)
                assert all(r in (True, None) for r in results[:len(specs)])
            if held:                # nothing of the statements on disk before the release, all of them after
                before, released, after = results[len(specs):]
                assert released is True and after is None
                assert before.count(b"\n") == 1 and data.count(b"\n") == made
    finally:
        R.LINE_IMPL = saved
    assert out[0] == out[1]


@pytest.mark.parametrize("capture_params", [True, False])
@pytest.mark.parametrize("capture_rows", [0, 2])
@pytest.mark.parametrize("extra", [{}, {"sample": [["a"], [None]]}, {"params": ["1", None]},
                                   {"verdict": Verdict(False, "no", "write.delete", "write"), "sqlstate": "42501"},
                                   {"sqlstate": "42P01", "message": "nope"}, {"tags": ["BEGIN"]},
                                   {"tags": ["SELECT 2", "INSERT 0 3"]}, {"text": INTROSPECTION_SQL}])
def test_each_kind_of_statement(tmp_path, capture_params, capture_rows, extra, monkeypatch):
    """One statement of each kind, and rows_from_tag looked up on record at each call."""
    tags_seen = []
    real = R.rows_from_tag
    monkeypatch.setattr(R, "rows_from_tag", lambda tag: tags_seen.append(tag) or (7 if tag == "BEGIN" else real(tag)))
    out = []
    for compiled in (False, True):
        tags_seen.clear()
        rec, clock, _ = record(tmp_path / str(compiled), [dict(ORDINARY, **extra)] * 2, STATEMENT_CLASSES[0],
                               compiled, capture_params=capture_params, capture_rows=capture_rows)
        out.append((rec.path.read_bytes(), state(rec, clock), list(tags_seen)))
    assert out[0] == out[1]


@pytest.mark.parametrize("flag", ["failed", "ended"])
def test_a_finished_recorder_with_its_file_still_open(tmp_path, flag):
    out = []
    for compiled in (False, True):
        clock = CountingClock()
        rec = recorder(tmp_path / str(compiled), clock)
        setattr(rec, flag, True)
        emitter(rec, compiled)(make(STATEMENT_CLASSES[0], ORDINARY))
        out.append((rec.path.read_bytes(), state(rec, clock)))
    assert out[0] == out[1]


def test_ordinary_statements_take_the_fast_path(tmp_path, monkeypatch):
    """No Python of the recorder's runs for the pgbench statement; the line refused by C goes
    through _record with the clock read once."""
    calls = []
    for n in ("statement", "_record", "_emit"):
        real = getattr(SessionRecorder, n)
        monkeypatch.setattr(SessionRecorder, n, (lambda n, real: lambda self, *a, **k: (
            calls.append(n), real(self, *a, **k))[1])(n, real))
    clock = CountingClock()
    rec = recorder(tmp_path, clock)
    calls.clear()
    before = clock.calls
    for cls in STATEMENT_CLASSES:
        assert SINK(_write_statement, rec, make(cls, ORDINARY)) is True
    assert calls == [] and clock.calls == before + len(STATEMENT_CLASSES)
    assert SINK(_write_statement, rec, make(STATEMENT_CLASSES[0], dict(ORDINARY, text="\udc80"))) is True
    assert calls == ["_record", "_emit"] and clock.calls == before + len(STATEMENT_CLASSES) + 1
    calls.clear()
    assert SINK(_write_statement, rec, make(STATEMENT_CLASSES[0], dict(ORDINARY, skipped=True))) is None
    assert calls == ["statement", "_record", "_emit"]


def test_the_introspection_test_is_looked_up_in_the_writer(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(writer, "is_introspection", lambda text: seen.append(text) or True)
    rec = recorder(tmp_path, CountingClock())
    assert SINK(_write_statement, rec, make(STATEMENT_CLASSES[0], ORDINARY)) is True
    assert seen == [ORDINARY["text"]] and rec._n_introspection == 1
    assert b'"introspection":true' in rec.path.read_bytes().splitlines()[-1]


def test_slots_read_in_place_follow_the_class_when_it_changes(tmp_path, monkeypatch):
    """The sink reads the recorder's and the statement's __slots__ at their offsets once it has found
    them: a class changed since (here SessionRecorder._fsync made a property saying "statement", which
    the fast path must hand to the reference) is looked up again, and changed back, read in place again."""
    fallbacks = []

    def fallback(rec, st):
        fallbacks.append(st.text)
        return _write_statement(rec, st)
    rec = recorder(tmp_path, CountingClock())
    for n in range(3):                  # found, then read in place
        assert SINK(fallback, rec, make(STATEMENT_CLASSES[0], dict(ORDINARY, text=f"fast {n}"))) is True
    assert fallbacks == []
    synced = []
    monkeypatch.setattr(writer.os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(SessionRecorder, "_fsync", property(lambda self: "statement"))
    assert SINK(fallback, rec, make(STATEMENT_CLASSES[0], dict(ORDINARY, text="synced"))) is None
    assert fallbacks == ["synced"] and synced == [rec._fd]
    monkeypatch.undo()
    assert SINK(fallback, rec, make(STATEMENT_CLASSES[0], dict(ORDINARY, text="fast again"))) is True
    assert fallbacks == ["synced"]
    texts = [json.loads(line)["text"] for line in rec.path.read_bytes().splitlines()[1:]]
    assert texts == ["fast 0", "fast 1", "fast 2", "synced", "fast again"]


def test_a_subclass_overriding_a_slot_is_read_as_it_says(tmp_path):
    """A statement of a subclass whose ``text`` is a property: its own type, read the generic way,
    after and before statements of the base class whose ``text`` slot is read in place."""
    class Masked(StatementPy):
        __slots__ = ()
        text = property(lambda self: "masked", lambda self, value: None)
    out = []
    for compiled in (False, True):
        rec = recorder(tmp_path / str(compiled), CountingClock())
        emit = emitter(rec, compiled)
        for cls in (StatementPy, Masked, StatementPy, Masked):
            emit(make(cls, ORDINARY))
        out.append(rec.path.read_bytes())
        texts = [json.loads(line)["text"] for line in out[-1].splitlines()[1:]]
        assert texts == [ORDINARY["text"], "masked"] * 2
    assert out[0] == out[1]


@settings(max_examples=3000, deadline=None)
@given(x=st.floats() | st.floats(min_value=0, max_value=2.2e6) | st.floats(min_value=0, max_value=10)
       | st.integers(0, 2 ** 32).map(lambda k: k / 2000) | st.integers(0, 2 ** 31).map(lambda k: (k + 0.5) / 1000))
@example(x=2.675)       # stored as 2.67499999...: 2.675 (ties are the binary value's, not the decimal text's)
@example(x=0.0625)      # an exact tie in binary: to even, 0.062
@example(x=-0.0)
def test_the_sinks_duration_rounding_is_builtins_round(x):
    """duration_ms = round(ms, 3): the sink rounds in C where that is exact, else calls round()."""
    from proxy.audit import _recline

    got, want = _recline._round3(x), round(x, 3)
    assert struct.pack("<d", got) == struct.pack("<d", want), (x, got, want)


MARKERS = ("pg_", "PG_", "information_schema", "INFORMATION_SCHEMA")


@settings(max_examples=3000, deadline=None)
@given(text=st.text(alphabet="pgPG_ informatschemINFORMATSCHEM.é\x00", max_size=40)
       | st.builds(lambda a, m, b: a + m + b, st.text(max_size=8), st.sampled_from(MARKERS), st.text(max_size=8))
       | texts)
def test_the_sink_skips_is_introspection_only_where_its_first_test_says_no(text):
    """The sink answers "not introspection" without calling the writer's is_introspection exactly
    where that function's own first test (no catalog marker in the text) returns False."""
    from proxy.audit import _recline
    from proxy.audit.introspection import is_introspection

    skipped = _recline._not_introspection(text)
    no_marker = not text or not any(m in text for m in MARKERS)
    if skipped:
        assert no_marker and is_introspection(text) is False
    if all(ord(ch) < 256 for ch in text):      # one byte a character: C decides all of these
        assert skipped == no_marker


def test_records_after_end_or_failure_are_not_written(tmp_path):
    rec = recorder(tmp_path, CountingClock())
    rec.end("client_closed")
    size, calls = rec.path.stat().st_size, rec._clock.calls
    assert SINK(_write_statement, rec, make(STATEMENT_CLASSES[0], ORDINARY)) is None
    assert rec.path.stat().st_size == size and rec._clock.calls == calls and rec._n_statements == 0


# ------------------------------------------------------------------ failures

def fail_both(tmp_path, swap):
    """The same statements on both paths, the file swapped by ``swap(fd)`` after the first."""
    out = []
    for compiled in (False, True):
        errors = []
        clock = CountingClock()
        rec = recorder(tmp_path / str(compiled), clock, on_failure=errors.append)
        emit = emitter(rec, compiled)
        first = emit(make(STATEMENT_CLASSES[0], ORDINARY))
        swap(rec)
        second = emit(make(STATEMENT_CLASSES[-1], dict(ORDINARY, tags=["BEGIN"])))
        third = emit(make(STATEMENT_CLASSES[0], ORDINARY))
        out.append((errors, state(rec, clock), rec._fd, rec.path.read_bytes()))
        if compiled:
            assert (first, second, third) == (True, False, None)
    assert out[0] == out[1]
    return out[1]


def test_a_lost_disk_fails_the_recorder_the_same_way(tmp_path):
    def read_only(rec):
        ro = os.open(rec.path, os.O_RDONLY)
        os.dup2(ro, rec._fd)
        os.close(ro)
    result = fail_both(tmp_path, read_only)
    assert result[0] == ["OSError: [Errno 9] Bad file descriptor"] and result[2] == -1


def test_a_full_disk_fails_the_recorder_the_same_way(tmp_path):
    def full(rec):
        fd = os.open("/dev/full", os.O_WRONLY)
        os.dup2(fd, rec._fd)
        os.close(fd)
    result = fail_both(tmp_path, full)
    assert result[0] == ["OSError: [Errno 28] No space left on device"]


SHORT_WRITE = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from tests.audit import test_sink as T
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    errors = []
    clock = T.CountingClock()
    rec = T.recorder(sys.argv[1], clock, on_failure=errors.append)
    emit = T.emitter(rec, sys.argv[3] == "c")
    emit(T.make(T.STATEMENT_CLASSES[0], T.ORDINARY))
    limit = rec.path.stat().st_size + 100         # the next line goes in part, and the rest is refused
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    r = emit(T.make(T.STATEMENT_CLASSES[0], T.ORDINARY))
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(json.dumps([errors, repr(T.state(rec, clock)), rec.path.read_bytes().decode(), r is not True]))
""")


def test_a_short_write_is_continued_and_its_failure_reported_the_same_way(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = []
    for impl in ("python", "c"):
        p = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(tmp_path / impl), root, impl],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out.append(json.loads(p.stdout.splitlines()[-1]))
    assert out[0] == out[1]
    assert out[1][0] == ["OSError: [Errno 27] File too large"] and out[1][3]
    assert len(out[1][2].splitlines()[-1]) == 100       # the part the kernel took


# ------------------------------------------------------------------ wiring, references

def test_start_recording_uses_the_sink(monkeypatch):
    """ClientConn._start_recording hands the tracker writer.statement_sink (the compiled one
    when built); None gives it _write_statement."""
    assert writer.statement_sink is SINK and writer.SINK_IMPL == "c"
    used = []

    def spy(fallback, rec, st):
        used.append(fallback)
        return SINK(fallback, rec, st)
    emitted = []

    class Tracker:
        def __init__(self, emit, **kw):
            self.emit = emit
            self.on_server = None
            emitted.append(emit)
    monkeypatch.setattr(track, "StatementTracker", Tracker)
    rec = types.SimpleNamespace(start=lambda **kw: True)
    conn = types.SimpleNamespace(
        claims=types.SimpleNamespace(jti="g", scope="read", reason="r", ticket="t", approver="a"),
        cfg=types.SimpleNamespace(audit=types.SimpleNamespace(capture_params=True, capture_rows=0)),
        server=types.SimpleNamespace(recorders=types.SimpleNamespace(open=lambda **kw: rec)),
        session_id="s", peer="p", tls=None, user="u", database="d", up_pid=1,
        scope=types.SimpleNamespace(role="r"), _on_recording_failed=None, _copy_out_bytes=None,
        _watch_rows=None, stream=types.SimpleNamespace(on_message=None))
    client_conn.ClientConn._start_recording(conn)
    emit = emitted[-1]
    assert emit.func is SINK and emit.args == (_write_statement, rec)
    monkeypatch.setattr(writer, "statement_sink", spy)
    client_conn.ClientConn._start_recording(conn)
    assert emitted[-1].func is spy
    monkeypatch.setattr(writer, "statement_sink", None)
    client_conn.ClientConn._start_recording(conn)
    assert emitted[-1].func is _write_statement and emitted[-1].args == (rec,)


def test_wrong_argument_count_is_a_type_error():
    with pytest.raises(TypeError):
        SINK(_write_statement, None)
    with pytest.raises(TypeError):
        SINK(_write_statement, None, None, None)


def test_exceptions_from_the_clock_and_helpers_propagate(tmp_path, monkeypatch):
    def boom():
        raise RuntimeError("clock")
    rec = recorder(tmp_path, CountingClock())
    rec._clock = boom
    for compiled in (False, True):
        with pytest.raises(RuntimeError, match="clock"):
            emitter(rec, compiled)(make(STATEMENT_CLASSES[0], ORDINARY))
    assert rec.records == 1 and rec._n_statements == 0


def test_no_reference_is_kept_or_lost(tmp_path):
    rec = recorder(tmp_path, CountingClock())
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, rec._fd)
    os.close(fd)
    cases = [make(cls, dict(ORDINARY, **extra)) for cls in STATEMENT_CLASSES for extra in (
        {}, {"text": "x\udc80"}, {"skipped": True}, {"tags": ["BEGIN"], "params": None},
        {"verdict": Verdict(False, "no", "r", "write"), "sqlstate": "42501"}, {"duration": None},
        {"text": INTROSPECTION_SQL, "params": [b"\x01", None]})]
    emit = emitter(rec, True)
    with fixed_wall_clock():
        for _ in range(200):            # warm up free lists and caches
            for s in cases:
                emit(s)
        objects = [rec, rec._chain, _write_statement] + cases + [s.text for s in cases] + [
            s.params for s in cases if s.params is not None]
        before_refs = [sys.getrefcount(o) for o in objects]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(2000):
                for s in cases:
                    emit(s)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert grown < 8192, grown
    assert [sys.getrefcount(o) for o in objects] == before_refs

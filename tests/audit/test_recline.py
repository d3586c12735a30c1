"""The compiled statement line (proxy.audit._recline) against the Python reference.

``record.statement_line_c`` must give, byte for byte, the line and digest
``Chain.line(STATEMENT, ...)`` gives for the same record, or None when it
cannot vouch for them; the writer then takes the Python path.  The writer
tests themselves run with both builders (conftest's ``line_impl``).
"""

from __future__ import annotations

import hashlib
import math
import sys

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.audit import record as R
from proxy.audit.config import AuditConfig
from proxy.audit.verify import verify
from proxy.audit.writer import RecorderFactory

from .conftest import Clock, write_sample

pytestmark = [pytest.mark.skipif(R.statement_line_c is None, reason="proxy.audit._recline not built"),
              pytest.mark.usefixtures("digest_impl")]


@pytest.fixture(scope="module", params=["libcrypto", "hashlib"])
def digest_impl(request):
    """Every test here with each way the compiled line takes its SHA-256: libcrypto called directly
    (as shipped, where found) and hashlib (the way when it is not)."""
    from proxy.audit import _recline
    if request.param == "libcrypto" and _recline.DIGEST_IMPL != "libcrypto":
        pytest.skip("libcrypto's SHA256_Init/Update/Final not found in this process")
    assert _recline._digest_by_hashlib(request.param == "hashlib") == request.param
    yield request.param
    _recline._digest_by_hashlib(_recline.DIGEST_IMPL == "hashlib")

MAX_EPOCH = 253402300800          # 10000-01-01T00:00:00Z

# Characters that need escaping or more than one UTF-8 byte, and lone surrogates
# (which only the Python path can record: it escapes them).
tricky = st.sampled_from(list('"\\/\x00\x01\x08\x09\x0a\x0b\x0c\x0d\x1a\x1f\x7f\x80é中😀\u2028\ufeff'))
texts = st.text(alphabet=tricky | st.characters(codec=None, exclude_categories=()), max_size=40)
surrogate_free = st.text(alphabet=tricky | st.characters(exclude_categories=("Cs",)), max_size=40)
seconds = st.integers(min_value=0, max_value=4_102_444_800)
timestamps = (
    st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)
    | st.tuples(seconds, st.sampled_from([0.9999996, 0.0000004, 0.9999995, 0.0000005, 0.5, 0.0, 0.4999995]))
    .map(lambda p: p[0] + p[1])
    # odd multiples of 1/128: exactly half a microsecond over, where round-half-even decides
    | st.tuples(seconds, st.integers(min_value=0, max_value=63)).map(lambda p: p[0] + (2 * p[1] + 1) / 128)
    | seconds)
durations = (
    st.floats(min_value=0, max_value=1e6).map(lambda d: round(d * 1000, 3))
    | st.floats(min_value=-1e6, max_value=0).map(lambda d: round(d * 1000, 3))
    | st.sampled_from([0.0, -0.0, 1e-4, 1e-5, 0.00012, 1e15, 1e16, 123456789012345.6, math.inf, math.nan])
    | st.floats())
params = st.none() | st.lists(st.none() | texts, max_size=5) | st.lists(st.none() | texts, max_size=3).map(tuple) \
    | st.lists(st.none() | texts | st.binary(max_size=4), max_size=3)
rows = st.none() | st.integers(min_value=0, max_value=1000) | st.integers(min_value=-(1 << 64), max_value=1 << 65)
records = st.tuples(
    st.integers(min_value=1, max_value=1 << 40),                                          # seq
    st.just(R.GENESIS) | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),  # prev
    timestamps,                                                                           # now
    texts,                                                                                # text
    st.none() | st.sampled_from(["read", "write", "admin"]) | texts,                      # cls
    st.sampled_from(["allowed", "denied"]) | texts,                                       # decision
    st.none() | st.just("read.select") | texts,                                           # rule
    timestamps,                                                                           # started
    durations,                                                                            # duration_ms
    st.sampled_from(["query", "execute", "parse", "function_call"]) | texts,              # via
    params,
    st.none() | st.sampled_from(["SELECT 1", "INSERT 0 5", "BEGIN", "COPY 10"]) | texts,  # tag
    rows,
    st.none() | st.sampled_from(["42501", "42P01"]) | texts,                              # sqlstate
    st.none() | texts,                                                                    # message
    st.booleans(),                                                                        # introspection
)
ordinary_records = st.tuples(
    st.integers(min_value=1, max_value=1 << 40), st.just(R.GENESIS), timestamps, surrogate_free,
    st.none() | surrogate_free, surrogate_free, st.none() | surrogate_free, timestamps,
    st.floats(min_value=0, max_value=1e6).map(lambda d: round(d * 1000, 3)), surrogate_free,
    st.none() | st.lists(st.none() | surrogate_free, max_size=4), st.none() | surrogate_free,
    st.none() | st.integers(min_value=0, max_value=(1 << 63) - 1), st.none() | surrogate_free,
    st.none() | surrogate_free, st.booleans())


def reference(seq, prev, now, text, cls, decision, rule, started, duration_ms, via, params, tag, rows,
              sqlstate, message, introspection):
    """The record as the brief of SessionRecorder.statement() defines it, through Chain.line."""
    fields = {"text": text, "class": cls, "decision": decision, "rule": rule, "started": R.iso_ts(started),
              "duration_ms": duration_ms, "via": via}
    if params is not None:
        fields["params"] = R.encode_params(params)
    for name, value in (("tag", tag), ("rows", rows), ("sqlstate", sqlstate), ("message", message)):
        if value is not None:
            fields[name] = value
    if introspection:
        fields["introspection"] = True
    chain = R.Chain()
    chain.seq, chain.prev = seq - 1, prev
    line = chain.line(R.STATEMENT, now, fields)
    return line, chain.prev


def utf8(value) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def vouchable(seq, prev, now, text, cls, decision, rule, started, duration_ms, via, params, tag, rows,
              sqlstate, message, introspection) -> bool:
    """Whether the C version must answer (True) or must refuse (False)."""
    strs = [prev, text, cls, decision, rule, via, tag, sqlstate, message, *(params or ())]
    r = repr(duration_ms)
    return (all(s is None or (isinstance(s, str) and utf8(s)) for s in strs)
            and 0 <= now < MAX_EPOCH and 0 <= started < MAX_EPOCH
            and not any(c in r for c in "eni")
            and (rows is None or -(1 << 63) <= rows < (1 << 63))
            and (params is None or isinstance(params, (list, tuple))))


@settings(max_examples=1000, deadline=None)
@given(records)
@example((1, R.GENESIS, 1_767_225_600.9999996, "select 1", None, "allowed", None, 1_767_225_600.0000004, 0.0,
          "query", [], None, 0, None, None, False))
@example((2, R.GENESIS, 1_767_225_600.0, "select '\ud800'", None, "allowed", None, 1_767_225_600.0, 0.4,
          "query", None, None, None, None, None, False))
@example((3, R.GENESIS, 1_767_225_600.0, "select $1", "read", "allowed", "r", 1_767_225_600.0, 1e-5,
          "execute", [b"\x01"], "SELECT 1", 1, None, None, True))
def test_c_line_is_the_python_line(args):
    got = R.statement_line_c(*args)
    assert (got is not None) == vouchable(*args)
    if got is not None:
        line, digest = got
        assert (line, digest) == reference(*args) == R.statement_line_py(*args)
        assert digest == hashlib.sha256(line[:-1]).hexdigest()
        assert R.canonical(orjson.loads(line)) + b"\n" == line


@settings(max_examples=300, deadline=None)
@given(ordinary_records)
def test_c_answers_for_ordinary_records(args):
    """A C path that always bailed out would pass the test above: here it must answer."""
    got = R.statement_line_c(*args)
    assert got is not None
    assert got == reference(*args)


@pytest.mark.parametrize("what, index, value", [
    ("negative now", 2, -1.0), ("now NaN", 2, math.nan), ("now inf", 2, math.inf), ("year 10000", 2, MAX_EPOCH),
    ("now a str", 2, "1"), ("started bool", 7, True), ("duration int", 8, 1), ("duration 1e-05", 8, 1e-5),
    ("duration 1e16", 8, 1e16), ("duration NaN", 8, math.nan), ("seq a float", 0, 1.0), ("seq huge", 0, 1 << 64),
    ("rows bool", 12, True), ("rows 2**63", 12, 1 << 63), ("text bytes", 3, b"x"), ("lone surrogate", 3, "\udfff"),
    ("cls surrogate", 4, "\ud800"), ("rule an int", 6, 1), ("params a generator", 10, (p for p in ["1"])),
    ("params bytes", 10, [b"1"]), ("params an int", 10, [1]), ("introspection 1", 15, 1),
    ("introspection None", 15, None), ("via None", 9, None), ("prev None", 1, None),
])
def test_refusals(what, index, value):
    args = list(R._SELF_TEST[1])
    assert R.statement_line_c(*args) is not None
    args[index] = value
    assert R.statement_line_c(*args) is None


def test_str_subclasses_are_their_text():
    class S(str):
        pass

    args = list(R._SELF_TEST[1])
    for i in (1, 3, 4, 5, 6, 9, 11):
        args[i] = S(args[i])
    args[10] = [S("x"), None]
    assert R.statement_line_c(*args) == reference(*args)


def test_largest_timestamp_and_ints():
    args = list(R._SELF_TEST[3])
    args[2] = args[7] = float(MAX_EPOCH - 1) + 0.999
    args[0], args[12] = (1 << 63) - 1, -(1 << 63)
    assert R.statement_line_c(*args) == reference(*args)
    assert b'"ts":"9999-12-31T23:59:59.99' in R.statement_line_c(*args)[0]


def test_long_text_goes_past_the_stack_buffer():
    args = list(R._SELF_TEST[1])
    args[3] = "\x01\"é" * 5000
    args[10] = ["\\" * 3000, None, "x" * 10000]
    assert R.statement_line_c(*args) == reference(*args)


@pytest.mark.parametrize("n", [0, 15, 17])
def test_wrong_argument_count_is_a_type_error(n):
    with pytest.raises(TypeError):
        R.statement_line_c(*([None] * n))


def test_keywords_are_a_type_error():
    with pytest.raises(TypeError):
        R.statement_line_c(*R._SELF_TEST[0][:-1], introspection=False)


def test_no_reference_is_kept_or_lost():
    """Answers and refusals alike leave every argument's refcount as it was."""
    text, params, item = "select 'é' " + "x" * 5, ["a" * 3, None], "b" * 4
    params.append(item)
    args = list(R._SELF_TEST[1])
    args[3], args[10] = text, params
    refused = list(args)
    refused[10] = params + [b"bytes"]
    before = [sys.getrefcount(o) for o in (text, params, item, refused[10])]
    for _ in range(10_000):
        assert R.statement_line_c(*args) is not None
        assert R.statement_line_c(*refused) is None
    assert [sys.getrefcount(o) for o in (text, params, item, refused[10])] == before


def test_chain_advance():
    chain = R.Chain()
    line, digest = R.statement_line_c(chain.seq + 1, chain.prev, *R._SELF_TEST[0][2:])
    chain.advance(digest)
    assert (chain.seq, chain.prev) == (1, R.digest(line[:-1]))
    chain.seal(1.0, {}, Ed25519PrivateKey.generate(), "rec")
    with pytest.raises(ValueError, match="sealed"):
        chain.advance(digest)


# ---------------------------------------------------------------- through the writer

@pytest.fixture
def impl(monkeypatch):
    def use(name):
        monkeypatch.setattr(R, "LINE_IMPL", name)
    return use


def test_writer_uses_the_c_line(factory, clock, impl, monkeypatch):
    impl("c")
    calls = []
    real = R.statement_line_c
    monkeypatch.setattr(R, "statement_line_c", lambda *a: calls.append(real(*a)) or calls[-1])
    rec = write_sample(factory.open(), clock)
    assert len(calls) == 6 and all(c is not None for c in calls)
    assert not rec.failed


def test_rows_sample_and_refused_records_take_the_python_path(tmp_path, key, clock, impl, keys):
    impl("c")
    rec = RecorderFactory(AuditConfig(dir=tmp_path, capture_rows=2, signing_kid="rec"), key, clock=clock).open()
    rec.start()
    assert rec.statement("select 1", rows_sample=[["1"], ["2"], ["3"]], tag="SELECT 3")
    assert rec.statement("select 1", params=[b"\x00", None], tag="SELECT 1")      # C refuses bytes
    assert rec.statement("select '\ud800'")                                         # and surrogates
    assert rec.statement("select 2", tag="SELECT 1")                                # C again
    rec.end("client_closed")
    report = verify(rec.path, keys)
    assert report.ok, report.summary()
    recs = [orjson.loads(x) for x in rec.path.read_bytes().splitlines()]
    assert recs[1]["rows_sample"] == [["1"], ["2"]]
    assert recs[2]["params"] == [{"b64": "AA=="}, None]
    assert recs[3]["text"] == "select '\\ud800'"
    assert recs[4]["seq"] == 5 and recs[4]["prev"] == R.digest(rec.path.read_bytes().splitlines()[3])


def test_c_recording_verifies_and_equals_the_python_recording(tmp_path, key, keys, impl):
    """Same session, same clock, same key: the two builders write the same file, byte for byte
    (Ed25519 signatures are deterministic), and it verifies."""
    files = {}
    for name in ("python", "c"):
        impl(name)
        clock = Clock()
        factory = RecorderFactory(AuditConfig(dir=tmp_path / name, signing_kid="rec"), key, clock=clock)
        rec = write_sample(factory.open(grant="g-1", session_id="20260101T000000-a1b2c3d4e5f6"), clock)
        files[name] = rec.path.read_bytes()
        report = verify(rec.path, keys)
        assert report.ok and report.status == "ok", report.summary()
    for line in files["c"].splitlines():
        assert R.canonical(orjson.loads(line)) == line
    assert files["c"] == files["python"]

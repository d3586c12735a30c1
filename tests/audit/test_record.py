"""record.py: canonical bytes, timestamps, tags, the chain (pure functions)."""

from __future__ import annotations

import math

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit import record as R

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text() | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_canonical_is_a_fixed_point(record):
    """Whatever the writer is given, the line it writes re-serialises to the same bytes:
    verify's canonical check can never reject an untouched recording."""
    line = R.canonical(record)
    assert b"\n" not in line
    assert R.canonical(orjson.loads(line)) == line


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False))
def test_iso_ts_round_trip(t):
    text = R.iso_ts(t)
    assert len(text) == 27 and text.endswith("Z")
    assert math.isclose(R.parse_ts(text), t, abs_tol=1e-6)


def test_iso_ts_rounds_into_the_next_second():
    assert R.iso_ts(1_767_225_600.9999996) == "2026-01-01T00:00:01.000000Z"


@pytest.mark.parametrize("bad", ["2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z", "", "x"])
def test_parse_ts_refuses(bad):
    with pytest.raises(ValueError):
        R.parse_ts(bad)


@pytest.mark.parametrize("tag, rows", [("SELECT 3", 3), ("INSERT 0 5", 5), ("UPDATE 0", 0), ("COPY 10", 10),
                                       ("BEGIN", None), ("", None), (None, None), ("FETCH 2", 2),
                                       ("CREATE TABLE", None)])
def test_rows_from_tag(tag, rows):
    assert R.rows_from_tag(tag) == rows


def test_encode_params():
    assert R.encode_params(["a", None, b"\x01", bytearray(b"\x02"), 3]) == \
        ["a", None, {"b64": "AQ=="}, {"b64": "Ag=="}, 3]


def test_chain_links_and_seal():
    key = Ed25519PrivateKey.generate()
    chain = R.Chain()
    a = chain.line(R.SESSION_START, 1.0, {"x": 1})
    b = chain.line(R.STATEMENT, 2.0, {"text": "select 1"})
    c = chain.seal(3.0, {"reason": "done"}, key, "rec")
    ra, rb, rc = (orjson.loads(x) for x in (a, b, c))
    assert (ra["seq"], rb["seq"], rc["seq"]) == (1, 2, 3)
    assert ra["prev"] == R.GENESIS and rb["prev"] == R.digest(a[:-1]) and rc["prev"] == R.digest(b[:-1])
    assert rc["type"] == R.SESSION_END and rc["key_id"] == "rec"
    assert R.signature_valid(rc, key.public_key())
    assert not R.signature_valid(rc, Ed25519PrivateKey.generate().public_key())
    assert not R.signature_valid({**rc, "reason": "other"}, key.public_key())
    assert not R.signature_valid({**rc, "sig": "not base64!"}, key.public_key())
    with pytest.raises(ValueError, match="sealed"):
        chain.seal(4.0, {}, key, "rec")

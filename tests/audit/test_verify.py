"""verify(): intact recordings pass; every kind of tampering fails naming the record."""

from __future__ import annotations

import shutil

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.audit import record as R
from proxy.audit.verify import verify

from .conftest import write_sample

pytestmark = pytest.mark.usefixtures("line_impl")    # every test with each statement-line builder


def rewrite(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_intact(sample, keys):
    report = verify(sample, keys)
    assert report.status == "ok" and report.ok and report.terminated
    assert report.failure is None and report.records == 10
    assert report.session_id == "20260101T000000-a1b2c3d4e5f6" and report.grant == "g-123"
    assert report.user == "alice" and report.end_reason == "client_closed" and report.key_id == "rec"
    assert report.summary().startswith("ok ")
    assert report.to_dict()["status"] == "ok"


def test_every_single_byte_flip_fails_naming_its_record(sample, keys):
    """Flip one bit of every byte of the file in turn: verification always fails
    and names the record (line) that holds the byte."""
    data = sample.read_bytes()
    owner = []                                  # byte offset -> 1-based line number
    for n, line in enumerate(data.split(b"\n")[:-1], 1):
        owner.extend([n] * (len(line) + 1))
    assert len(owner) == len(data)
    wrong = []
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        sample.write_bytes(tampered)
        report = verify(sample, keys)
        if report.status != "failed" or report.failure.record != owner[i]:
            wrong.append((i, owner[i], report.status, report.failure))
    sample.write_bytes(data)
    assert verify(sample, keys).ok
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("n", range(1, 10))
def test_deleting_a_line_fails_naming_it(sample, keys, n):
    lines = sample.read_bytes().splitlines()
    del lines[n - 1]
    rewrite(sample, lines)
    report = verify(sample, keys)
    assert report.status == "failed"
    assert report.failure.record == n
    assert report.failure.kind in ("missing_record", "bad_start")
    assert str(n) in report.failure.message


def test_deleting_the_last_line_leaves_an_unterminated_recording(sample, keys):
    """Without the seal, nothing says more records existed: reported as unterminated, never ok."""
    lines = sample.read_bytes().splitlines()
    rewrite(sample, lines[:-1])
    report = verify(sample, keys)
    assert report.status == "unterminated" and not report.ok and report.records == 9


@pytest.mark.parametrize("a, b", [(1, 2), (2, 3), (3, 7), (5, 9), (9, 10), (1, 10)])
def test_swapping_two_lines_fails_naming_the_first(sample, keys, a, b):
    lines = sample.read_bytes().splitlines()
    lines[a - 1], lines[b - 1] = lines[b - 1], lines[a - 1]
    rewrite(sample, lines)
    report = verify(sample, keys)
    assert report.status == "failed" and report.failure.record == a
    assert report.failure.kind == "reordered"


def test_duplicated_line(sample, keys):
    lines = sample.read_bytes().splitlines()
    lines.insert(4, lines[3])
    rewrite(sample, lines)
    report = verify(sample, keys)
    assert report.status == "failed" and report.failure.record == 5
    assert report.failure.kind == "duplicate_record"


@pytest.mark.parametrize("cut", [1, 17, 100])
def test_truncated_mid_line_is_unterminated_with_a_torn_tail(sample, keys, cut):
    data = sample.read_bytes()
    lines = data.splitlines()
    keep = sum(len(x) + 1 for x in lines[:6])
    sample.write_bytes(data[:keep + cut])
    report = verify(sample, keys)
    assert report.status == "unterminated" and report.torn_tail and report.records == 6
    assert "torn" in report.summary()


def test_truncated_at_a_line_boundary(sample, keys):
    data = sample.read_bytes()
    lines = data.splitlines()
    sample.write_bytes(b"".join(x + b"\n" for x in lines[:4]))
    report = verify(sample, keys)
    assert report.status == "unterminated" and report.records == 4 and report.statements == 3


def test_edit_that_keeps_the_json_meaning_is_caught(sample, keys):
    lines = sample.read_bytes().splitlines()
    lines[3] = lines[3].replace(b'"decision":"denied"', b'"decision": "denied"')
    rewrite(sample, lines)
    report = verify(sample, keys)
    assert report.failure.kind == "not_canonical" and report.failure.record == 4


def test_rewritten_statement_with_recomputed_chain_fails_at_the_seal(sample, keys):
    """An attacker edits a statement and recomputes every later prev: the signature catches it."""
    recs = [orjson.loads(x) for x in sample.read_bytes().splitlines()]
    recs[3]["text"] = "select 1"
    recs[3]["decision"] = "allowed"
    out, prev = [], R.GENESIS
    for r in recs:
        r["prev"] = prev
        line = R.canonical(r)
        prev = R.digest(line)
        out.append(line)
    rewrite(sample, out)
    report = verify(sample, keys)
    assert report.status == "failed" and report.failure.kind == "bad_signature"
    assert report.failure.record == 10


def test_resigned_with_another_key(sample, keys):
    recs = [orjson.loads(x) for x in sample.read_bytes().splitlines()]
    end = recs[-1]
    end.pop("sig")
    end["sig"] = R.sign(end, Ed25519PrivateKey.generate())
    rewrite(sample, [R.canonical(r) for r in recs])
    assert verify(sample, keys).failure.kind == "bad_signature"
    end.pop("sig")
    end["key_id"] = "mallory"
    end["sig"] = R.sign(end, Ed25519PrivateKey.generate())
    rewrite(sample, [R.canonical(r) for r in recs])
    report = verify(sample, keys)
    assert report.failure.kind == "unknown_key" and "mallory" in report.failure.message


def test_no_keys_cannot_verify_a_seal(sample):
    report = verify(sample, {})
    assert report.status == "failed" and report.failure.kind == "unknown_key"


def test_missing_signature(sample, keys):
    recs = [orjson.loads(x) for x in sample.read_bytes().splitlines()]
    recs[-1].pop("sig")
    rewrite(sample, [R.canonical(r) for r in recs])
    assert verify(sample, keys).failure.kind == "missing_signature"


def test_record_after_the_end(factory, clock, keys):
    rec = write_sample(factory.open(session_id="20260101T000000-aaaaaaaaaaaa"), clock)
    lines = rec.path.read_bytes().splitlines()
    extra = {"seq": 11, "ts": "2026-01-01T00:01:00.000000Z", "type": "statement",
             "prev": R.digest(lines[-1]), "text": "drop table accounts", "decision": "allowed"}
    rewrite(rec.path, lines + [R.canonical(extra)])
    report = verify(rec.path, keys)
    assert report.status == "failed" and report.failure.kind == "after_end" and report.failure.record == 11


def test_renamed_file(sample, keys, tmp_path):
    other = tmp_path / "20260101T000000-ffffffffffff.jsonl"
    shutil.copy(sample, other)
    report = verify(other, keys)
    assert report.failure.kind == "session_mismatch" and report.failure.record == 0


def test_empty_and_missing_files(tmp_path, keys):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"")
    assert verify(p, keys).failure.kind == "empty"
    assert verify(tmp_path / "nope.jsonl", keys).failure.kind == "unreadable"
    p.write_bytes(b'{"seq":1')
    assert verify(p, keys).failure.kind == "empty"


def test_unterminated_tail_edit_is_named(factory, clock, keys):
    """In an unterminated recording the last record has no successor: an edit of the
    one before it is still named."""
    rec = write_sample(factory.open(), clock, end=False)
    lines = rec.path.read_bytes().splitlines()
    lines[-2] = lines[-2].replace(b"expires in 60 s", b"expires in 99 s")
    rewrite(rec.path, lines)
    report = verify(rec.path, keys)
    assert report.status == "failed" and report.failure.record == len(lines) - 1

"""Verify a session recording: hash chain, order, completeness and signature.

Job: ``verify(path, public_keys)`` reads one recording and returns a
``Report``: ``ok`` (every line intact and chained, sealed by a valid
signature), ``unterminated`` (intact so far, but no ``session_end``: the
proxy died or the disk failed; the completed statements are all there), or
``failed`` with the first failure, naming the record (its line number, which
is also its ``seq``) and what is wrong.

Rules (see record.py for the format):

* Checks run line by line, in this order, and the first failure is reported:
  the line is a JSON object (``bad_json``), in canonical form
  (``not_canonical``: someone edited it, even if only whitespace), with the
  fields every record has (``bad_record``); its ``seq`` is its line number
  (``reordered``, ``missing_record``, ``duplicate_record``); its ``prev`` is
  the SHA-256 of the line before (``bad_chain``; the first line has
  ``prev`` = 64 zeros and is a ``session_start``, else ``bad_start``);
  nothing follows ``session_end`` (``after_end``); the ``session_end`` is
  signed (``missing_signature``) by a known key (``unknown_key``) and the
  signature holds (``bad_signature``).  A file name other than
  ``<session>.jsonl`` is ``session_mismatch``; an empty file is ``empty``.
* Which record a broken link names: altering a record changes its hash, so
  the link to the *next* record breaks; the record named is the altered one.
  If the link after the next also breaks, the next record is the one whose
  ``prev`` was edited, and it is named instead.
* A last line without its newline is a write torn by a crash: it is ignored
  and reported (``torn_tail``), and the recording is unterminated.  Except a
  whole record followed by one stray byte (``bad_newline``): the writer
  emits a record and its newline in one write, so that is an edit.
* The unsigned tail of an unterminated recording cannot be proven complete
  (its last records could have been removed) and its very last record is
  protected only by its form (no successor hashes it, no signature covers
  it): unterminated is never ``ok``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import record as R

__all__ = ["Failure", "Report", "verify"]

OK, UNTERMINATED, FAILED = "ok", "unterminated", "failed"


@dataclass(frozen=True)
class Failure:
    record: int          # 1-based line number (== the record's seq when intact); 0: the file
    kind: str            # bad_json, not_canonical, bad_chain, reordered, ... (module docstring)
    message: str


@dataclass
class Report:
    path: Path
    ok: bool = False
    terminated: bool = False
    records: int = 0                   # lines read that passed every check
    statements: int = 0                # statement records among them
    denied: int = 0
    errors: int = 0
    session_id: str | None = None
    grant: str | None = None
    user: str | None = None
    key_id: str | None = None
    end_reason: str | None = None
    first_ts: str | None = None
    last_ts: str | None = None
    torn_tail: bool = False
    failure: Failure | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.failure is not None:
            return FAILED
        return OK if self.ok else UNTERMINATED

    @property
    def unterminated(self) -> bool:
        return self.status == UNTERMINATED

    def summary(self) -> str:
        """One line for a terminal."""
        who = f"{self.session_id or self.path.name}"
        if self.failure is not None:
            where = f"record {self.failure.record}" if self.failure.record else "file"
            return f"FAILED        {who}: {where}: {self.failure.message} ({self.path})"
        counts = (f"{self.records} record{'s' * (self.records != 1)}, "
                  f"{self.statements} statement{'s' * (self.statements != 1)}")
        if self.ok:
            return f"ok            {who}: {counts}, signed by {self.key_id}, ended: {self.end_reason}"
        tail = " (last line torn by a crash, ignored)" if self.torn_tail else ""
        return (f"UNTERMINATED  {who}: {counts} intact, no signed session_end "
                f"(the proxy stopped before the session ended){tail}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "status": self.status, "ok": self.ok,
            "terminated": self.terminated, "records": self.records, "statements": self.statements,
            "denied": self.denied, "errors": self.errors, "session": self.session_id,
            "grant": self.grant, "user": self.user, "key_id": self.key_id,
            "end_reason": self.end_reason, "first_ts": self.first_ts, "last_ts": self.last_ts,
            "torn_tail": self.torn_tail,
            "failure": None if self.failure is None else {
                "record": self.failure.record, "kind": self.failure.kind,
                "message": self.failure.message},
            "notes": self.notes,
        }


_REQUIRED = ("seq", "ts", "type", "prev")


def verify(path: str | Path, public_keys: Mapping[str, Ed25519PublicKey]) -> Report:
    path = Path(path)
    report = Report(path=path)
    try:
        data = path.read_bytes()
    except OSError as e:
        report.failure = Failure(0, "unreadable", f"cannot read: {e.strerror or e}")
        return report
    if not data:
        report.failure = Failure(0, "empty", "empty file: not even a session_start")
        return report
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    elif len(lines[-1]) > 1 and lines[-1][-1:] not in (b"\x00", b"\r") \
            and _is_record(lines[-1][:-1]):
        # A whole record and one stray byte where its newline belongs.  The
        # writer emits a record and its newline in one write(2), so a crash
        # cannot leave this: the newline itself was altered.
        n = len(lines)
        return _fail(report, n, "bad_newline",
                     f"record {n} ends in a stray byte instead of its newline: the file was edited")
    else:
        report.torn_tail = True
        report.notes.append(f"line {len(lines)} has no newline: a write torn by a crash; ignored")
        lines.pop()
        if not lines:
            report.failure = Failure(0, "empty", "no complete record: only a torn first line")
            return report

    # Pass 1: parse, canonical form, shape.  Stops at the first bad line.
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines, 1):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            return _fail(report, i, "bad_json", f"line {i} is not valid JSON (altered or corrupted)")
        if not isinstance(rec, dict):
            return _fail(report, i, "bad_json", f"line {i} is not a JSON object")
        if R.canonical(rec) != line:
            return _fail(report, i, "not_canonical",
                         f"record {i} is not in canonical form: its bytes were edited")
        missing = [k for k in _REQUIRED if k not in rec]
        if missing or not isinstance(rec.get("seq"), int) or rec.get("type") not in R.TYPES:
            what = f"missing {', '.join(missing)}" if missing else "bad seq or type"
            return _fail(report, i, "bad_record", f"record {i} is malformed ({what})")
        records.append(rec)

    # Pass 2: order and completeness, from the seq numbers.
    seqs = [r["seq"] for r in records]
    for i, seq in enumerate(seqs, 1):
        if seq == i:
            continue
        if sorted(seqs) == list(range(1, len(seqs) + 1)):
            return _fail(report, i, "reordered",
                         f"record {i} holds seq {seq}: records were reordered")
        counts = Counter(seqs)
        if counts[seq] > 1:
            return _fail(report, i, "duplicate_record",
                         f"record {i} repeats seq {seq}: a record was duplicated")
        if (i == 1 or seqs[i - 2] == i - 1) and i < len(seqs) and seqs[i] == i + 1:
            return _fail(report, i, "bad_record", f"record {i} has an altered seq ({seq})")
        if seq > i:
            gone = f"seq {i}" if seq == i + 1 else f"seq {i} to {seq - 1}"
            return _fail(report, i, "missing_record",
                         f"record(s) {gone} missing before this line: deleted")
        return _fail(report, i, "reordered", f"record {i} holds seq {seq}: records were reordered")

    # Pass 3: the hash chain.
    hashes = [R.digest(line) for line in lines]
    first = records[0]
    if first["type"] != R.SESSION_START or first["prev"] != R.GENESIS:
        return _fail(report, 1, "bad_start",
                     "record 1 is not a session_start starting the chain (prev must be 64 zeros)")
    for i in range(1, len(records)):            # link (record i) -> (record i+1), 1-based
        if records[i]["prev"] == hashes[i - 1]:
            continue
        if i + 1 < len(records):
            next_breaks = records[i + 1]["prev"] != hashes[i]
        else:                                   # the link into the last record: its seal decides
            last = records[i]
            kid = last.get("key_id")
            next_breaks = last["type"] == R.SESSION_END and not (
                isinstance(kid, str) and kid in public_keys and R.signature_valid(last, public_keys[kid]))
        if next_breaks:
            return _fail(report, i + 1, "bad_chain",
                         f"record {i + 1} was altered: its prev does not match record {i}, "
                         "and it does not match what follows it")
        if i + 1 == len(records) and records[i]["type"] != R.SESSION_END:
            # The unsigned last record of an unterminated recording: nothing after
            # it tells whether record i changed or this record's prev did.
            return _fail(report, i, "bad_chain",
                         f"record {i} was altered, or the prev of record {i + 1} (the last, "
                         "unsigned record) was: the link between them is broken")
        return _fail(report, i, "bad_chain",
                     f"record {i} was altered: its SHA-256 does not match the prev "
                     f"recorded in record {i + 1}")

    # Pass 4: the end and its seal.
    for i, rec in enumerate(records, 1):
        if rec["type"] == R.SESSION_END and i != len(records):
            return _fail(report, i + 1, "after_end", f"record {i + 1} follows the session_end")
        if rec["type"] == R.SESSION_START and i != 1:
            return _fail(report, i, "bad_record", f"record {i} is a second session_start")
    _summarise(report, records)
    session = first.get("session")
    if isinstance(session, str) and path.suffix == ".jsonl" and path.stem != session:
        return _fail(report, 0, "session_mismatch",
                     f"the file is named {path.name} but records session {session}")
    last = records[-1]
    if last["type"] != R.SESSION_END:
        report.records = len(records)
        return report                               # unterminated: no failure, not ok
    n = len(records)
    if last.get("session") != session:
        return _fail(report, n, "bad_record", f"record {n}: session_end names another session")
    if "sig" not in last:
        return _fail(report, n, "missing_signature", f"record {n} (session_end) carries no signature")
    kid = last.get("key_id")
    report.key_id = kid if isinstance(kid, str) else None
    if not isinstance(kid, str) or kid not in public_keys:
        known = ", ".join(sorted(public_keys)) or "none given"
        return _fail(report, n, "unknown_key",
                     f"record {n} is signed with key {kid!r}, which is not among the known keys ({known})")
    if not R.signature_valid(last, public_keys[kid]):
        return _fail(report, n, "bad_signature",
                     f"record {n} (session_end): the signature does not verify with key {kid!r}")
    report.records = n
    report.terminated = True
    report.ok = True
    return report


def _fail(report: Report, record: int, kind: str, message: str) -> Report:
    report.failure = Failure(record, kind, message)
    report.records = max(0, record - 1)
    report.ok = False
    return report


def _summarise(report: Report, records: list[dict[str, Any]]) -> None:
    first, last = records[0], records[-1]
    report.session_id = first.get("session")
    report.grant = first.get("grant")
    report.user = first.get("user")
    report.first_ts, report.last_ts = first.get("ts"), last.get("ts")
    if last.get("type") == R.SESSION_END:
        report.end_reason = last.get("reason")
    for rec in records:
        if rec["type"] == R.STATEMENT:
            report.statements += 1
            if rec.get("decision") != "allowed":
                report.denied += 1
            elif rec.get("sqlstate"):
                report.errors += 1


def _is_record(line: bytes) -> bool:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(rec, dict) and "seq" in rec and "type" in rec

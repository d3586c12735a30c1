"""Session recordings: the record schema, canonical bytes, hash chain and seal.

Job: turn a record (a dict of fields) into the exact line that goes to disk,
link it to the line before it, and sign the last one.  Pure: no files, no
clock (time is passed in), no asyncio.  ``writer.py`` appends the lines,
``verify.py`` checks them, ``replay.py`` reads them.

Rules:

* A recording is JSON lines.  A line is ``canonical(record) + b"\\n"`` where
  ``canonical`` is ``orjson.dumps(record, option=OPT_SORT_KEYS)``: sorted
  keys, no whitespace, UTF-8.  Verification re-serialises each parsed line
  and insists on the same bytes, so an edit that keeps the JSON meaning
  (added space, reordered keys) is still caught.
* Every record carries ``seq`` (1, 2, 3 ... equal to its line number),
  ``ts`` (when it was written, ISO 8601 UTC with microseconds, ``Z``),
  ``type`` (one of ``TYPES``) and ``prev``: the hex SHA-256 of the previous
  line's bytes without its newline (``GENESIS``, 64 zeros, for the first).
* The first record is ``session_start``; the last, ``session_end``, also
  carries ``key_id`` and ``sig``: the base64 Ed25519 signature over the
  canonical bytes of the record without ``sig``.  Because ``prev`` chains back
  to the first line, the signature covers the whole recording.
* A recording without a ``session_end`` is *unterminated*: the proxy died (or
  the disk failed) before the session ended.  Its lines are still chained,
  but its tail is unsigned, so verification reports it apart from ``ok``.
* ``statement`` lines, the hot path (one per SQL statement), are built by
  the optional C extension ``proxy.audit._recline`` when it was built and
  passes its self-test on import: ``statement_line_c`` returns the exact
  bytes and digest that ``statement_line_py`` (``Chain.line`` over
  ``statement_fields``, the reference) would, or None for whatever it cannot
  vouch for (lone surrogates, bytes params, floats printed with an
  exponent ...), and the caller then takes the Python path.  ``LINE_IMPL``
  says which is in use ("c" or "python"); the writer looks it up on every
  call, so tests can swap it.

Record fields besides seq/ts/type/prev (docs/audit.md has the full table):

  session_start  v, session, grant, capture {params, rows}, client_addr, tls,
                 user, database, scope, reason, ticket, approver, backend_pid
                 (null when unknown), plus the caller's extra fields
  statement      text, class, decision ("allowed" | "denied"), rule, started,
                 duration_ms, via ("query" | "execute" | "parse" |
                 "function_call"), and when present:
                 params, tag, rows, sqlstate, message, introspection (true),
                 rows_sample
  copy           direction ("in" | "out" | "both"), bytes, [rows]
  notice         kind, message, plus the caller's extra fields
  session_end    session, reason, totals {...}, key_id, sig
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .introspection import is_introspection

__all__ = [
    "FORMAT_VERSION", "GENESIS", "TYPES", "RESERVED", "Chain", "canonical", "digest", "iso_ts",
    "parse_ts", "sign", "signature_valid", "signing_payload", "encode_params", "rows_from_tag",
    "is_introspection", "statement_fields", "statement_line_py", "statement_line_c", "LINE_IMPL",
]

FORMAT_VERSION = 1
GENESIS = "0" * 64
SESSION_START, STATEMENT, COPY, NOTICE, SESSION_END = (
    "session_start", "statement", "copy", "notice", "session_end")
TYPES = (SESSION_START, STATEMENT, COPY, NOTICE, SESSION_END)
RESERVED = frozenset(("seq", "ts", "type", "prev", "sig", "key_id"))

_SORT = orjson.OPT_SORT_KEYS


def canonical(record: Mapping[str, Any]) -> bytes:
    """The record's exact bytes (no newline).  Strings that are not valid
    UTF-8 (lone surrogates from a hostile client) are escaped rather than
    refused: a recording must never lose a statement to an encoding error."""
    try:
        return orjson.dumps(record, option=_SORT)
    except orjson.JSONEncodeError:
        return orjson.dumps(_sanitise(record), option=_SORT)


def _sanitise(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {str(k): _sanitise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitise(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 64):
        return str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def digest(line: bytes) -> str:
    """Hex SHA-256 of one line's bytes (without the newline): the next record's ``prev``."""
    return hashlib.sha256(line).hexdigest()


_ts_second: tuple[int, str] = (-1, "")   # the last whole second formatted: (second, "YYYY-MM-DDTHH:MM:SS")


def iso_ts(t: float) -> str:
    """Epoch seconds -> ``2025-01-02T03:04:05.123456Z`` (UTC, microseconds)."""
    whole = int(t // 1)
    micro = int(round((t - whole) * 1_000_000))
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    global _ts_second
    second, prefix = _ts_second
    if second != whole:
        g = time.gmtime(whole)
        prefix = "%04d-%02d-%02dT%02d:%02d:%02d" % (g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
        _ts_second = (whole, prefix)       # one assignment: threads see a consistent pair
    return "%s.%06dZ" % (prefix, micro)


_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z")


def parse_ts(text: str) -> float:
    """Inverse of ``iso_ts``.  Raises ValueError for anything else."""
    m = _ISO.fullmatch(text)
    if m is None:
        raise ValueError(f"not a recording timestamp: {text!r}")
    y, mo, d, h, mi, s, frac = m.groups()
    whole = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    return whole + (int(frac.ljust(6, "0")) / 1_000_000 if frac else 0.0)


def signing_payload(record: Mapping[str, Any]) -> bytes:
    """The bytes a ``session_end`` signature covers: the record without ``sig``."""
    return canonical({k: v for k, v in record.items() if k != "sig"})


def sign(record: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.sign(signing_payload(record))).decode("ascii")


def signature_valid(record: Mapping[str, Any], key: Ed25519PublicKey) -> bool:
    sig = record.get("sig")
    if not isinstance(sig, str):
        return False
    try:
        raw = base64.b64decode(sig, validate=True)
        key.verify(raw, signing_payload(record))
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_params(params: Iterable[Any]) -> list[Any]:
    """Bind parameters as JSON: text as str, NULL as null, binary as {"b64": ...}."""
    out: list[Any] = []
    for p in params:
        if p is None or isinstance(p, str):
            out.append(p)
        elif isinstance(p, (bytes, bytearray, memoryview)):
            out.append({"b64": base64.b64encode(bytes(p)).decode("ascii")})
        else:
            out.append(_sanitise(p))
    return out


def rows_from_tag(tag: str | None) -> int | None:
    """Row count of a CommandComplete tag: 'SELECT 3' -> 3, 'INSERT 0 5' -> 5,
    'BEGIN' -> None."""
    if not tag:
        return None
    last = tag.rpartition(" ")[2]
    if last.isdigit() and last != tag:
        return int(last)
    return None


def statement_fields(text: str, cls: str | None, decision: str, rule: str | None, started: float,
                     duration_ms: float, via: str, params: Iterable[Any] | None = None,
                     tag: str | None = None, rows: int | None = None, sqlstate: str | None = None,
                     message: str | None = None, introspection: bool = False,
                     rows_sample: Iterable[Iterable[Any]] | None = None) -> dict[str, Any]:
    """A ``statement`` record's fields once the recorder has settled them
    (``started`` epoch seconds; ``params`` and ``rows_sample`` raw, encoded
    here; the optional ones only when not None; ``introspection`` only when
    true).  ``Chain.line(STATEMENT, now, fields)`` adds seq/ts/type/prev."""
    rec: dict[str, Any] = {
        "text": text, "class": cls, "decision": decision, "rule": rule, "started": iso_ts(started),
        "duration_ms": duration_ms, "via": via,
    }
    if params is not None:
        rec["params"] = encode_params(params)
    if tag is not None:
        rec["tag"] = tag
    if rows is not None:
        rec["rows"] = rows
    if sqlstate is not None:
        rec["sqlstate"] = sqlstate
    if message is not None:
        rec["message"] = message
    if rows_sample is not None:
        rec["rows_sample"] = [encode_params(r) for r in rows_sample]
    if introspection:
        rec["introspection"] = True
    return rec


class Chain:
    """The running state of one recording: next seq and the previous line's hash.

    ``line(type, now, fields)`` fills in seq/ts/type/prev, serialises and
    advances; ``seal(now, fields, key, key_id)`` writes the signed last record;
    ``advance(digest)`` accounts for a line built elsewhere (the compiled
    statement line, made for ``seq + 1`` and ``prev``).
    ``fields`` is consumed (the caller builds a fresh dict per record).
    """

    __slots__ = ("seq", "prev", "sealed")

    def __init__(self) -> None:
        self.seq = 0
        self.prev = GENESIS
        self.sealed = False

    def line(self, rtype: str, now: float, fields: dict[str, Any]) -> bytes:
        if self.sealed:
            raise ValueError("the recording is sealed: nothing may follow session_end")
        return self._link(rtype, now, fields)

    def advance(self, line_digest: str) -> None:
        """The line for ``seq + 1`` after ``prev`` was built outside ``line()``
        (``statement_line_c``) and is being written: count it, chain to it."""
        if self.sealed:
            raise ValueError("the recording is sealed: nothing may follow session_end")
        self.seq += 1
        self.prev = line_digest

    def seal(self, now: float, fields: dict[str, Any], key: Ed25519PrivateKey, key_id: str) -> bytes:
        if self.sealed:
            raise ValueError("the recording is already sealed")
        data = self._link(SESSION_END, now, fields, signer=(key, key_id))
        self.sealed = True
        return data

    def _link(self, rtype: str, now: float, fields: dict[str, Any],
              signer: tuple[Ed25519PrivateKey, str] | None = None) -> bytes:
        """Fill in seq/ts/type/prev (and key_id/sig when signing), serialise, advance the chain."""
        self.seq += 1
        fields["seq"] = self.seq
        fields["ts"] = iso_ts(now)
        fields["type"] = rtype
        fields["prev"] = self.prev
        if signer is not None:
            key, key_id = signer
            fields["key_id"] = key_id
            fields.pop("sig", None)
            fields["sig"] = sign(fields, key)
        data = canonical(fields)
        self.prev = digest(data)
        return data + b"\n"


def statement_line_py(seq: int, prev: str, now: float, text: str, cls: str | None, decision: str,
                      rule: str | None, started: float, duration_ms: float, via: str,
                      params: Iterable[Any] | None, tag: str | None, rows: int | None,
                      sqlstate: str | None, message: str | None, introspection: bool) -> tuple[bytes, str]:
    """A statement record's line (with its newline) and digest, for a chain
    whose next line is ``seq`` after ``prev``: the reference ``statement_line_c``
    must match byte for byte (same arguments, in the same order)."""
    chain = Chain()
    chain.seq, chain.prev = seq - 1, prev
    line = chain.line(STATEMENT, now, statement_fields(
        text, cls, decision, rule, started, duration_ms, via, params, tag, rows, sqlstate, message,
        introspection))
    return line, chain.prev


_SELF_TEST = (
    (1, GENESIS, 1_767_225_600.0, "select 1", None, "allowed", None, 1_767_225_600.0, 0.0, "query",
     None, None, None, None, None, False),
    (7, "ab" * 32, 1_767_225_601.9999996, 'select $1, \'é中😀\' -- "q" \\ \x00\x1a\x7f\n\t\r\b\f/',
     "read", "allowed", "read.select", 1_767_225_600.0000004, 1.234, "execute", ["42", None, "a\"b", ""],
     "SELECT 1", 1, None, None, True),
    (123456789, "cd" * 32, 1_767_225_602.5, "delete from t", "write", "denied", "write.delete", 1_767_225_602,
     -0.0, "parse", [], None, None, "42501", "pgwarden: DELETE is write class", False),
    (3, GENESIS, 1_767_225_603.0000005, "insert", "write", "allowed", None, 1_767_225_602.0078125,
     999999999.999, "function_call", None, "INSERT 0 9223372036854775807", 9223372036854775807, "23505",
     "duplicate key", False),
)


def _passes(candidate: Any) -> bool:
    """Does ``candidate`` agree with ``statement_line_py`` on ``_SELF_TEST``?"""
    if candidate is None:
        return False
    try:
        return all(candidate(*args) == statement_line_py(*args) for args in _SELF_TEST)
    except Exception:  # noqa: BLE001 - any surprise: do not use it
        return False


try:
    from ._recline import statement_line as statement_line_c
except ImportError:        # built without a C compiler: the reference path
    statement_line_c = None
if not _passes(statement_line_c):
    statement_line_c = None

#: Which builds statement lines: "c" (``statement_line_c``) or "python" (looked up on every record).
LINE_IMPL = "c" if statement_line_c is not None else "python"
#: How the compiled line takes its SHA-256: "libcrypto" (OpenSSL's, called directly) or "hashlib".
DIGEST_IMPL = "hashlib"
if statement_line_c is not None:
    from ._recline import DIGEST_IMPL

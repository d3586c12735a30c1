"""The masked-literal key: a statement's text with its literal values masked.

Job: ``masked_key(sql)`` returns ``bytes`` such that two texts get the same
key only when PostgreSQL's scanner reads them as the same token sequence
except for the values of their literals (and their comments), or ``None``
when no key can be computed safely.  ``policy.cache`` uses it for statements
whose class does not depend on any literal's value
(``Statement.literal_independent``).

Rules (DESIGN.md, "Scopes and statements"):

* The scanner is PostgreSQL's own, as compiled into pglast
  (``pg_query_scan_tokens``), never a regular expression of ours.
* The key is the UTF-8 text cut at the literal and comment tokens; each cut
  is replaced by the token's kind (``SCONST``, ``ICONST``, ``FCONST``,
  ``BCONST``, ``XCONST``, ``COMMENT``) and the pieces are joined with NUL,
  which cannot occur in the text.  So kinds are kept (``'1'``, ``1``,
  ``1.5`` and ``$1`` never match one another), identifiers and keywords
  are kept byte for byte (``SET ROLE admin`` is not ``SET ROLE readonly``),
  and so is the whitespace between tokens: equal keys mean equal text
  outside the masked tokens, which the scanner cuts into the same tokens.
* No key (``None``): text with a NUL (the scanner would stop there), text
  that is not strict UTF-8 or that the scanner rejects (an unterminated
  literal), and text with ``UESCAPE``: there a string literal's value
  decides what the preceding Unicode identifier or string means
  (``U&"pg_read_fil!0065" UESCAPE '!'`` calls ``pg_read_file``).
  ``U&'...'`` strings are kept unmasked for the same reason.
* One number is read by the grammar itself: ``float(p)`` is ``real`` up to
  24 and ``double precision`` up to 53, and an error past that.  The
  ``ICONST`` after ``float (`` is kept in the key.  (Type modifiers that
  reach the tree, ``varchar(10)``, make the statement literal-dependent in
  the classifier instead.)
* Speed: pglast's ``scan()`` builds a Python object per token and maps byte
  offsets to characters (~5-15 µs per pgbench statement).  When pglast's
  extension module exports libpg_query's C API (it does since pglast 7),
  the scanner is called directly: through the optional C extension
  ``policy.sql._maskkey`` (built by ``pip install -e .`` when a compiler is
  present; ~1.5-3 µs), else through ctypes with the key built in Python
  (~3-9 µs).  Each fast path checks itself against ``scan()`` on import and
  is not used if they disagree; ``KEY_IMPL`` says which one runs ("c",
  "ctypes" or "pglast.scan").
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

import pglast.parser
from pglast.parser import scan

__all__ = ["masked_key", "masked_key_portable", "masked_key_ctypes", "masked_key_c", "KEY_IMPL"]

_MASKED = ("SCONST", "ICONST", "FCONST", "BCONST", "XCONST")
_COMMENTS = ("SQL_COMMENT", "C_COMMENT")
_MARKS = {name: name.encode("ascii") for name in _MASKED} | {name: b"COMMENT" for name in _COMMENTS}
_SEP = b"\x00"


def _utf8(sql: str) -> bytes | None:
    if "\x00" in sql:
        return None
    try:
        return sql.encode("utf-8", "strict")
    except UnicodeEncodeError:
        return None


def masked_key_portable(sql: str) -> bytes | None:
    """The key, computed from ``pglast.parser.scan`` (character offsets): the reference version."""
    if not isinstance(sql, str) or _utf8(sql) is None:
        return None
    try:
        tokens = scan(sql)
    except Exception:  # unterminated literal ...: no key
        return None
    parts: list[bytes] = []
    pos = 0
    before = last = ""  # the two tokens before this one, comments skipped
    for tok in tokens:
        name = tok.name
        if name == "UESCAPE":
            return None
        mark = _MARKS.get(name)
        if mark is not None and not (name == "ICONST" and last == "ASCII_40" and before == "FLOAT_P"):
            parts.append(sql[pos:tok.start].encode("utf-8"))
            parts.append(mark)
            pos = tok.end + 1
        if mark is None or name not in _COMMENTS:
            before, last = last, name
    parts.append(sql[pos:].encode("utf-8"))
    return _SEP.join(parts)


# --------------------------------------------------------------------------- fast path (ctypes)


class _ScanResult(ctypes.Structure):
    _fields_ = [("tokens", ctypes.c_void_p), ("n_tokens", ctypes.c_int), ("error", ctypes.c_void_p)]


_TOKEN = struct.Struct("=iiii")  # PgQueryScanToken: start, end (byte offsets, end exclusive), token, keyword kind


def _bind_fast() -> tuple[Callable[[str], bytes | None] | None, Callable[[str], bytes | None] | None]:
    """(the ctypes version, the C extension's version), each None when unavailable."""
    try:
        lib = ctypes.PyDLL(pglast.parser.__file__)   # already loaded: dlopen returns the same handle
        scan_tokens = lib.pg_query_scan_tokens
        free_result = lib.pg_query_free_scan_tokens_result
        token_name = lib.pg_query_token_name
    except (OSError, AttributeError):
        return None, None
    scan_tokens.restype = _ScanResult
    scan_tokens.argtypes = [ctypes.c_char_p]
    free_result.restype = None
    free_result.argtypes = [_ScanResult]
    token_name.restype = ctypes.c_char_p
    token_name.argtypes = [ctypes.c_int]
    names: dict[str, int] = {}
    for number in range(1024):
        name = token_name(number)
        if name:
            names[name.decode("ascii")] = number
    if any(n not in names for n in (*_MASKED, *_COMMENTS, "UESCAPE", "FLOAT_P", "ASCII_40")):
        return None, None
    marks = {names[n]: mark for n, mark in _MARKS.items()}
    uescape = names["UESCAPE"]
    string_at = ctypes.string_at
    unpack = _TOKEN.iter_unpack
    size = _TOKEN.size
    get_mark = marks.get

    def fast(sql: str) -> bytes | None:
        if not isinstance(sql, str):
            return None
        text = _utf8(sql)
        if text is None:
            return None
        if b"float" in text.lower():  # rare: let the reference version handle float(p)
            return masked_key_portable(sql)
        result = scan_tokens(text)
        try:
            if result.error:
                return None
            raw = string_at(result.tokens, result.n_tokens * size) if result.n_tokens else b""
        finally:
            free_result(result)
        parts: list[bytes] = []
        append = parts.append
        pos = 0
        for start, end, token, _kind in unpack(raw):
            mark = get_mark(token)
            if mark is not None:
                append(text[pos:start])
                append(mark)
                pos = end
            elif token == uescape:
                return None
        append(text[pos:])
        return _SEP.join(parts)

    compiled = None
    try:
        from policy.sql import _maskkey
    except ImportError:        # built without a C compiler
        _maskkey = None
    if _maskkey is not None:
        _maskkey.bind(ctypes.cast(scan_tokens, ctypes.c_void_p).value,
                      ctypes.cast(free_result, ctypes.c_void_p).value, marks, uescape, names["FLOAT_P"],
                      names["ASCII_40"], names["ICONST"], names[_COMMENTS[0]], names[_COMMENTS[1]])
        key = _maskkey.key

        def compiled(sql: str) -> bytes | None:
            if not isinstance(sql, str):
                return None
            text = _utf8(sql)
            return None if text is None else key(text)

    return fast, compiled


_SELF_TEST = (
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    "SELECT 'é' || $q$x$q$, 1.5e3, B'101', X'1F', E'\\n' /* c */ -- d\n, \"Ü\"(1), $1",
    "SELECT U&'\\0041', U&\"a\" UESCAPE '!'",
    "SELECT 'a'\n'b'",
    "SELECT 1::float(24), 2::FLOAT /* c */ (53), float8 '1.5', float(3)",
    "SELECT 1, -- c\n 'x' /* d */, $$y$$, 2.5",
    "SELECT 1\x00",
    "SELECT 'unterminated",
    "",
)


def _passes(candidate: Callable[[str], bytes | None] | None) -> bool:
    if candidate is None:
        return False
    try:
        return all(candidate(s) == masked_key_portable(s) for s in _SELF_TEST)
    except Exception:  # noqa: BLE001 - any surprise: do not use it
        return False


masked_key_ctypes, masked_key_c = _bind_fast()
if not _passes(masked_key_ctypes):
    masked_key_ctypes = masked_key_c = None
elif not _passes(masked_key_c):
    masked_key_c = None

#: ``masked_key(sql) -> bytes | None``: the fastest version that passed its self-test.
masked_key = masked_key_c or masked_key_ctypes or masked_key_portable
KEY_IMPL = "c" if masked_key_c else "ctypes" if masked_key_ctypes else "pglast.scan"

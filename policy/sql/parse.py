"""The one place pgwarden hands SQL text to pglast.

Job: ``parse(sql, max_length=...)`` returns pglast's ``RawStmt`` tuple, or
raises ``Unparseable`` with a reason a user can read and a rule id.

Rules:

* This module is the ONLY call site of ``pglast.parse_sql`` in pgwarden.
* Checks before parsing, cheapest first: the text must be ``str``; no longer
  than ``max_length`` characters (the message names the limit); no NUL
  character (the C parser would silently stop at it, STYLE.md §5); encodable
  as strict UTF-8 (a lone surrogate is refused, never escaped).
* Every exception from pglast is caught and becomes ``Unparseable``: fail
  closed.  ``Exception`` covers ``ParseError``, ``UnicodeError``,
  ``RecursionError`` and ``MemoryError``.
* Text that is empty, whitespace, comments or semicolons parses to ``()``:
  an empty query, which the caller allows (DESIGN.md, "Decisions").

Thread note for the caller (the proxy).  pglast converts its parse tree to
Python objects recursively in C; a deep expression (``SELECT 1+1+...`` with
~30 000 terms, ~60 KB) overflows an 8 MB main-thread stack and kills the
process with SIGSEGV, which no ``except`` can catch.  ``parse`` itself is
thread-agnostic and pure; the proxy must bound ``max_length`` and run long
text on a worker thread created after ``threading.stack_size(64 MiB)`` (where
64 000 terms parse in ~3 s).  Short text (a few KiB) is safe inline.
"""

from __future__ import annotations

from pglast import ast, parse_sql
from pglast.parser import ParseError

__all__ = ["DEFAULT_MAX_LENGTH", "Unparseable", "parse"]

#: Default cap on the text classified, in characters (STYLE.md §5: 64 KiB).
DEFAULT_MAX_LENGTH = 65536


class Unparseable(ValueError):
    """The text cannot be classified; ``reason`` says why, ``rule_id`` names the check."""

    def __init__(self, reason: str, rule_id: str = "parse.error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule_id = rule_id


def parse(sql: str, *, max_length: int) -> tuple[ast.RawStmt, ...]:
    """Parse ``sql`` into raw statements; ``()`` for an empty query."""
    if not isinstance(sql, str):
        raise Unparseable(f"query text must be str, not {type(sql).__name__}", "parse.type")
    if len(sql) > max_length:
        raise Unparseable(
            f"query text is {len(sql)} characters long; pgwarden classifies at most "
            f"{max_length} characters",
            "parse.too_long",
        )
    if "\x00" in sql:
        raise Unparseable("query text contains a NUL character", "parse.nul")
    try:
        sql.encode("utf-8", "strict")
    except UnicodeEncodeError as e:
        raise Unparseable(
            f"query text is not valid UTF-8 ({e.reason} at character {e.start})", "parse.encoding"
        ) from None
    try:
        return parse_sql(sql)
    except ParseError as e:
        raise Unparseable(f"cannot parse query: {e}", "parse.syntax") from None
    except Exception as e:  # fail closed on anything pglast raises
        raise Unparseable(f"cannot parse query ({type(e).__name__}: {e})", "parse.error") from None

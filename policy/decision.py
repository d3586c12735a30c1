"""Decisions: may this query string run under this grant's scope?

Job: ``decide(scope, classified)`` turns a ``Classified`` query string into
one ``Decision``; ``decide_each`` gives one per statement (for audit).

Rules (DESIGN.md, "Scopes and statements"):

* A query string is allowed only if every statement in it is.  The decision
  for a denied string is the first denied statement's.
* The empty query (no statements) is allowed in every scope: the server
  answers EmptyQueryResponse and nothing runs.
* A denial carries SQLSTATE 42501 and a message naming the statement, its
  class, the grant's scope, the narrowest scope that would allow it (or that
  none does) and the rule id, e.g.
  ``pgwarden: INSERT is write class; this grant's scope is read (write would
  allow it) [rule write.insert]``.  The message never quotes literal values
  of the query beyond what the classifier's reason names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from policy.scopes import DEFAULT_SCOPES, Scope, scope_allowing
from policy.sql.classes import RANK, StatementClass
from policy.sql.classify import Classified, Statement

__all__ = ["Decision", "decide", "decide_each", "DENIED_SQLSTATE", "EMPTY_RULE"]

DENIED_SQLSTATE = "42501"  # insufficient_privilege
EMPTY_RULE = "empty.query"


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on a query string (or one statement of it)."""

    allowed: bool
    statement_class: StatementClass | None  # None for the empty query
    rule_id: str
    message: str
    sqlstate: str = DENIED_SQLSTATE
    statement_index: int | None = None      # 0-based index of the deciding statement


def _message(stmt: Statement, scope: Scope, scopes: Mapping[str, Scope], index: int, count: int) -> str:
    where = f"statement {index + 1} of {count}: " if count > 1 else ""
    detail = f" ({stmt.reason})" if stmt.reason else ""
    cls = stmt.statement_class
    allowing = scope_allowing(cls, scopes)
    hint = f"{allowing} would allow it" if allowing is not None else "no scope allows it"
    if cls is StatementClass.UNKNOWN:
        head = f"pgwarden: {where}cannot classify {stmt.tag}{detail}, so it is denied"
    else:
        head = f"pgwarden: {where}{stmt.tag} is {cls} class{detail}"
    return f"{head}; this grant's scope is {scope.name} ({hint}) [rule {stmt.rule_id}]"


def _one(stmt: Statement, scope: Scope, scopes: Mapping[str, Scope], index: int, count: int) -> Decision:
    cls = stmt.statement_class
    if scope.allows(cls):
        return Decision(True, cls, stmt.rule_id,
                        f"{stmt.tag} is {cls} class; scope {scope.name} allows it [rule {stmt.rule_id}]",
                        "00000", index)
    return Decision(False, cls, stmt.rule_id, _message(stmt, scope, scopes, index, count),
                    DENIED_SQLSTATE, index)


def decide_each(
    scope: Scope, classified: Classified, *, scopes: Mapping[str, Scope] = DEFAULT_SCOPES
) -> tuple[Decision, ...]:
    """One decision per statement, in order (``()`` for the empty query)."""
    n = len(classified.statements)
    return tuple(_one(s, scope, scopes, i, n) for i, s in enumerate(classified.statements))


def decide(scope: Scope, classified: Classified, *, scopes: Mapping[str, Scope] = DEFAULT_SCOPES) -> Decision:
    """Allowed only if every statement is; otherwise the first denial.

    ``scopes`` is the set the "would allow it" hint is chosen from.
    """
    if classified.empty:
        return Decision(True, None, EMPTY_RULE, "empty query; nothing runs", "00000", None)
    decisions = decide_each(scope, classified, scopes=scopes)
    for d in decisions:
        if not d.allowed:
            return d
    # Allowed: report the strongest statement (what an audit line most needs to show).
    best = decisions[0]
    for d in decisions[1:]:
        if RANK[d.statement_class] > RANK[best.statement_class]:  # type: ignore[index]
            best = d
    return best

"""Statement classes: the vocabulary shared by the classifier, scopes and decisions.

Job: define ``StatementClass`` and the order used to combine verdicts.

Rules:

* A statement gets exactly one class.  When several rules apply to one
  statement (its type says READ, a function it calls says ADMIN), the
  strongest wins, in the order of ``RANK``: TRANSACTION < READ < TWO_PHASE <
  WRITE < DDL < ADMIN < UNKNOWN.
* ADMIN and UNKNOWN are allowed by no scope, ever (``policy.scopes`` refuses a
  configuration that tries).  UNKNOWN means "pgwarden could not classify it"
  (parse error, unknown node, EXECUTE of a name it never saw ...): fail closed.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["StatementClass", "RANK", "NEVER_ALLOWED", "Verdict", "stronger"]


class StatementClass(str, enum.Enum):
    """What a statement can do; the value is the name used in messages and config."""

    TRANSACTION = "transaction"  # transaction control and harmless session settings
    READ = "read"
    TWO_PHASE = "two-phase"      # PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED
    WRITE = "write"
    DDL = "ddl"
    ADMIN = "admin"              # never allowed
    UNKNOWN = "unknown"          # not classified: never allowed (fail closed)

    def __str__(self) -> str:
        return self.value


RANK: dict[StatementClass, int] = {cls: i for i, cls in enumerate(StatementClass)}

NEVER_ALLOWED = frozenset({StatementClass.ADMIN, StatementClass.UNKNOWN})


def stronger(a: StatementClass, b: StatementClass) -> bool:
    """True when ``a`` outranks ``b`` (ties are not stronger)."""
    return RANK[a] > RANK[b]


class Verdict(NamedTuple):
    """One rule's finding: the class, the rule id and a short human reason."""

    statement_class: StatementClass
    rule_id: str
    reason: str

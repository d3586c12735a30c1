"""The figures that tell whether just-in-time access works (``pgwarden report``).

Job: from grants and their sessions, compute grants by scope and state,
approval latency, session duration, grants never used and break-glass grants
awaiting review.  Pure: the caller reads the store and passes ``now``.

Definitions (stated so the numbers can be checked by hand):

* state is the effective state at ``now`` (an approved grant past its expiry
  counts as expired);
* approval latency is ``approved_at - created_at`` over grants approved by a
  person (policy approvals, "auto" and "break-glass", take no time and would
  only flatter the figure);
* p95 is the nearest-rank percentile: the value at rank ceil(0.95 * n);
* session duration is ``ended_at - started_at`` over sessions that ended;
* a grant never used was approved, is over (expired, revoked or ended) and
  had no session; break-glass grants awaiting review are listed, whatever
  their state, until someone reviews them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from policy.grants import AUTO_APPROVER, BREAK_GLASS_APPROVER, Grant, GrantState, effective_state

from .base import SessionRecord

__all__ = ["compute_report", "percentile"]

_OVER = {GrantState.EXPIRED, GrantState.REVOKED, GrantState.ENDED}


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _summary(values: list[float], *, p95: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"count": len(values),
                           "median_s": statistics.median(values) if values else None}
    if p95:
        out["p95_s"] = percentile(values, 95)
    return out


def compute_report(grants: Iterable[Grant], sessions: Mapping[str, Sequence[SessionRecord]], *,
                   now: float) -> dict[str, Any]:
    """``sessions`` maps grant id to its sessions (missing: none)."""
    grants = list(grants)
    by_scope: dict[str, dict[str, int]] = {}
    by_state: dict[str, int] = {}
    latencies: list[float] = []
    durations: list[float] = []
    never_used: list[str] = []
    awaiting: list[dict[str, Any]] = []
    for g in grants:
        state = effective_state(g, now).value
        by_scope.setdefault(g.scope, {})
        by_scope[g.scope][state] = by_scope[g.scope].get(state, 0) + 1
        by_state[state] = by_state.get(state, 0) + 1
        if g.approved_at is not None and g.approver not in (AUTO_APPROVER, BREAK_GLASS_APPROVER, None):
            latencies.append(g.approved_at - g.created_at)
        own = sessions.get(g.id, ())
        durations += [s.ended_at - s.started_at for s in own if s.ended_at is not None]
        if g.approved_at is not None and effective_state(g, now) in _OVER and not own:
            never_used.append(g.id)
        if g.awaiting_review:
            awaiting.append({"id": g.id, "requester": g.requester, "subject": g.subject,
                             "database": g.database, "scope": g.scope, "state": state,
                             "approved_at": g.approved_at, "reason": g.reason,
                             "sessions": len(own)})
    return {
        "grants": len(grants),
        "by_state": dict(sorted(by_state.items())),
        "by_scope": {scope: dict(sorted(states.items())) for scope, states in sorted(by_scope.items())},
        "approval_latency": _summary(latencies, p95=True),
        "session_duration": _summary(durations, p95=False),
        "never_used": {"count": len(never_used), "grants": never_used},
        "break_glass_awaiting_review": awaiting,
    }

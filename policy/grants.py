"""Grants: the just-in-time access lifecycle, as data and pure functions.

Job: say what a grant is, which state changes are legal, who may make them,
and whether a grant lets a client connect at a given moment.

Rules:

* Rule 1: every state change of a grant goes through ``apply``, and ``apply``
  only follows ``TRANSITIONS``.  The table is the single source of truth
  (docs/grants.md draws its diagram from it); a transition written as code
  elsewhere is a bug.
* Rule 2: pure.  Stdlib only; no sockets, no asyncio, no storage, and the
  clock is never read: every function that needs the time takes ``now`` (a
  UNIX timestamp, like ``policy.tokens``).
* Rule 3: refusals are ``GrantError`` with a ``code`` and a message that says
  why (state and event, the scope's maximum, the approvers allowed ...).
  Connect-time checks return the reason as text instead of raising: the
  proxy turns it into a FATAL.

Theory of operation.  A grant is asked for (``GrantRules.request``) in state
``requested``.  Policy then approves it at once (``auto_approve``: the
scope's approval is "auto"; ``break_glass``: issued at once and flagged for
review) or a person does (``approve``, never the requester or the subject
under the two-person rule), or it is denied.  The first token minted for an
approved grant makes it ``active``.  It stops by time (``expire``), by the
requester finishing early (``end``) or by an approver (``revoke``).  Time is
also read lazily: a grant whose ``expires_at`` has passed is *effectively*
expired (``effective_state``) even before anyone records the ``expire``
event, so a store that is never swept still refuses it.

Windows.  ``not_before``/``expires_at`` are fixed at request time for a
scheduled grant (a start in the future: a nightly job's window).  For a
grant meant to start now, approval moves the window to start at approval,
so a request for 30 minutes approved 10 minutes later still gives 30.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

__all__ = [
    "GrantState", "Grant", "Change", "GrantError", "TRANSITIONS", "EVENTS",
    "TERMINAL", "LIVE", "AUTO_APPROVER", "BREAK_GLASS_APPROVER",
    "apply", "effective_state", "check_for_connect", "new_grant_id", "format_span",
    "GrantPolicy", "GrantRules", "DEFAULT_POLICIES",
]


class GrantState(str, Enum):
    REQUESTED = "requested"
    APPROVED = "approved"
    DENIED = "denied"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    ENDED = "ended"

    def __str__(self) -> str:
        return self.value


S = GrantState

# (state, event) -> new state.  Everything not listed is refused.
TRANSITIONS: dict[tuple[GrantState, str], GrantState] = {
    (S.REQUESTED, "approve"): S.APPROVED,
    (S.REQUESTED, "auto_approve"): S.APPROVED,   # scope approval = "auto"
    (S.REQUESTED, "break_glass"): S.APPROVED,    # issued at once, flagged for review
    (S.REQUESTED, "deny"): S.DENIED,
    (S.REQUESTED, "end"): S.ENDED,               # the requester withdraws
    (S.REQUESTED, "expire"): S.EXPIRED,          # nobody approved it in time
    (S.APPROVED, "issue"): S.ACTIVE,             # first token minted
    (S.ACTIVE, "issue"): S.ACTIVE,               # another token for the same grant
    (S.APPROVED, "revoke"): S.REVOKED,
    (S.ACTIVE, "revoke"): S.REVOKED,
    (S.APPROVED, "end"): S.ENDED,
    (S.ACTIVE, "end"): S.ENDED,
    (S.APPROVED, "expire"): S.EXPIRED,
    (S.ACTIVE, "expire"): S.EXPIRED,
    # A break-glass grant is reviewed after the fact, whatever became of it.
    (S.APPROVED, "review"): S.APPROVED,
    (S.ACTIVE, "review"): S.ACTIVE,
    (S.EXPIRED, "review"): S.EXPIRED,
    (S.REVOKED, "review"): S.REVOKED,
    (S.ENDED, "review"): S.ENDED,
}

EVENTS = tuple(sorted({event for _, event in TRANSITIONS}))
TERMINAL = frozenset({S.DENIED, S.EXPIRED, S.REVOKED, S.ENDED})
LIVE = frozenset({S.APPROVED, S.ACTIVE})          # may connect (inside the window)
_TIMED = frozenset({S.REQUESTED, S.APPROVED, S.ACTIVE})  # become expired by time

AUTO_APPROVER = "auto"
BREAK_GLASS_APPROVER = "break-glass"
_SYSTEM_ACTORS = frozenset({AUTO_APPROVER, BREAK_GLASS_APPROVER})


class GrantError(Exception):
    """A refused request or state change.  ``code`` names the rule:
    illegal_transition, unknown_scope, unknown_database, duration,
    start_in_past, not_allowed, self_approval, missing_reason, invalid."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Change:
    """One state change: what ``apply`` did, for the store's event history."""

    event: str
    actor: str
    at: float
    from_state: GrantState | None
    to_state: GrantState
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grant:
    """A grant and the evidence of its life.  Times are UNIX timestamps.

    ``version`` counts changes (1 after ``request``); stores use it with the
    state for compare-and-set.  ``last_change`` is the change ``apply`` just
    made (None for a grant read back from a store)."""

    id: str
    requester: str
    subject: str
    database: str
    scope: str
    not_before: float
    expires_at: float
    duration: float
    reason: str
    ticket: str | None
    state: GrantState
    created_at: float
    approver: str | None = None
    break_glass: bool = False
    reviewed_by: str | None = None
    reviewed_at: float | None = None
    approved_at: float | None = None
    denied_at: float | None = None
    denied_by: str | None = None
    deny_reason: str | None = None
    issued_at: float | None = None
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    ended_at: float | None = None
    ended_by: str | None = None
    version: int = 1
    last_change: Change | None = field(default=None, compare=False, repr=False)

    @property
    def awaiting_review(self) -> bool:
        return self.break_glass and self.reviewed_by is None


def new_grant_id() -> str:
    """A fresh grant id: ``g`` and 12 random hex digits (short enough to type)."""
    return "g" + secrets.token_hex(6)


def _ts(t: float) -> str:
    """Same format as policy.tokens.format_ts (not imported: that module pulls
    in PyJWT, which grants do not need)."""
    try:
        return datetime.fromtimestamp(int(t), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return repr(t)


def format_span(seconds: float) -> str:
    """``1h30m``, ``45m``, ``90s``: the inverse of tokens.parse_duration."""
    s = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    if s or not parts:
        parts.append(f"{s}s")
    return "".join(parts)


# ------------------------------------------------------------ state and time


def effective_state(grant: Grant, now: float) -> GrantState:
    """The state at ``now``: a requested, approved or active grant whose
    expiry has passed is expired, recorded or not."""
    if grant.state in _TIMED and now >= grant.expires_at:
        return S.EXPIRED
    return grant.state


def apply(grant: Grant, event: str, *, actor: str, now: float, **details: Any) -> Grant:
    """Return ``grant`` after ``event`` by ``actor`` at ``now``, or raise
    ``GrantError`` naming the state and the event.

    This checks the table and the facts each event needs (a reason for deny
    and revoke, break-glass for review, a time past expiry for expire); who
    may act is ``GrantRules``' job.  ``details`` are kept in ``last_change``
    for the event history."""
    if not isinstance(actor, str) or not actor:
        raise GrantError("the acting user must be named", "invalid")
    state = effective_state(grant, now)
    if event == "expire":
        if now < grant.expires_at:
            raise GrantError(f"grant {grant.id} does not expire before {_ts(grant.expires_at)}",
                             "illegal_transition")
        state = grant.state            # the recorded state is what expires
    new = TRANSITIONS.get((state, event))
    if new is None:
        if state is S.EXPIRED and grant.state is not S.EXPIRED:
            why = f"grant {grant.id} expired at {_ts(grant.expires_at)}"
        else:
            why = f"grant {grant.id} is {state.value}"
        raise GrantError(f"cannot {event.replace('_', ' ')}: {why} "
                         f"(no transition from state {state.value} on event {event})",
                         "illegal_transition")
    changes: dict[str, Any] = {}
    if event in ("approve", "auto_approve", "break_glass"):
        changes["approver"] = {"approve": actor, "auto_approve": AUTO_APPROVER,
                               "break_glass": BREAK_GLASS_APPROVER}[event]
        changes["approved_at"] = now
        if event == "break_glass":
            changes["break_glass"] = True
        if grant.not_before <= now:    # not scheduled: the window starts now
            changes["not_before"] = now
            changes["expires_at"] = now + grant.duration
    elif event == "deny":
        changes.update(denied_at=now, denied_by=actor, deny_reason=_reason(details, "deny"))
    elif event == "issue":
        if grant.issued_at is None:
            changes["issued_at"] = now
    elif event == "revoke":
        changes.update(revoked_at=now, revoked_by=actor, revoke_reason=_reason(details, "revoke"))
    elif event == "end":
        changes.update(ended_at=now, ended_by=actor)
    elif event == "review":
        if not grant.break_glass:
            raise GrantError(f"grant {grant.id} is not a break-glass grant: nothing to review",
                             "illegal_transition")
        if grant.reviewed_by is not None:
            raise GrantError(f"grant {grant.id} was already reviewed by {grant.reviewed_by} "
                             f"at {_ts(grant.reviewed_at or 0)}", "illegal_transition")
        changes.update(reviewed_by=actor, reviewed_at=now)
    change = Change(event=event, actor=actor, at=now, from_state=grant.state, to_state=new,
                    details=dict(details))
    return replace(grant, state=new, version=grant.version + 1, last_change=change, **changes)


def _reason(details: dict[str, Any], event: str) -> str:
    reason = details.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise GrantError(f"a reason is required to {event} a grant", "missing_reason")
    return reason.strip()


def check_for_connect(grant: Grant, now: float, *, user: str | None = None,
                      database: str | None = None, scope: str | None = None) -> str | None:
    """None if ``grant`` lets a client connect at ``now``, else the reason.

    The proxy calls this with the grant named by the token's ``jti``; passing
    the token's ``sub``/``db``/``scope`` also checks that the token matches
    the grant."""
    state = effective_state(grant, now)
    g = grant.id
    if state is S.REVOKED:
        return (f"grant {g} revoked by {grant.revoked_by} at {_ts(grant.revoked_at or 0)}: "
                f"{grant.revoke_reason}")
    if state is S.ENDED:
        return f"grant {g} ended by {grant.ended_by} at {_ts(grant.ended_at or 0)}"
    if state is S.EXPIRED:
        return f"grant {g} expired at {_ts(grant.expires_at)}"
    if state is S.DENIED:
        return f"grant {g} was denied by {grant.denied_by} at {_ts(grant.denied_at or 0)}: {grant.deny_reason}"
    if state not in LIVE:
        return f"grant {g} is not approved (state {state.value})"
    if now < grant.not_before:
        return f"grant {g} not valid before {_ts(grant.not_before)}"
    for what, claimed, granted in (("user", user, grant.subject), ("database", database, grant.database),
                                   ("scope", scope, grant.scope)):
        if claimed is not None and claimed != granted:
            return f"grant {g} is for {what} {granted!r}, not {claimed!r}"
    return None


# -------------------------------------------------------------------- policy


@dataclass(frozen=True)
class GrantPolicy:
    """What one scope's grants need.  ``approvers`` empty means any user
    (two-person rule still applies); entries are user names or ``group:NAME``."""

    scope: str
    max_duration: float
    approval: str = "required"              # "auto" | "required"
    approvers: tuple[str, ...] = ()
    two_person: bool = True
    break_glass: bool = False

    def __post_init__(self) -> None:
        if self.approval not in ("auto", "required"):
            raise ValueError(f"approval must be 'auto' or 'required', not {self.approval!r}")
        if not self.max_duration > 0:
            raise ValueError("max_duration must be greater than zero")


DEFAULT_POLICIES = {
    "read": GrantPolicy("read", 8 * 3600.0, "auto"),
    "write": GrantPolicy("write", 2 * 3600.0, "required"),
    "ddl": GrantPolicy("ddl", 2 * 3600.0, "required"),
}


@dataclass(frozen=True)
class GrantRules:
    """The grants section of the config: a policy per scope, the groups that
    ``group:NAME`` approvers refer to, and an optional database allow-list
    (None: any database).  Each method checks who may act, then ``apply``."""

    policies: dict[str, GrantPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    databases: tuple[str, ...] | None = None

    def policy(self, scope: str) -> GrantPolicy:
        try:
            return self.policies[scope]
        except KeyError:
            known = ", ".join(sorted(self.policies)) or "none"
            raise GrantError(f"unknown scope {scope!r} (known: {known})", "unknown_scope") from None

    def approvers(self, scope: str) -> frozenset[str] | None:
        """The users who may approve ``scope`` (groups resolved), or None for anyone."""
        pol = self.policy(scope)
        if not pol.approvers:
            return None
        users: set[str] = set()
        for entry in pol.approvers:
            if entry.startswith("group:"):
                users.update(self.groups.get(entry[len("group:"):], ()))
            else:
                users.add(entry)
        return frozenset(users)

    # ----------------------------------------------------------- requesting

    def request(self, *, requester: str, database: str, scope: str, duration: float, reason: str,
                now: float, subject: str | None = None, ticket: str | None = None,
                not_before: float | None = None, break_glass: bool = False,
                grant_id: str | None = None) -> Grant:
        """A new grant in state ``requested``, or ``GrantError`` saying why not
        (unknown scope or database, duration over the scope's maximum, start
        in the past, no reason, break-glass not allowed for the scope)."""
        pol = self.policy(scope)
        for name, value in (("requester", requester), ("database", database)):
            if not isinstance(value, str) or not value.strip():
                raise GrantError(f"{name} must be given", "invalid")
        subject = subject or requester
        if self.databases is not None and database not in self.databases:
            raise GrantError(f"unknown database {database!r} (grants are given for: "
                             f"{', '.join(self.databases) or 'none'})", "unknown_database")
        if not isinstance(reason, str) or not reason.strip():
            raise GrantError("a reason is required: say why access is needed", "missing_reason")
        if not isinstance(duration, (int, float)) or isinstance(duration, bool) or not duration > 0:
            raise GrantError("duration must be greater than zero", "duration")
        if duration > pol.max_duration:
            raise GrantError(f"duration {format_span(duration)} is over the maximum for scope {scope!r} "
                             f"({format_span(pol.max_duration)})", "duration")
        start = now if not_before is None else float(not_before)
        if start < now:
            raise GrantError(f"start {_ts(start)} is in the past (now {_ts(now)})", "start_in_past")
        if break_glass and not pol.break_glass:
            raise GrantError(f"break-glass is not allowed for scope {scope!r}", "not_allowed")
        return Grant(
            id=grant_id or new_grant_id(), requester=requester, subject=subject, database=database,
            scope=scope, not_before=start, expires_at=start + float(duration), duration=float(duration),
            reason=reason.strip(), ticket=ticket or None, state=S.REQUESTED, created_at=now,
            break_glass=break_glass,
            last_change=Change("request", requester, now, None, S.REQUESTED,
                               {"subject": subject, "database": database, "scope": scope,
                                "duration": float(duration), "not_before": start,
                                "break_glass": break_glass}),
        )

    def initial_event(self, grant: Grant) -> str | None:
        """What policy does with a fresh request: "break_glass", "auto_approve"
        or None (it waits for a person)."""
        if grant.break_glass:
            return "break_glass"
        if self.policy(grant.scope).approval == "auto":
            return "auto_approve"
        return None

    # ------------------------------------------------------------ deciding

    def may_approve(self, grant: Grant, actor: str, verb: str = "approve") -> GrantError | None:
        """None if ``actor`` may approve (or review) ``grant``, else the refusal."""
        pol = self.policy(grant.scope)
        if actor in _SYSTEM_ACTORS:
            return GrantError(f"{actor!r} is reserved for policy decisions", "not_allowed")
        if pol.two_person and actor in (grant.requester, grant.subject):
            whose = "their own request" if actor == grant.requester else "access for themselves"
            return GrantError(f"{actor} cannot {verb} grant {grant.id}: two-person rule "
                              f"(nobody may {verb} {whose})", "self_approval")
        allowed = self.approvers(grant.scope)
        if allowed is not None and actor not in allowed:
            return GrantError(f"{actor} is not allowed to {verb} scope {grant.scope!r} grants "
                              f"(approvers: {', '.join(pol.approvers)})", "not_allowed")
        return None

    def _may_act_as_approver(self, grant: Grant, actor: str, verb: str) -> None:
        allowed = self.approvers(grant.scope)
        if actor in _SYSTEM_ACTORS or (allowed is not None and actor not in allowed):
            raise GrantError(f"{actor} is not allowed to {verb} scope {grant.scope!r} grants "
                             f"(approvers: {', '.join(self.policy(grant.scope).approvers)})",
                             "not_allowed")

    def approve(self, grant: Grant, *, actor: str, now: float) -> Grant:
        refusal = self.may_approve(grant, actor)
        if refusal is not None:
            raise refusal
        return apply(grant, "approve", actor=actor, now=now)

    def deny(self, grant: Grant, *, actor: str, now: float, reason: str) -> Grant:
        self._may_act_as_approver(grant, actor, "deny")
        return apply(grant, "deny", actor=actor, now=now, reason=reason)

    def revoke(self, grant: Grant, *, actor: str, now: float, reason: str) -> Grant:
        """Approvers revoke (their own grants too: revoking only takes access away)."""
        self._may_act_as_approver(grant, actor, "revoke")
        return apply(grant, "revoke", actor=actor, now=now, reason=reason)

    def end(self, grant: Grant, *, actor: str, now: float) -> Grant:
        """The requester (or the subject) is done early, or withdraws a request."""
        if actor not in (grant.requester, grant.subject):
            raise GrantError(f"only the requester ({grant.requester}) or subject ({grant.subject}) "
                             f"may end grant {grant.id}; approvers revoke", "not_allowed")
        return apply(grant, "end", actor=actor, now=now)

    def issue(self, grant: Grant, *, actor: str, now: float) -> Grant:
        """Mark a token minted for ``grant`` (the first one makes it active).
        A scheduled grant's token may be fetched before its window opens: the
        token's ``nbf`` (and ``check_for_connect``) hold it until then."""
        if actor not in (grant.requester, grant.subject):
            raise GrantError(f"only the requester ({grant.requester}) or subject ({grant.subject}) "
                             f"may take the token of grant {grant.id}", "not_allowed")
        return apply(grant, "issue", actor=actor, now=now)

    def review(self, grant: Grant, *, actor: str, now: float) -> Grant:
        """Close the review of a break-glass grant: an approver, not its requester."""
        refusal = self.may_approve(grant, actor, "review")
        if refusal is not None:
            raise refusal
        return apply(grant, "review", actor=actor, now=now)

    def may_issue_directly(self, *, actor: str, subject: str, scope: str) -> str | None:
        """Automation (``pgwarden issue``): a pre-approved grant in one step is
        allowed when the scope is "auto", or when ``actor`` is an allowed
        approver issuing for another identity (two-person: not for itself)."""
        pol = self.policy(scope)
        if pol.approval == "auto":
            return None
        allowed = self.approvers(scope)
        if actor in _SYSTEM_ACTORS or (allowed is not None and actor not in allowed):
            return (f"{actor} may not issue scope {scope!r} grants directly: the scope needs "
                    f"approval and {actor} is not an approver ({', '.join(pol.approvers) or 'anyone else'})")
        if pol.two_person and actor == subject:
            return (f"{actor} cannot issue a scope {scope!r} grant to themselves: two-person rule "
                    "(request it and have someone else approve)")
        return None

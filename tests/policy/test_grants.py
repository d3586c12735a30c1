"""Tests for policy.grants: every transition, every refusal, pure (no store, no clock)."""

from __future__ import annotations

import ast
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from policy import grants as grants_mod
from policy.grants import (
    AUTO_APPROVER,
    BREAK_GLASS_APPROVER,
    EVENTS,
    TRANSITIONS,
    Grant,
    GrantError,
    GrantPolicy,
    GrantRules,
    GrantState,
    apply,
    check_for_connect,
    effective_state,
    new_grant_id,
)

S = GrantState
NOW = 1_796_115_600.0  # 2026-12-01T09:00:00Z
T = "2026-12-01T09"    # prefix of format_ts around NOW
HOUR = 3600.0

RULES = GrantRules(
    policies={
        "read": GrantPolicy("read", 8 * HOUR, "auto"),
        "write": GrantPolicy("write", 2 * HOUR, "required", approvers=("group:dba", "dave"), break_glass=True),
        "ddl": GrantPolicy("ddl", 2 * HOUR, "required"),
        "solo": GrantPolicy("solo", HOUR, "required", approvers=("alice", "bob"), two_person=False),
    },
    groups={"dba": ("bob", "carol")},
    databases=("appdb", "otherdb"),
)


def req(**kw) -> Grant:
    args = dict(requester="alice", database="appdb", scope="write", duration=1800.0,
                reason="INC-1 fix orders", ticket="INC-1", now=NOW, grant_id="g1")
    args.update(kw)
    return RULES.request(**args)


def in_state(state: GrantState, *, break_glass: bool = False) -> Grant:
    """A grant brought to ``state`` through the legal path (all at NOW + 60)."""
    g = req(break_glass=break_glass)
    at = NOW + 60
    if state is S.REQUESTED:
        return g
    if state is S.DENIED:
        return apply(g, "deny", actor="bob", now=at, reason="not now")
    g = apply(g, "break_glass", actor="alice", now=at) if break_glass else apply(g, "approve", actor="bob", now=at)
    if state is S.APPROVED:
        return g
    if state is S.ACTIVE:
        return apply(g, "issue", actor="alice", now=at)
    if state is S.EXPIRED:
        return apply(g, "expire", actor="pgwarden", now=g.expires_at)
    if state is S.REVOKED:
        return apply(g, "revoke", actor="bob", now=at, reason="done")
    if state is S.ENDED:
        return apply(g, "end", actor="alice", now=at)
    raise AssertionError(state)


def moment(grant: Grant, event: str) -> float:
    """A time at which ``event`` is possible by its time rule."""
    return grant.expires_at if event == "expire" else NOW + 120


DETAILS = {"deny": {"reason": "no"}, "revoke": {"reason": "leaked"}}


# ------------------------------------------------------------------ the table


def test_table_is_data_over_all_states():
    assert {s for s, _ in TRANSITIONS} <= set(S)
    assert set(TRANSITIONS.values()) <= set(S)
    assert set(EVENTS) == {"approve", "auto_approve", "break_glass", "deny", "end", "expire", "issue",
                           "revoke", "review"}
    # Nothing leaves a terminal state except a review of what happened.
    for (state, event), new in TRANSITIONS.items():
        if state in grants_mod.TERMINAL:
            assert event == "review" and new is state


@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS, key=str))
def test_every_transition(state, event):
    g = in_state(state, break_glass=True)
    at = moment(g, event)
    new = apply(g, event, actor="erin", now=at, **DETAILS.get(event, {}))
    assert new.state is TRANSITIONS[(state, event)]
    assert new.version == g.version + 1
    change = new.last_change
    assert (change.event, change.actor, change.at) == (event, "erin", at)
    assert (change.from_state, change.to_state) == (state, new.state)
    assert g.state is state                      # frozen: the old value is untouched


ILLEGAL = [(s, e) for s, e in itertools.product(S, EVENTS) if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=[f"{s.value}-{e}" for s, e in ILLEGAL])
def test_every_illegal_transition_is_refused_naming_state_and_event(state, event):
    g = in_state(state, break_glass=True)
    with pytest.raises(GrantError) as exc:
        apply(g, event, actor="erin", now=moment(g, event), **DETAILS.get(event, {}))
    assert exc.value.code == "illegal_transition"
    assert f"state {state.value}" in str(exc.value) and f"event {event}" in str(exc.value)


# ---------------------------------------------------------- event facts


def test_request_creates_requested_grant():
    g = req()
    assert g.state is S.REQUESTED and g.version == 1
    assert (g.not_before, g.expires_at, g.duration) == (NOW, NOW + 1800, 1800)
    assert g.subject == "alice" and g.ticket == "INC-1" and g.created_at == NOW
    assert g.last_change.event == "request" and g.last_change.from_state is None


def test_approve_records_approver_and_moves_an_unscheduled_window():
    g = apply(req(), "approve", actor="bob", now=NOW + 600)
    assert (g.approver, g.approved_at) == ("bob", NOW + 600)
    assert (g.not_before, g.expires_at) == (NOW + 600, NOW + 600 + 1800)


def test_approve_keeps_a_scheduled_window():
    g = apply(req(not_before=NOW + 5 * HOUR), "approve", actor="bob", now=NOW + 600)
    assert (g.not_before, g.expires_at) == (NOW + 5 * HOUR, NOW + 5 * HOUR + 1800)


def test_policy_approvals_name_the_policy():
    assert apply(req(), "auto_approve", actor="alice", now=NOW).approver == AUTO_APPROVER
    bg = apply(req(break_glass=True), "break_glass", actor="alice", now=NOW)
    assert bg.approver == BREAK_GLASS_APPROVER and bg.break_glass and bg.awaiting_review


def test_issue_keeps_the_first_issue_time():
    g = apply(in_state(S.APPROVED), "issue", actor="alice", now=NOW + 100)
    g = apply(g, "issue", actor="alice", now=NOW + 200)
    assert g.state is S.ACTIVE and g.issued_at == NOW + 100 and g.version == 4


def test_deny_revoke_end_record_who_when_why():
    d = in_state(S.DENIED)
    assert (d.denied_by, d.denied_at, d.deny_reason) == ("bob", NOW + 60, "not now")
    r = in_state(S.REVOKED)
    assert (r.revoked_by, r.revoked_at, r.revoke_reason) == ("bob", NOW + 60, "done")
    e = in_state(S.ENDED)
    assert (e.ended_by, e.ended_at) == ("alice", NOW + 60)


@pytest.mark.parametrize("event", ["deny", "revoke"])
@pytest.mark.parametrize("reason", [None, "", "   "])
def test_deny_and_revoke_need_a_reason(event, reason):
    g = req() if event == "deny" else in_state(S.ACTIVE)
    kw = {} if reason is None else {"reason": reason}
    with pytest.raises(GrantError, match="reason is required") as exc:
        apply(g, event, actor="bob", now=NOW + 100, **kw)
    assert exc.value.code == "missing_reason"


def test_review_only_for_break_glass_and_only_once():
    with pytest.raises(GrantError, match="not a break-glass grant"):
        apply(in_state(S.ACTIVE), "review", actor="bob", now=NOW + 100)
    g = apply(in_state(S.ACTIVE, break_glass=True), "review", actor="bob", now=NOW + 100)
    assert (g.reviewed_by, g.reviewed_at, g.awaiting_review) == ("bob", NOW + 100, False)
    with pytest.raises(GrantError, match="already reviewed by bob"):
        apply(g, "review", actor="carol", now=NOW + 200)


def test_expire_only_once_the_expiry_has_come():
    g = in_state(S.ACTIVE)
    with pytest.raises(GrantError, match="does not expire before") as exc:
        apply(g, "expire", actor="pgwarden", now=g.expires_at - 1)
    assert exc.value.code == "illegal_transition"
    assert apply(g, "expire", actor="pgwarden", now=g.expires_at).state is S.EXPIRED


def test_an_expired_request_can_no_longer_be_approved():
    g = req()
    with pytest.raises(GrantError, match=r"cannot approve: grant g1 expired at 2026-12-01T09:30:00Z"):
        apply(g, "approve", actor="bob", now=g.expires_at + 1)


def test_actor_must_be_named():
    with pytest.raises(GrantError, match="acting user"):
        apply(req(), "approve", actor="", now=NOW)


# -------------------------------------------------------------------- time


@pytest.mark.parametrize("state", [S.REQUESTED, S.APPROVED, S.ACTIVE])
def test_effective_state_expires_by_time(state):
    g = in_state(state)
    assert effective_state(g, g.expires_at - 0.001) is state
    assert effective_state(g, g.expires_at) is S.EXPIRED


@pytest.mark.parametrize("state", [S.DENIED, S.REVOKED, S.ENDED, S.EXPIRED])
def test_effective_state_keeps_terminal_states(state):
    g = in_state(state)
    assert effective_state(g, g.expires_at + HOUR) is state


def test_check_for_connect_messages():
    ok = in_state(S.ACTIVE)
    assert check_for_connect(ok, NOW + 100) is None
    assert check_for_connect(in_state(S.APPROVED), NOW + 100) is None
    assert check_for_connect(in_state(S.REVOKED), NOW + 100) == \
        "grant g1 revoked by bob at 2026-12-01T09:01:00Z: done"
    assert check_for_connect(in_state(S.ENDED), NOW + 100) == "grant g1 ended by alice at 2026-12-01T09:01:00Z"
    assert check_for_connect(ok, ok.expires_at) == "grant g1 expired at 2026-12-01T09:31:00Z"
    assert check_for_connect(in_state(S.EXPIRED), NOW) == "grant g1 expired at 2026-12-01T09:31:00Z"
    assert check_for_connect(req(), NOW) == "grant g1 is not approved (state requested)"
    assert check_for_connect(in_state(S.DENIED), NOW + 100) == \
        "grant g1 was denied by bob at 2026-12-01T09:01:00Z: not now"
    sched = apply(req(not_before=NOW + HOUR), "approve", actor="bob", now=NOW)
    assert check_for_connect(sched, NOW + 10) == "grant g1 not valid before 2026-12-01T10:00:00Z"
    assert check_for_connect(sched, NOW + HOUR) is None


def test_check_for_connect_matches_token_claims():
    g = in_state(S.ACTIVE)
    assert check_for_connect(g, NOW + 100, user="alice", database="appdb", scope="write") is None
    assert check_for_connect(g, NOW + 100, user="mallory") == "grant g1 is for user 'alice', not 'mallory'"
    assert check_for_connect(g, NOW + 100, database="otherdb") == \
        "grant g1 is for database 'appdb', not 'otherdb'"
    assert check_for_connect(g, NOW + 100, scope="ddl") == "grant g1 is for scope 'write', not 'ddl'"


# ----------------------------------------------------------- request rules


@pytest.mark.parametrize(("kw", "code", "text"), [
    ({"scope": "admin"}, "unknown_scope", "unknown scope 'admin' (known: ddl, read, solo, write)"),
    ({"database": "prod"}, "unknown_database", "unknown database 'prod' (grants are given for: appdb, otherdb)"),
    ({"duration": 3 * HOUR}, "duration", "duration 3h is over the maximum for scope 'write' (2h)"),
    ({"duration": 0}, "duration", "greater than zero"),
    ({"not_before": NOW - 1}, "start_in_past", "start 2026-12-01T08:59:59Z is in the past"),
    ({"reason": " "}, "missing_reason", "a reason is required"),
    ({"scope": "ddl", "break_glass": True}, "not_allowed", "break-glass is not allowed for scope 'ddl'"),
    ({"requester": ""}, "invalid", "requester must be given"),
])
def test_request_refusals_say_why(kw, code, text):
    with pytest.raises(GrantError) as exc:
        req(**kw)
    assert exc.value.code == code and text in str(exc.value)


def test_request_without_database_list_accepts_any_database():
    rules = replace(RULES, databases=None)
    assert rules.request(requester="a", database="whatever", scope="read", duration=60, reason="r",
                         now=NOW).database == "whatever"


def test_request_for_another_subject_and_ids():
    g = RULES.request(requester="ci", subject="svc_etl", database="appdb", scope="read", duration=60,
                      reason="nightly", now=NOW)
    assert (g.requester, g.subject) == ("ci", "svc_etl")
    assert g.id.startswith("g") and len(g.id) == 13 and g.id != new_grant_id()


def test_initial_event():
    assert RULES.initial_event(req(scope="read")) == "auto_approve"
    assert RULES.initial_event(req()) is None
    assert RULES.initial_event(req(break_glass=True)) == "break_glass"


# ------------------------------------------------------------ who may act


def test_approvers_resolve_groups():
    assert RULES.approvers("write") == {"bob", "carol", "dave"}
    assert RULES.approvers("ddl") is None


def test_self_approval_refused():
    with pytest.raises(GrantError, match="two-person rule") as exc:
        RULES.approve(req(), actor="alice", now=NOW)
    assert exc.value.code == "self_approval"
    # nor for the subject of someone else's request
    g = req(requester="bob", subject="carol")
    with pytest.raises(GrantError, match=r"carol cannot approve .* access for themselves"):
        RULES.approve(g, actor="carol", now=NOW)


def test_approver_not_allowed_refused():
    with pytest.raises(GrantError) as exc:
        RULES.approve(req(), actor="mallory", now=NOW)
    assert exc.value.code == "not_allowed"
    assert str(exc.value) == "mallory is not allowed to approve scope 'write' grants (approvers: group:dba, dave)"


def test_allowed_approvers_by_group_and_by_name():
    assert RULES.approve(req(), actor="carol", now=NOW).approver == "carol"
    assert RULES.approve(req(), actor="dave", now=NOW).approver == "dave"


def test_any_other_user_approves_when_no_approvers_listed():
    assert RULES.approve(req(scope="ddl"), actor="zoe", now=NOW).state is S.APPROVED
    with pytest.raises(GrantError, match="two-person"):
        RULES.approve(req(scope="ddl"), actor="alice", now=NOW)


def test_two_person_off_allows_self_approval():
    assert RULES.approve(req(scope="solo"), actor="alice", now=NOW).approver == "alice"


@pytest.mark.parametrize("name", [AUTO_APPROVER, BREAK_GLASS_APPROVER])
def test_policy_names_cannot_act_as_approvers(name):
    with pytest.raises(GrantError, match="reserved"):
        RULES.approve(req(scope="ddl"), actor=name, now=NOW)


def test_deny_and_revoke_need_an_approver():
    with pytest.raises(GrantError, match="mallory is not allowed to deny") as exc:
        RULES.deny(req(), actor="mallory", now=NOW, reason="no")
    assert exc.value.code == "not_allowed"
    with pytest.raises(GrantError, match="mallory is not allowed to revoke"):
        RULES.revoke(in_state(S.ACTIVE), actor="mallory", now=NOW + 100, reason="x")
    assert RULES.deny(req(), actor="bob", now=NOW, reason="no").state is S.DENIED
    assert RULES.revoke(in_state(S.ACTIVE), actor="carol", now=NOW + 100, reason="x").state is S.REVOKED


def test_end_and_issue_by_requester_or_subject_only():
    g = in_state(S.APPROVED)
    for method, kw in ((RULES.end, {}), (RULES.issue, {})):
        with pytest.raises(GrantError, match="only the requester") as exc:
            method(g, actor="bob", now=NOW + 100, **kw)
        assert exc.value.code == "not_allowed"
    assert RULES.issue(g, actor="alice", now=NOW + 100).state is S.ACTIVE
    assert RULES.end(g, actor="alice", now=NOW + 100).state is S.ENDED


def test_review_by_another_approver():
    g = in_state(S.ACTIVE, break_glass=True)
    with pytest.raises(GrantError, match="alice cannot review .* two-person"):
        RULES.review(g, actor="alice", now=NOW + 100)
    with pytest.raises(GrantError, match="mallory is not allowed to review"):
        RULES.review(g, actor="mallory", now=NOW + 100)
    assert RULES.review(g, actor="bob", now=NOW + 100).reviewed_by == "bob"


def test_may_issue_directly():
    assert RULES.may_issue_directly(actor="ci", subject="svc", scope="read") is None
    assert RULES.may_issue_directly(actor="bob", subject="svc", scope="write") is None
    assert "not an approver" in RULES.may_issue_directly(actor="ci", subject="svc", scope="write")
    assert "to themselves" in RULES.may_issue_directly(actor="bob", subject="bob", scope="write")
    with pytest.raises(GrantError, match="unknown scope"):
        RULES.may_issue_directly(actor="bob", subject="svc", scope="nope")


def test_grant_policy_validates():
    with pytest.raises(ValueError, match="approval"):
        GrantPolicy("x", 60, "sometimes")
    with pytest.raises(ValueError, match="max_duration"):
        GrantPolicy("x", 0)


def test_default_rules():
    rules = GrantRules()
    assert rules.policy("read").approval == "auto" and rules.policy("read").max_duration == 8 * HOUR
    for scope in ("write", "ddl"):
        pol = rules.policy(scope)
        assert (pol.approval, pol.max_duration, pol.two_person, pol.approvers) == ("required", 2 * HOUR, True, ())


# -------------------------------------------------------------- purity


def test_module_is_pure():
    tree = ast.parse(Path(grants_mod.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) - {"asyncio", "socket", "time", "threading"}
    src = Path(grants_mod.__file__).read_text()
    assert ".now(" not in src and "time.time" not in src


def test_docs_diagram_is_the_table():
    """docs/grants.md draws TRANSITIONS; the two must not drift apart."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "grants.md").read_text()
    block = doc.split("```mermaid\n", 1)[1].split("```", 1)[0]
    drawn = {tuple(line.strip().replace(" --> ", "|").replace(": ", "|").split("|"))
             for line in block.splitlines()[1:] if line.strip()}
    table = {(s.value, new.value, e) for (s, e), new in TRANSITIONS.items()}
    assert drawn == table

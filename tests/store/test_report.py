"""compute_report on a data set whose figures are worked out by hand."""

from __future__ import annotations

from policy.grants import GrantPolicy, GrantRules, apply
from proxy.store.base import SessionRecord
from proxy.store.report import compute_report, percentile

NOW = 1_796_115_600.0
RULES = GrantRules(policies={"read": GrantPolicy("read", 8 * 3600, "auto"),
                             "write": GrantPolicy("write", 2 * 3600, break_glass=True)})


def g(gid, scope="write", **kw):
    return RULES.request(requester="alice", database="appdb", scope=scope, duration=3600, reason="r",
                         now=NOW, grant_id=gid, **kw)


def test_percentile_nearest_rank():
    assert percentile([], 95) is None
    assert percentile([5], 95) == 5
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == 10
    assert percentile(list(range(1, 21)), 95) == 19
    assert percentile([3, 1, 2], 50) == 2


def test_report_figures():
    a = apply(g("a"), "approve", actor="bob", now=NOW + 60)           # latency 60, used, revoked
    a = apply(a, "revoke", actor="bob", now=NOW + 600, reason="x")
    b = apply(g("b"), "approve", actor="bob", now=NOW + 120)          # latency 120, never used, expired
    c = apply(g("c"), "approve", actor="carol", now=NOW + 600)        # latency 600, still approved, unused
    d = apply(g("d", scope="read"), "auto_approve", actor="alice", now=NOW)   # auto: not in latency
    e = apply(g("e", break_glass=True), "break_glass", actor="alice", now=NOW)  # awaiting review
    f = apply(g("f"), "deny", actor="bob", now=NOW + 30, reason="no")
    h = g("h")                                                         # still requested
    sessions = {
        "a": [SessionRecord("a", "s1", "alice", NOW + 100, NOW + 400, "client closed"),
              SessionRecord("a", "s2", "alice", NOW + 450, NOW + 600, "revoked")],
        "d": [SessionRecord("d", "s3", "alice", NOW + 10, NOW + 70, None),
              SessionRecord("d", "s4", "alice", NOW + 80, None, None)],
        "e": [SessionRecord("e", "s5", "alice", NOW + 5, NOW + 905, None)],
    }
    now = NOW + 3600 + 130          # b (window from NOW+120) is just over; c (from NOW+600) is not
    r = compute_report([a, b, c, d, e, f, h], sessions, now=now)
    assert r["grants"] == 7
    assert r["by_scope"] == {"read": {"expired": 1}, "write": {"approved": 1, "denied": 1, "expired": 3,
                                                                 "revoked": 1}}
    assert r["by_state"] == {"approved": 1, "denied": 1, "expired": 4, "revoked": 1}
    assert r["approval_latency"] == {"count": 3, "median_s": 120, "p95_s": 600}
    assert r["session_duration"] == {"count": 4, "median_s": (150 + 300) / 2}   # 60, 150, 300, 900
    assert r["never_used"] == {"count": 1, "grants": ["b"]}
    assert [x["id"] for x in r["break_glass_awaiting_review"]] == ["e"]
    assert r["break_glass_awaiting_review"][0]["sessions"] == 1


def test_empty_report():
    r = compute_report([], {}, now=NOW)
    assert r["grants"] == 0
    assert r["approval_latency"] == {"count": 0, "median_s": None, "p95_s": None}
    assert r["session_duration"] == {"count": 0, "median_s": None}

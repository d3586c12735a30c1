"""GrantStore behaviour, the same tests for SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from policy.grants import GrantPolicy, GrantRules, GrantState, apply, check_for_connect
from proxy.store import Conflict, GrantStore, StoreError, UnknownGrant, open_store
from proxy.store.base import SessionRecord

S = GrantState
NOW = 1_796_115_600.0
RULES = GrantRules(policies={"read": GrantPolicy("read", 8 * 3600, "auto"),
                             "write": GrantPolicy("write", 2 * 3600, approvers=("bob", "carol"))})


def new(gid: str = "g1", **kw):
    args = dict(requester="alice", database="appdb", scope="write", duration=1800, reason="INC-1 fix",
                ticket="INC-1", now=NOW, grant_id=gid)
    args.update(kw)
    return RULES.request(**args)


def test_is_a_grant_store(store):
    assert isinstance(store, GrantStore)
    assert store.schema_version() == 1


def test_create_and_get_round_trip(store):
    g = new(break_glass=False, not_before=NOW + 60)
    store.create(g)
    got = store.get("g1")
    assert got == g and got.state is S.REQUESTED and got.last_change is None
    assert store.get("nope") is None


def test_every_field_survives(store):
    g = new()
    store.create(g)
    g2 = apply(g, "break_glass", actor="alice", now=NOW + 1)
    store.update(g2, S.REQUESTED)
    g3 = apply(g2, "issue", actor="alice", now=NOW + 2)
    store.update(g3, S.APPROVED)
    g4 = apply(g3, "revoke", actor="bob", now=NOW + 3, reason="leaked: rotate")
    store.update(g4, S.ACTIVE)
    g5 = apply(g4, "review", actor="carol", now=NOW + 4)
    store.update(g5, S.REVOKED)
    got = store.get("g1")
    assert got == g5
    assert (got.break_glass, got.reviewed_by, got.revoke_reason, got.issued_at) == (True, "carol", "leaked: rotate",
                                                                                   NOW + 2)


def test_create_twice_refused(store):
    store.create(new())
    with pytest.raises(StoreError, match="already exists"):
        store.create(new())


def test_update_appends_events(store):
    g = new()
    store.create(g)
    g2 = RULES.approve(g, actor="bob", now=NOW + 30)
    assert store.update(g2, S.REQUESTED) is g2
    g3 = RULES.revoke(g2, actor="carol", now=NOW + 90, reason="done")
    store.update(g3, "approved")
    evs = store.events("g1")
    assert [(e.event, e.actor, e.from_state, e.to_state, e.at) for e in evs] == [
        ("request", "alice", None, "requested", NOW),
        ("approve", "bob", "requested", "approved", NOW + 30),
        ("revoke", "carol", "approved", "revoked", NOW + 90),
    ]
    assert evs[0].details["scope"] == "write" and evs[0].details["duration"] == 1800
    assert evs[2].details == {"reason": "done"}
    assert evs[0].seq < evs[1].seq < evs[2].seq
    assert store.events("nope") == []


def test_compare_and_set_conflict_on_state(store):
    g = new()
    store.create(g)
    approved = RULES.approve(g, actor="bob", now=NOW + 1)
    denied = RULES.deny(g, actor="carol", now=NOW + 2, reason="no")
    store.update(approved, S.REQUESTED)
    with pytest.raises(Conflict, match="grant g1 changed meanwhile: it is now approved"):
        store.update(denied, S.REQUESTED)
    assert store.get("g1").state is S.APPROVED
    assert [e.event for e in store.events("g1")] == ["request", "approve"]


def test_compare_and_set_conflict_on_version(store):
    """Same state, but the row moved on: the older decision must not overwrite it."""
    g = RULES.approve(new(), actor="bob", now=NOW + 1)
    store.create(g)                       # stored at version 2 (approved)
    active = apply(g, "issue", actor="alice", now=NOW + 2)
    store.update(active, S.APPROVED)
    stale = apply(g, "revoke", actor="bob", now=NOW + 3, reason="x")   # computed from version 2
    with pytest.raises(Conflict):
        store.update(stale, S.APPROVED)
    with pytest.raises(Conflict):
        store.update(apply(g, "end", actor="alice", now=NOW + 3), S.ACTIVE)
    assert store.get("g1").issued_at == NOW + 2


def test_update_unknown_or_without_change(store):
    with pytest.raises(UnknownGrant):
        store.update(apply(new("zz"), "approve", actor="bob", now=NOW), S.REQUESTED)
    g = new()
    store.create(g)
    from dataclasses import replace
    with pytest.raises(StoreError, match="policy.grants.apply"):
        store.update(replace(g, last_change=None), S.REQUESTED)


def test_list_filters(store):
    store.create(new("g1", requester="alice", scope="write", now=NOW))
    store.create(new("g2", requester="bob", subject="alice", scope="read", now=NOW + 10))
    store.create(new("g3", requester="carol", scope="read", now=NOW + 20))
    g1 = store.get("g1")
    store.update(RULES.approve(g1, actor="bob", now=NOW + 30), S.REQUESTED)
    ids = lambda gs: [g.id for g in gs]  # noqa: E731
    assert ids(store.list()) == ["g1", "g2", "g3"]
    assert ids(store.list(state="approved")) == ["g1"]
    assert ids(store.list(state=S.REQUESTED)) == ["g2", "g3"]
    assert ids(store.list(user="alice")) == ["g1", "g2"]
    assert ids(store.list(since=NOW + 10)) == ["g2", "g3"]
    assert ids(store.list(scope="read", user="carol")) == ["g3"]
    assert store.list(scope="ddl") == []


def test_sessions(store):
    store.create(new())
    store.record_session("g1", "s1", "alice", NOW + 100)
    store.record_session("g1", "s2", "alice", NOW + 200)
    store.record_session("g1", "s1", "alice", NOW + 100, ended_at=NOW + 160, end_reason="client closed")
    store.record_session("g1", "s1", "alice", NOW + 100)          # a late start record keeps the end
    assert store.sessions("g1") == [
        SessionRecord("g1", "s1", "alice", NOW + 100, NOW + 160, "client closed"),
        SessionRecord("g1", "s2", "alice", NOW + 200, None, None),
    ]
    assert store.session_counts() == {"g1": 2}
    assert [s.session_id for s in store.all_sessions(since=NOW + 150)] == ["s2"]
    assert store.sessions("nope") == []
    with pytest.raises(UnknownGrant):
        store.record_session("nope", "s9", "alice", NOW)
    # sessions are no grant change: revocation pollers do not wake up for them
    cursor, _ = store.changes_since(None)
    store.record_session("g1", "s3", "alice", NOW + 300)
    assert store.changes_since(cursor) == (cursor, [])


def test_changes_since(store):
    start, ids = store.changes_since(None)
    assert ids == []
    store.create(new("g1"))
    store.create(new("g2"))
    store.update(RULES.approve(store.get("g1"), actor="bob", now=NOW + 1), S.REQUESTED)
    cursor, ids = store.changes_since(start)
    assert ids == ["g1", "g2"] and cursor > start
    assert store.changes_since(cursor) == (cursor, [])
    store.update(RULES.deny(store.get("g2"), actor="bob", now=NOW + 2, reason="no"), S.REQUESTED)
    cursor2, ids = store.changes_since(cursor)
    assert ids == ["g2"] and cursor2 > cursor
    assert store.changes_since(None) == (cursor2, [])
    assert store.changes_since(0)[1] == ["g1", "g2"]


def test_listen_reports_changes(store):
    store.create(new("g1"))
    stop = threading.Event()
    seen: list[str] = []
    ready = threading.Event()

    def listener():
        for gid in store.listen(stop=stop, interval=0.1):
            ready.set()
            if gid is not None:
                seen.append(gid)
                stop.set()

    t = threading.Thread(target=listener, daemon=True)
    t.start()
    assert ready.wait(5)
    t0 = time.monotonic()
    store.update(RULES.deny(store.get("g1"), actor="bob", now=NOW, reason="x"), S.REQUESTED)
    t.join(5)
    stop.set()
    assert seen == ["g1"]
    assert time.monotonic() - t0 < 1.0     # DESIGN: revocation reaches every proxy within a second


def test_stored_grant_drives_connect_check(store):
    g = new()
    store.create(g)
    assert check_for_connect(store.get("g1"), NOW + 5) == "grant g1 is not approved (state requested)"
    store.update(RULES.approve(g, actor="bob", now=NOW + 5), S.REQUESTED)
    g = store.get("g1")
    assert check_for_connect(g, NOW + 10, user="alice", database="appdb", scope="write") is None
    store.update(RULES.revoke(g, actor="bob", now=NOW + 20, reason="done"), S.APPROVED)
    assert check_for_connect(store.get("g1"), NOW + 21) == "grant g1 revoked by bob at 2026-12-01T09:00:20Z: done"


def test_reopen_keeps_data_and_schema(store, store_url):
    store.create(new())
    with open_store(store_url) as again:
        assert again.get("g1") == store.get("g1")
        assert again.schema_version() == 1


def test_refuses_a_newer_schema(store, store_url):
    with store._write() as cur:
        store._exec(cur, "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (99, NOW))
    with pytest.raises(StoreError, match="schema version 99, newer"):
        open_store(store_url)
    with store._write() as cur:
        store._exec(cur, "DELETE FROM schema_version WHERE version = 99")


def test_closed_store_refuses(store_url):
    s = open_store(store_url)
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get("g1")


def test_threads_share_one_store(store):
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                gid = f"t{n}-{i}"
                store.create(new(gid))
                store.update(RULES.approve(store.get(gid), actor="bob", now=NOW + 1), S.REQUESTED)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list(state="approved")) == 60


# ------------------------------------------------------ several processes


def _worker(url: str, n: int, rounds: int, out) -> None:
    """One process: create and approve its own grants, and fight the others
    over the shared grant "shared" (issue it, retrying on Conflict)."""
    errors, wins = [], 0
    try:
        with open_store(url) as s:
            for i in range(rounds):
                gid = f"p{n}-{i}"
                s.create(new(gid))
                s.update(RULES.approve(s.get(gid), actor="bob", now=NOW + 1), S.REQUESTED)
                s.record_session(gid, f"s{i}", "alice", NOW + 2)
                while True:
                    g = s.get("shared")
                    try:
                        s.update(apply(g, "issue", actor="alice", now=NOW + 2), g.state)
                        wins += 1
                        break
                    except Conflict:
                        continue
    except Exception as e:  # noqa: BLE001 - reported to the parent
        errors.append(f"{type(e).__name__}: {e}")
    out.put((n, wins, errors))


def test_several_processes_write_concurrently(store, store_url):
    g = RULES.approve(new("shared"), actor="bob", now=NOW)
    store.create(g)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs, rounds = 6, 30
    ps = [ctx.Process(target=_worker, args=(store_url, n, rounds, out)) for n in range(procs)]
    for p in ps:
        p.start()
    results = [out.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(30)
    assert [r[2] for r in results] == [[]] * procs, results          # no "database is locked"
    assert sum(r[1] for r in results) == procs * rounds
    shared = store.get("shared")
    assert shared.state is S.ACTIVE and shared.version == 2 + procs * rounds
    assert len(store.list(state="approved")) == procs * rounds
    assert len(store.events("shared")) == 1 + procs * rounds
    assert len({e.seq for e in store.events("shared")}) == 1 + procs * rounds


# ---------------------------------------------------------------- open_store


def test_open_store_urls(tmp_path, monkeypatch):
    from proxy.store import sqlite_path
    assert sqlite_path("sqlite:///var/lib/pgwarden/grants.db") == tmp_path.__class__("/var/lib/pgwarden/grants.db")
    assert sqlite_path("sqlite:////abs/g.db") == tmp_path.__class__("/abs/g.db")
    assert sqlite_path("sqlite://grants.db", tmp_path) == tmp_path / "grants.db"
    assert sqlite_path("sqlite:sub/g.db", tmp_path) == tmp_path / "sub/g.db"
    assert sqlite_path("g.db", tmp_path) == tmp_path / "g.db"
    assert sqlite_path("postgresql://u@h/db") is None
    with pytest.raises(StoreError, match="unsupported grant store URL mysql"):
        open_store("mysql://x/y")
    with pytest.raises(StoreError, match="names no file"):
        open_store("sqlite://")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(f"sqlite://{tmp_path / 'missing' / 'g.db'}")
    with open_store("g.db", base=tmp_path) as s:
        assert s.path == tmp_path / "g.db"
    assert (tmp_path / "g.db").exists()


def test_sqlite_uses_wal(tmp_path):
    import sqlite3
    with open_store(f"sqlite://{tmp_path / 'g.db'}") as s:
        s.create(new())
        assert sqlite3.connect(tmp_path / "g.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"

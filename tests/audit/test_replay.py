"""Replay (the timeline), listing sessions and finding a recording."""

from __future__ import annotations

import orjson
import pytest

from proxy.audit.replay import find_recording, format_statement, list_sessions, parse_since, replay

from .conftest import INTROSPECTION_SQL, T0, Clock, write_sample

pytestmark = pytest.mark.usefixtures("line_impl")    # every test with each statement-line builder


def test_timeline(sample):
    text = "\n".join(replay(sample))
    lines = text.splitlines()
    assert lines[0] == "session 20260101T000000-a1b2c3d4e5f6  alice@appdb  started 2026-01-01T00:00:00.000000Z"
    assert "grant g-123 (scope read)  from 10.0.0.7:51234  TLS TLSv1.3  backend pid 4242" in lines[1]
    assert "reason 'INC-42 stuck payments'" in lines[2] and "ticket INC-42" in lines[2]
    assert "approver bob" in lines[2]
    # statements in order, with outcome, rows and duration
    order = [text.index(s) for s in ("select id, name from accounts", "delete from accounts",
                                      "select * from nope", "COPY out: 1234 bytes", "copy accounts to stdout",
                                      "NOTICE expiry_warning", "select count(*) from accounts",
                                      "session end: client_closed")]
    assert order == sorted(order)
    assert "00:00:01.000 +   1.000s  select id, name from accounts where id = $1" in text
    assert 'params: ["7"]' in text
    assert "-> SELECT 1 (1 row)  2.0 ms  [extended]" in text
    assert "-> DENIED [write.delete] (write class)" in text
    assert '-> ERROR 42P01 relation "nope" does not exist' in text
    assert "-> COPY 10 (10 rows)" in text
    assert "6 statements, 1 denied, 1 error, 17.557 s; signed by rec" in text
    assert "UNTERMINATED" not in text


def test_introspection_is_folded_unless_asked(sample):
    folded = "\n".join(replay(sample))
    assert "pg_catalog.pg_class" not in folded
    assert "1 catalog query folded" in folded
    shown = "\n".join(replay(sample, include_introspection=True))
    assert "pg_catalog.pg_class" in shown and "folded" not in shown


def test_denied_or_failed_introspection_is_never_folded(factory, clock):
    rec = factory.open()
    rec.start()
    rec.statement(INTROSPECTION_SQL, decision="denied", rule="x")
    rec.statement(INTROSPECTION_SQL, sqlstate="42501", message="permission denied")
    rec.end("client_closed")
    text = "\n".join(replay(rec.path))
    assert text.count("pg_catalog.pg_class") == 2 and "folded" not in text


def test_unterminated_is_said(factory, clock):
    rec = write_sample(factory.open(), clock, end=False)
    last = list(replay(rec.path))[-1]
    assert "UNTERMINATED" in last and "every statement above had completed" in last


def test_torn_tail_is_ignored(sample):
    data = sample.read_bytes()
    sample.write_bytes(data + b'{"seq":11,"ty')
    assert "session end: client_closed" in "\n".join(replay(sample))


def test_pace_sleeps_recorded_gaps_capped(sample):
    slept = []
    list(replay(sample, pace=True, sleep=slept.append))
    # gaps between shown events: start->stmt 1.0; ->denied 2.502 (the folded one is skipped);
    # ->error 1.0; ->copy stmt 1.003 (copy records are not paced); ->notice 10.05 capped at 5;
    # ->count 1.0; ->end 1.001
    assert [round(s, 3) for s in slept] == [1.0, 2.503, 1.0, 1.003, 5.0, 1.0, 1.001]
    slept.clear()
    list(replay(sample, pace=True, max_gap=0.5, sleep=slept.append))
    assert max(slept) == 0.5
    slept.clear()
    list(replay(sample, sleep=slept.append))
    assert slept == []


def test_format_statement_multiline():
    rec = {"text": "select 1,\n  2", "started": "2026-01-01T00:00:02.000000Z", "decision": "allowed",
           "tag": "SELECT 1", "rows": 1, "duration_ms": 0.5}
    out = format_statement(rec, T0)
    assert out.splitlines()[1].strip() == "2"
    assert out.splitlines()[1].startswith(" " * 10)


def _sessions(factory, clock):
    made = []
    for grant, user, day in (("g1", "alice", 0), ("g2", "bob", 1), ("g1", "alice", 2)):
        clock.t = T0 + day * 86400
        rec = factory.open(grant=grant)
        rec.start(user=user, database="appdb", scope="read")
        rec.statement("select 1", tag="SELECT 1")
        if day != 2:
            rec.end("client_closed")
        made.append(rec)
    return made


def test_list_sessions_filters(factory, clock, rec_dir):
    made = _sessions(factory, clock)
    everything = list_sessions(rec_dir)
    assert [s.session_id for s in everything] == [r.session_id for r in made]
    assert [s.status for s in everything] == ["ended", "ended", "unterminated"]
    assert everything[0].statements == 1 and everything[0].end_reason == "client_closed"
    assert everything[2].statements is None and everything[2].end_reason is None
    assert [s.session_id for s in list_sessions(rec_dir, grant="g1")] == [made[0].session_id, made[2].session_id]
    assert [s.user for s in list_sessions(rec_dir, user="bob")] == ["bob"]
    assert [s.session_id for s in list_sessions(rec_dir, since="2026-01-02")] == \
        [made[1].session_id, made[2].session_id]
    assert [s.session_id for s in list_sessions(rec_dir, since=T0 + 86400 + 1)] == [made[2].session_id]
    assert list_sessions(rec_dir, grant="nope") == []
    assert list_sessions(rec_dir / "missing") == []
    d = everything[0].to_dict()
    assert orjson.loads(orjson.dumps(d))["status"] == "ended" and d["grant"] == "g1"


def test_list_sessions_skips_junk(factory, clock, rec_dir):
    _sessions(factory, clock)
    (rec_dir / "2026-01-01" / "junk.jsonl").write_bytes(b"not json\n")
    (rec_dir / "notadate").mkdir()
    (rec_dir / "notadate" / "x.jsonl").write_bytes(b"{}\n")
    assert len(list_sessions(rec_dir)) == 3


def test_parse_since():
    now = T0
    assert parse_since("90m", now=now) == now - 5400
    assert parse_since("7d", now=now) == now - 7 * 86400
    assert parse_since("2026-01-01") == T0
    assert parse_since("2026-01-01T01:00:00Z") == T0 + 3600
    assert parse_since("2026-01-01T01:00:00+01:00") == T0
    assert parse_since(None) is None and parse_since(12.5) == 12.5
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


def test_find_recording(sample, rec_dir, tmp_path):
    sid = "20260101T000000-a1b2c3d4e5f6"
    assert find_recording(rec_dir, sid) == sample
    assert find_recording(rec_dir, str(sample)) == sample
    with pytest.raises(FileNotFoundError):
        find_recording(rec_dir, "20260101T000000-000000000000")
    with pytest.raises(FileNotFoundError):
        find_recording(rec_dir, str(tmp_path / "nope.jsonl"))
    # an id whose date is not the directory's (clock skew): found by search
    other = Clock(T0 + 86400 * 3)
    from proxy.audit.writer import SessionRecorder
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    rec = SessionRecorder(rec_dir, "20250101T000000-bbbbbbbbbbbb", signing_key=Ed25519PrivateKey.generate(),
                          key_id="rec", clock=other)
    rec.start()
    assert find_recording(rec_dir, "20250101T000000-bbbbbbbbbbbb") == rec.path

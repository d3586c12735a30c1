"""SessionRecorder and RecorderFactory: what goes on disk, when, and how failures behave."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from proxy.audit import record as R
from proxy.audit.config import AuditConfig, from_table
from proxy.audit.verify import verify
from proxy.audit.writer import RecorderFactory, SessionRecorder, new_session_id, recording_path
from proxy.config import ConfigError

from .conftest import START, T0, write_sample

pytestmark = pytest.mark.usefixtures("line_impl")    # every test with each statement-line builder


def lines(path):
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_sample_session_is_recorded_in_order_and_verifies(sample, keys):
    recs = lines(sample)
    assert [r["type"] for r in recs] == [
        "session_start", "statement", "statement", "statement", "statement", "copy", "statement",
        "notice", "statement", "session_end"]
    assert [r["seq"] for r in recs] == list(range(1, 11))
    assert sample.name == "20260101T000000-a1b2c3d4e5f6.jsonl"
    assert sample.parent.name == "2026-01-01"
    report = verify(sample, keys)
    assert report.ok and report.status == "ok", report.summary()
    assert (report.statements, report.denied, report.errors) == (6, 1, 1)


def test_session_start_carries_every_field(sample):
    start = lines(sample)[0]
    for k, v in START.items():
        assert start[k] == v
    assert start["grant"] == "g-123"
    assert start["session"] == "20260101T000000-a1b2c3d4e5f6"
    assert start["v"] == R.FORMAT_VERSION
    assert start["capture"] == {"params": True, "rows": 0}
    assert start["prev"] == R.GENESIS
    assert start["ts"] == "2026-01-01T00:00:00.000000Z"


def test_statement_fields(sample):
    recs = lines(sample)
    first, intro, denied, error = recs[1:5]
    assert first["text"] == "select id, name from accounts where id = $1"
    assert first["params"] == ["7"]
    assert first["class"] == "read" and first["decision"] == "allowed" and first["rule"] == "read.select"
    assert first["tag"] == "SELECT 1" and first["rows"] == 1
    assert first["started"] == "2026-01-01T00:00:01.000000Z"
    assert first["duration_ms"] == 2.0
    assert first["via"] == "execute"
    assert "introspection" not in first and "sqlstate" not in first
    assert intro["introspection"] is True
    assert denied["decision"] == "denied" and denied["sqlstate"] == "42501" and "tag" not in denied
    assert denied["rule"] == "write.delete" and denied["class"] == "write"
    assert denied["duration_ms"] == 0.0
    assert error["sqlstate"] == "42P01" and error["message"] == 'relation "nope" does not exist'
    copy = recs[5]
    assert copy == {**copy, "direction": "out", "bytes": 1234, "rows": 10}
    notice = recs[7]
    assert (notice["kind"], notice["remaining_s"]) == ("expiry_warning", 60)


def test_session_end_totals_and_signature(sample, keys):
    end = lines(sample)[-1]
    assert end["reason"] == "client_closed" and end["key_id"] == "rec"
    assert end["totals"] == {"statements": 6, "denied": 1, "errors": 1, "rows": 13, "copy_in_bytes": 0,
                             "copy_out_bytes": 1234, "notices": 1, "introspection": 1,
                             "duration_s": 17.557}
    assert R.signature_valid(end, keys["rec"])


def test_each_record_hashes_the_previous_line(sample):
    raw = sample.read_bytes().splitlines()
    for before, line in zip(raw, raw[1:]):
        assert orjson.loads(line)["prev"] == R.digest(before)


def test_lines_are_canonical(sample):
    for line in sample.read_bytes().splitlines():
        assert R.canonical(orjson.loads(line)) == line


def test_each_statement_is_on_disk_before_the_next(factory, keys):
    """Flushed per record: another reader sees each statement as soon as statement() returns."""
    rec = factory.open(grant="g")
    rec.start(user="alice")
    for i in range(1, 4):
        assert rec.statement(f"select {i}", tag="SELECT 1")
        on_disk = lines(rec.path)
        assert len(on_disk) == i + 1 and on_disk[-1]["text"] == f"select {i}"
    report = verify(rec.path, keys)
    assert report.status == "unterminated" and report.statements == 3
    assert rec.end("client_closed")
    assert verify(rec.path, keys).ok


def test_nothing_on_disk_before_the_first_record(factory):
    rec = factory.open(grant="g")
    assert not rec.path.exists()
    rec.start()
    assert rec.path.exists()


def test_modes(factory, rec_dir):
    rec = factory.open()
    rec.start()
    rec.end("client_closed")
    assert stat.S_IMODE(rec.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(rec.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(rec_dir.stat().st_mode) == 0o700


def test_end_is_final(factory, keys):
    rec = factory.open()
    rec.start()
    assert rec.end("client_closed")
    assert not rec.end("again")
    assert not rec.statement("select 1")
    assert not rec.notice("x", "y")
    assert not rec.copy("in", 1)
    assert rec.ended and rec.records == 2
    assert verify(rec.path, keys).ok


def test_start_twice_is_refused(factory):
    rec = factory.open()
    assert rec.start(user="a")
    assert not rec.start(user="b")
    assert rec.records == 1


def test_record_before_start_writes_a_start(factory, keys):
    rec = factory.open(grant="g9")
    assert rec.statement("select 1", tag="SELECT 1")
    rec.end("client_closed")
    recs = lines(rec.path)
    assert [r["type"] for r in recs] == ["session_start", "statement", "session_end"]
    assert recs[0]["grant"] == "g9" and recs[0]["user"] is None
    assert verify(rec.path, keys).ok


def test_reserved_fields_are_refused(factory):
    rec = factory.open()
    with pytest.raises(ValueError, match="reserved"):
        rec.start(seq=3)
    with pytest.raises(ValueError, match="reserved"):
        rec.start(session="other")
    rec.start()
    with pytest.raises(ValueError, match="reserved"):
        rec.notice("k", "m", prev="x")


def test_start_grant_overrides_open_grant_and_extra_fields(factory):
    rec = factory.open(grant="from-open")
    rec.start(grant="from-start", application_name="psql", sub=None)
    start = lines(rec.path)[0]
    assert start["grant"] == "from-start" and start["application_name"] == "psql"
    assert "sub" not in start                       # None-valued extras are left out
    assert rec.grant == "from-start"


def test_decision_as_bool_and_class_as_enum(factory):
    from policy.sql.classes import StatementClass

    rec = factory.open()
    rec.start()
    rec.statement("insert into t values (1)", statement_class=StatementClass.WRITE, decision=False,
                  rule="write.insert")
    rec.statement("select 1", statement_class=StatementClass.READ, decision=True, tag="SELECT 1")
    recs = lines(rec.path)
    assert (recs[1]["class"], recs[1]["decision"]) == ("write", "denied")
    assert (recs[2]["class"], recs[2]["decision"]) == ("read", "allowed")


def test_introspection_argument_overrides_detection(factory):
    rec = factory.open()
    rec.start()
    rec.statement("select 1", introspection=True)
    rec.statement("select relname from pg_catalog.pg_class", introspection=False)
    rec.statement("select relname from pg_catalog.pg_class")
    recs = lines(rec.path)[1:]
    assert [r.get("introspection", False) for r in recs] == [True, False, True]


def test_rows_from_tag_unless_given(factory):
    rec = factory.open()
    rec.start()
    rec.statement("insert ...", tag="INSERT 0 5")
    rec.statement("update ...", tag="UPDATE 3", rows=2)
    rec.statement("begin", tag="BEGIN")
    recs = lines(rec.path)[1:]
    assert [r.get("rows") for r in recs] == [5, 2, None]


def test_duration_defaults_to_now_minus_started(factory, clock):
    rec = factory.open()
    rec.start()
    t = clock.t
    clock.advance(0.25)
    rec.statement("select pg_sleep(0.25)", started=t)
    rec.statement("select 1")
    recs = lines(rec.path)
    assert recs[1]["duration_ms"] == 250.0
    assert recs[2]["duration_ms"] == 0.0 and recs[2]["started"] == recs[2]["ts"]


def test_params_not_captured_when_disabled(tmp_path, key, clock):
    f = RecorderFactory(AuditConfig(dir=tmp_path, capture_params=False), key, clock=clock)
    rec = f.open()
    rec.start()
    rec.statement("select $1", params=["secret"])
    recs = lines(rec.path)
    assert recs[0]["capture"] == {"params": False, "rows": 0}
    assert "params" not in recs[1]


def test_params_binary_and_null(factory):
    rec = factory.open()
    rec.start()
    rec.statement("select $1, $2, $3", params=["a", None, b"\x00\xff"])
    assert lines(rec.path)[1]["params"] == ["a", None, {"b64": "AP8="}]


def test_rows_sample_capped_by_capture_rows(tmp_path, key, clock):
    f = RecorderFactory(AuditConfig(dir=tmp_path, capture_rows=2), key, clock=clock)
    rec = f.open()
    rec.start()
    rec.statement("select * from t", tag="SELECT 3", rows_sample=[["1", "a"], ["2", None], ["3", "c"]])
    rec.statement("select 1", tag="SELECT 1")
    recs = lines(rec.path)
    assert recs[1]["rows_sample"] == [["1", "a"], ["2", None]]
    assert "rows_sample" not in recs[2]
    # off by default
    rec2 = RecorderFactory(AuditConfig(dir=tmp_path), key, clock=clock).open()
    rec2.start()
    rec2.statement("select 1", rows_sample=[["1"]])
    assert "rows_sample" not in lines(rec2.path)[1]


def test_hostile_text_is_recorded_and_verifies(factory, keys):
    """Lone surrogates, NUL, newlines, huge ints and markup: recorded, one line each, verifiable."""
    rec = factory.open()
    rec.start(application_name="x\ud800y")
    texts = ["select '\ud800'", "select '\x00'", "select 1;\nselect 2 -- \r\n", "<script>alert(1)</script>",
             "é中😀"]
    for t in texts:
        assert rec.statement(t)
    rec.notice("n", "m", big=1 << 70)
    rec.end("client_closed")
    recs = lines(rec.path)
    assert len(recs) == 2 + len(texts) + 1
    assert recs[0]["application_name"] == "x\\ud800y"
    assert recs[1]["text"] == "select '\\ud800'"
    assert recs[2]["text"] == "select '\x00'"
    assert recs[3]["text"] == texts[2] and recs[5]["text"] == texts[4]
    assert recs[-2]["big"] == str(1 << 70)
    assert verify(rec.path, keys).ok


def test_copy_directions_and_totals(factory):
    rec = factory.open()
    rec.start()
    assert rec.copy("in", 10, rows=2) and rec.copy("out", 20) and rec.copy("both", 5)
    rec.end("client_closed")
    recs = lines(rec.path)
    assert [(r["direction"], r["bytes"], r.get("rows")) for r in recs[1:4]] == \
        [("in", 10, 2), ("out", 20, None), ("both", 5, None)]
    totals = recs[-1]["totals"]
    assert (totals["copy_in_bytes"], totals["copy_out_bytes"], totals["copy_both_bytes"]) == (10, 20, 5)


def test_disk_failure_is_reported_not_raised(tmp_path, key):
    """The recordings 'directory' is a file: nothing can be written.  No exception reaches
    the caller; on_failure hears about it once; every call returns False afterwards."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    errors = []
    rec = RecorderFactory(AuditConfig(dir=blocker / "rec"), key).open(on_failure=errors.append)
    assert rec.start(user="a") is False
    assert rec.failed and rec.error and len(errors) == 1
    assert rec.statement("select 1") is False
    assert rec.end("client_closed") is False
    assert len(errors) == 1


def test_failure_mid_session_keeps_what_was_written(factory, keys):
    errors = []
    rec = factory.open(on_failure=errors.append)
    rec.start()
    rec.statement("select 1", tag="SELECT 1")
    ro = os.open(rec.path, os.O_RDONLY)     # the disk goes away under the recorder: writes fail
    os.dup2(ro, rec._fd)
    os.close(ro)
    assert rec.statement("select 2") is False
    assert rec.failed and errors
    report = verify(rec.path, keys)
    assert report.status == "unterminated" and report.statements == 1


def test_short_writes_are_completed(factory, keys, monkeypatch):
    """write(2) may take part of a line (a signal, a filling disk): the rest follows, in order."""
    from proxy.audit import writer
    real = os.write
    calls = []

    def seven_at_a_time(fd, data):
        calls.append(len(data))
        return real(fd, bytes(data[:7]))

    monkeypatch.setattr(writer.os, "write", seven_at_a_time)
    rec = factory.open()
    rec.start(user="a")
    assert rec.statement("select 1", tag="SELECT 1") is True
    assert rec.end("client_closed") is True
    assert len(calls) > 30
    assert verify(rec.path, keys).ok


def test_a_write_that_takes_nothing_fails_the_recording(factory, monkeypatch):
    from proxy.audit import writer
    errors = []
    rec = factory.open(on_failure=errors.append)
    rec.start(user="a")
    monkeypatch.setattr(writer.os, "write", lambda fd, data: 0)
    assert rec.statement("select 1") is False
    assert rec.failed and errors and "took no bytes" in errors[0]


@pytest.fixture
def fsync_calls(monkeypatch) -> list[int]:
    """The descriptors of regular files fsynced from now on."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


@pytest.mark.parametrize("policy, expected", [("off", 0), ("statement", 5), ("session", 1)])
def test_fsync_policy(tmp_path, key, fsync_calls, policy, expected):
    """off: never; statement: every record (start, 2 statements, notice, end); session: once, at the end."""
    calls = fsync_calls
    rec = RecorderFactory(AuditConfig(dir=tmp_path, fsync=policy), key).open()
    rec.start()
    rec.statement("select 1")
    rec.statement("select 2")
    rec.notice("k", "m")
    assert len(calls) == (4 if policy == "statement" else 0)
    rec.end("client_closed")
    assert len(calls) == expected


def test_fsync_at_end_on_the_executor(tmp_path, key, keys, monkeypatch):
    import threading

    threads = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (threads.append(threading.current_thread()), real(fd)))
    with ThreadPoolExecutor(1) as pool:
        rec = RecorderFactory(AuditConfig(dir=tmp_path), key, executor=pool).open()
        rec.start()
        rec.end("client_closed")
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert verify(rec.path, {"rec": key.public_key()}).ok


def test_session_ids(clock):
    a, b = new_session_id(T0), new_session_id(T0)
    assert a != b and a.startswith("20260101T000000-") and len(a) == len("20260101T000000-") + 12
    assert str(recording_path("d", a, T0)) == f"d/2026-01-01/{a}.jsonl"
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            SessionRecorder("d", bad, signing_key=None, key_id="rec")


def test_two_sessions_same_id_do_not_clobber(factory):
    a = factory.open(session_id="20260101T000000-samesame")
    a.start()
    b = factory.open(session_id="20260101T000000-samesame")
    assert b.start() is False and b.failed          # O_EXCL: never append to another's recording
    assert len(lines(a.path)) == 1


def test_factory_from_config(key_files, keys):
    cfg = from_table({"dir": "recordings", "signing_key": "keys/rec.key.pem", "signing_kid": "rec",
                      "public_keys": {"rec": "keys/rec.pub.pem"}, "fsync": "off"}, base=key_files.dir.parent)
    f = RecorderFactory.from_config(cfg)
    assert key_files.recordings.is_dir()            # created (and checked) at start
    rec = f.open(grant="g")
    rec.start()
    rec.end("client_closed")
    from proxy.audit.config import load_verify_keys
    assert verify(rec.path, load_verify_keys(cfg)).ok


def test_factory_from_config_fails_fast(tmp_path):
    with pytest.raises(ConfigError, match="signing_key: required"):
        RecorderFactory.from_config(AuditConfig(dir=tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        RecorderFactory.from_config(AuditConfig(dir=tmp_path, signing_key=tmp_path / "missing.pem"))


def test_write_sample_unterminated(factory, clock, keys):
    rec = write_sample(factory.open(), clock, end=False)
    report = verify(rec.path, keys)
    assert report.status == "unterminated" and report.statements == 6 and report.records == 9


@pytest.mark.parametrize("policy, at_release", [("statement", 1), ("session", 0), ("off", 0)])
def test_fsync_per_release_under_the_statement_policy(tmp_path, key, fsync_calls, policy, at_release):
    """Held records (SessionRecorder.hold, tests/audit/test_held.py) are fsynced once, at the release."""
    rec = RecorderFactory(AuditConfig(dir=tmp_path, fsync=policy), key).open()
    rec.start()
    before = len(fsync_calls)
    rec.hold()
    for i in range(3):
        rec.statement(f"select {i}")
    assert len(fsync_calls) == before
    rec.release()
    assert len(fsync_calls) == before + at_release

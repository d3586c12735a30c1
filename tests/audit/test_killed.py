"""A recorder killed with SIGKILL leaves every completed statement on disk and
a recording that verify reports as unterminated (not failed, not ok)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.audit.config import AuditConfig, load_verify_keys
from proxy.audit.replay import replay
from proxy.audit.verify import verify

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import sys, time
    from proxy.audit.config import AuditConfig, load_signing_key
    from proxy.audit.writer import RecorderFactory

    directory, key, count, fsync = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    cfg = AuditConfig(dir=directory, signing_key=key, signing_kid="rec", fsync=fsync)
    rec = RecorderFactory.from_config(cfg).open(grant="g-kill")
    rec.start(user="alice", database="appdb", scope="read")
    print(rec.path, flush=True)
    i = 0
    while count < 0 or i < count:
        i += 1
        assert rec.statement(f"select {i}", statement_class="read", rule="read.select", tag="SELECT 1")
        print(i, flush=True)                 # statement() returned: the record is complete
    print("done", flush=True)
    time.sleep(60)                           # stays here, mid-session, until killed
""")


def run_child(key_files, count: int, fsync: str = "session") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(key_files.recordings), str(key_files.private), str(count), fsync],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def verify_keys(key_files):
    return load_verify_keys(AuditConfig(public_keys={"rec": key_files.public}))


@pytest.mark.parametrize("fsync", ["off", "session", "statement"])
def test_sigkill_mid_session(key_files, fsync):
    child = run_child(key_files, 25, fsync)
    try:
        path = Path(child.stdout.readline().strip())
        lines = [child.stdout.readline().strip() for _ in range(26)]
        assert lines[-1] == "done", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    report = verify(path, verify_keys(key_files))
    assert report.status == "unterminated", report.summary()
    assert report.failure is None and not report.ok and not report.torn_tail
    assert report.statements == 25 and report.records == 26
    assert "UNTERMINATED" in report.summary()
    timeline = "\n".join(replay(path))
    assert "select 25" in timeline and "UNTERMINATED" in timeline


def test_sigkill_while_writing(key_files):
    """Killed at an arbitrary moment of a tight write loop: still a well-formed,
    unterminated recording holding at least every statement reported complete."""
    child = run_child(key_files, -1, "off")
    try:
        path = Path(child.stdout.readline().strip())
        reported = 0
        while reported < 300:
            reported = int(child.stdout.readline())
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    report = verify(path, verify_keys(key_files))
    assert report.status == "unterminated", report.summary()
    assert report.statements >= reported

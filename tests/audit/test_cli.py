"""The auditor's commands through the real entry point (``python -m proxy.cli``), in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from proxy.audit.config import AuditConfig
from proxy.audit.writer import RecorderFactory
from proxy.keys import load_private_key

from .conftest import T0, Clock, write_sample

pytestmark = pytest.mark.usefixtures("line_impl")    # every test with each statement-line builder

ROOT = Path(__file__).resolve().parents[2]


def pgwarden(*args, cwd=None, env=None, timeout=60):
    import os

    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full_env.pop("PGWARDEN_CONFIG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "proxy.cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture
def recorded(key_files):
    """Three sessions recorded with the key on disk: two ended, one unterminated."""
    key = load_private_key(key_files.private)
    clock = Clock()
    factory = RecorderFactory(AuditConfig(dir=key_files.recordings, signing_kid="rec"), key, clock=clock)
    a = write_sample(factory.open(grant="g-1", session_id="20260101T000000-aaaaaaaaaaaa"), clock)
    clock.t = T0 + 86400
    b = factory.open(grant="g-2", session_id="20260102T000000-bbbbbbbbbbbb")
    b.start(user="bob", database="appdb", scope="write")
    b.statement("update accounts set name = 'x' where id = 1", statement_class="write", tag="UPDATE 1")
    b.end("expired")
    clock.t = T0 + 2 * 86400
    c = write_sample(factory.open(grant="g-1", session_id="20260103T000000-cccccccccccc"), clock, end=False)
    return key_files, (a, b, c)


def test_commands_are_registered_in_the_main_parser():
    out = pgwarden("--help").stdout
    for name in ("sessions", "replay", "audit"):
        assert name in out
    out = pgwarden("audit", "--help").stdout
    assert "verify" in out and "export" in out


def test_sessions(recorded):
    kf, (a, b, c) = recorded
    p = pgwarden("sessions", "-c", kf.config)
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split()[:3] == ["STARTED", "(UTC)", "SESSION"]
    assert [r.split()[2] for r in rows[1:]] == [a.session_id, b.session_id, c.session_id]
    assert rows[2].endswith("expired") and rows[3].endswith("UNTERMINATED")
    assert "alice@appdb" in rows[1] and "g-1" in rows[1]


def test_sessions_filters_and_json(recorded):
    kf, (a, b, c) = recorded
    p = pgwarden("sessions", "--dir", kf.recordings, "--grant", "g-1", "--json")
    assert p.returncode == 0, p.stderr
    got = [orjson.loads(x) for x in p.stdout.splitlines()]
    assert [g["session_id"] for g in got] == [a.session_id, c.session_id]
    assert got[0]["status"] == "ended" and got[0]["end_reason"] == "client_closed" and got[0]["statements"] == 6
    assert got[1]["status"] == "unterminated"
    p = pgwarden("sessions", "--dir", kf.recordings, "--user", "bob", "--json")
    assert [orjson.loads(x)["session_id"] for x in p.stdout.splitlines()] == [b.session_id]
    p = pgwarden("sessions", "--dir", kf.recordings, "--since", "2026-01-02T00:00:00Z", "--json")
    assert [orjson.loads(x)["session_id"] for x in p.stdout.splitlines()] == [b.session_id, c.session_id]
    p = pgwarden("sessions", "--dir", kf.recordings, "--user", "nobody")
    assert p.returncode == 0 and "no sessions recorded matching the filters" in p.stdout
    p = pgwarden("sessions", "--dir", kf.recordings, "--since", "someday")
    assert p.returncode == 2 and "--since" in p.stderr


def test_sessions_from_environment_config(recorded, tmp_path):
    kf, (a, b, c) = recorded
    p = pgwarden("sessions", "--json", cwd=tmp_path, env={"PGWARDEN_CONFIG": str(kf.config)})
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3


def test_replay(recorded):
    kf, (a, b, c) = recorded
    p = pgwarden("replay", a.session_id, "-c", kf.config)
    assert p.returncode == 0, p.stderr
    assert "select id, name from accounts where id = $1" in p.stdout
    assert "-> DENIED [write.delete]" in p.stdout
    assert "1 catalog query folded" in p.stdout
    assert p.stdout.rstrip().splitlines()[-1].startswith("verify: ok")
    p = pgwarden("replay", str(a.path), "--all")          # a path works too, without a config
    assert p.returncode == 0 and "pg_catalog.pg_class" in p.stdout and "verify:" not in p.stdout
    p = pgwarden("audit", "replay", c.session_id, "-c", kf.config)
    assert "UNTERMINATED" in p.stdout


def test_replay_pace(recorded):
    """--pace sleeps the recorded gaps (capped at 5 s): b's one statement comes 0 s after its start."""
    import time

    kf, (a, b, c) = recorded
    t = time.monotonic()
    p = pgwarden("replay", b.session_id, "--dir", kf.recordings, "--pace")
    assert p.returncode == 0 and "UPDATE 1" in p.stdout
    assert time.monotonic() - t < 30


def test_replay_unknown_session(recorded):
    kf, _ = recorded
    p = pgwarden("replay", "20260101T000000-000000000000", "-c", kf.config)
    assert p.returncode == 2 and "no recording of session" in p.stderr


def test_verify_all(recorded):
    kf, (a, b, c) = recorded
    p = pgwarden("audit", "verify", "-c", kf.config)
    assert p.returncode == 3, p.stdout + p.stderr          # one unterminated
    assert p.stdout.count("\nok ") + p.stdout.startswith("ok ") == 2
    assert "UNTERMINATED  20260103T000000-cccccccccccc" in p.stdout
    assert "3 recording(s): 2 ok, 0 failed, 1 unterminated" in p.stderr
    p = pgwarden("audit", "verify", "-c", kf.config, "--allow-unterminated")
    assert p.returncode == 0


def test_verify_paths_ids_and_keys(recorded):
    kf, (a, b, c) = recorded
    p = pgwarden("audit", "verify", a.path, b.session_id, "--dir", kf.recordings, "--key", kf.public)
    assert p.returncode == 0, p.stdout + p.stderr
    p = pgwarden("audit", "verify", a.path, "--key", f"rec={kf.public}", "--json")
    assert p.returncode == 0 and orjson.loads(p.stdout)["status"] == "ok"
    p = pgwarden("audit", "verify", a.path)                 # no keys at all
    assert p.returncode == 1 and "no public keys" in p.stderr and "not among the known keys" in p.stdout


@pytest.mark.parametrize("tamper", ["flip", "delete", "swap"])
def test_verify_tampered_exits_1_naming_the_record(recorded, tamper):
    kf, (a, b, c) = recorded
    lines = a.path.read_bytes().splitlines()
    if tamper == "flip":
        i = lines[3].index(b"delete from accounts")
        lines[3] = lines[3][:i] + b"D" + lines[3][i + 1:]
        expected = 4
    elif tamper == "delete":
        del lines[4]
        expected = 5
    else:
        lines[5], lines[6] = lines[6], lines[5]
        expected = 6
    a.path.write_bytes(b"".join(x + b"\n" for x in lines))
    p = pgwarden("audit", "verify", a.session_id, b.session_id, "-c", kf.config)
    assert p.returncode == 1
    bad = next(x for x in p.stdout.splitlines() if x.startswith("FAILED"))
    assert a.session_id in bad and f"record {expected}:" in bad
    p = pgwarden("audit", "verify", a.path, "-c", kf.config, "--json")
    got = orjson.loads(p.stdout)
    assert got["status"] == "failed" and got["failure"]["record"] == expected


def test_verify_killed_recording_is_unterminated(recorded):
    kf, (a, b, c) = recorded
    p = pgwarden("audit", "verify", c.path, "-c", kf.config, "--json")
    assert p.returncode == 3
    got = orjson.loads(p.stdout)
    assert got["status"] == "unterminated" and got["statements"] == 6 and got["failure"] is None


def test_verify_without_recordings_dir(tmp_path):
    p = pgwarden("audit", "verify", "--dir", tmp_path / "none")
    assert p.returncode == 2 and "no recordings directory" in p.stderr


def test_bad_config_is_a_usage_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[audit]\nfsync = "sometimes"\n')
    p = pgwarden("sessions", "-c", cfg)
    assert p.returncode == 2 and "audit.fsync" in p.stderr


def test_export_html(recorded, tmp_path):
    kf, (a, b, c) = recorded
    out = tmp_path / "a.html"
    p = pgwarden("audit", "export", a.session_id, "--html", "-o", out, "-c", kf.config)
    assert p.returncode == 0, p.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and 'data-status="ok"' in page
    assert "delete from accounts" in page and "INC-42 stuck payments" in page
    p = pgwarden("audit", "export", c.session_id, "--html", "-c", kf.config)      # to stdout
    assert p.returncode == 3 and 'data-status="unterminated"' in p.stdout
    p = pgwarden("audit", "export", a.session_id, "-c", kf.config)
    assert p.returncode == 2 and "--html" in p.stderr


def test_console_script(recorded):
    """The installed ``pgwarden`` entry point, when there is one, runs the same commands."""
    import shutil

    exe = shutil.which("pgwarden")
    if exe is None:
        pytest.skip("pgwarden console script not installed (pip install -e .)")
    kf, (a, b, c) = recorded
    p = subprocess.run([exe, "audit", "verify", a.path, b.path, "-c", kf.config], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr

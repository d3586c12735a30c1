"""`pgwarden demo --json`: the scriptable demo applications' own tests rely on.

It prints one JSON line (config, admin_dsn, one proxy DSN per scope), serves
until SIGTERM/SIGINT, and then leaves nothing behind.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest


@pytest.fixture
def demo():
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo", "--json", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, f"demo printed nothing; stderr:\n{proc.stderr.read()}"
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_json_dsns_work_and_sigterm_cleans_up(demo):
    proc, info = demo
    assert set(info) == {"config", "admin_dsn", "dsn"}
    assert set(info["dsn"]) == {"read", "write", "ddl"}
    cfg = Path(info["config"])
    assert cfg.is_file()

    roles = {}
    for scope, dsn in info["dsn"].items():
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            roles[scope] = conn.execute("select current_user").fetchone()[0]
    assert roles == {"read": "pgw_read", "write": "pgw_write", "ddl": "pgw_ddl"}

    with psycopg.connect(info["admin_dsn"]) as conn:
        assert conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone() == (True,)
        # least privilege: none of the scope roles is a superuser; read is in pg_read_all_data only
        rows = dict(conn.execute("select rolname, rolsuper from pg_roles where rolname like 'pgw_%'").fetchall())
        assert rows == {"pgw_read": False, "pgw_write": False, "pgw_ddl": False}
        assert conn.execute("select pg_has_role('pgw_read', 'pg_write_all_data', 'MEMBER')").fetchone() == (False,)
        assert conn.execute("select pg_has_role('pgw_write', 'pg_write_all_data', 'MEMBER')").fetchone() == (True,)

    # ddl can create in public; write cannot; read cannot write
    with psycopg.connect(info["dsn"]["ddl"], autocommit=True) as conn:
        conn.execute("create table demo_t (a int)")
    with psycopg.connect(info["dsn"]["write"], autocommit=True) as conn:
        conn.execute("insert into demo_t values (1)")
    with psycopg.connect(info["dsn"]["read"], autocommit=True) as conn:
        assert conn.execute("select count(*) from demo_t").fetchone() == (1,)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not cfg.exists(), "the demo's temporary directory was not removed"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(info["admin_dsn"], connect_timeout=3)


def test_demo_banner_prints_psql_command():
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "psql 'postgresql://alice@127.0.0.1:" in text and "PGPASSWORD=" in text, text
        # the printed command really connects
        cmd = next(i for i, l in enumerate(lines) if l.strip().startswith("PGPASSWORD="))
        token = lines[cmd].split("'")[1]
        url = lines[cmd + 1].split("'")[1]
        out = subprocess.run(["psql", "-X", "-At", url, "-c", "select current_user"], capture_output=True,
                             text=True, env=dict(os.environ, PGPASSWORD=token), timeout=30)
        assert out.stdout.strip() == "pgw_read", out.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

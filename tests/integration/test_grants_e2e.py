"""Grants end to end: the grant commands as subprocesses, psql through a real proxy.

request (alice) -> approve (bob) -> token -> psql connects -> revoke (bob) ->
a new connection is refused with "revoked by bob at T: reason", and a live
session of the grant is cut.

The commands run through ``proxy.cli.main``, the code the ``pgwarden``
console script runs, each in its own process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.demo import write_config

from .conftest import DB, Proxy, free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNNER = "import sys; from proxy.cli import main; sys.exit(main())"
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"

GRANTS_SECTION = """
[grants]
store = "grants.db"
databases = ["appdb"]
[grants.groups]
dba = ["bob"]
[grants.policy.read]
max_duration = "8h"
approval = "auto"
[grants.policy.write]
max_duration = "2h"
approval = "required"
approvers = ["group:dba"]
two_person = true
break_glass = true
"""


class Env:
    def __init__(self, workdir: Path, config: Path, proxy: Proxy) -> None:
        self.workdir, self.config, self.proxy = workdir, config, proxy

    def cli(self, *args: str, check: int | None = 0, config: Path | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, PGWARDEN_CONFIG=str(config or self.config))
        proc = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        if check is not None:
            assert proc.returncode == check, f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *args: str) -> dict:
        return json.loads(self.cli(*args, "--json").stdout)

    def request(self, *extra: str, user: str = "alice", scope: str = "write", duration: str = "30m") -> str:
        return self.json("request", "--db", DB, "--scope", scope, "--for", duration, "--reason", "INC-7 fix orders",
                         "--as", user, *extra)["id"]

    def psql_env(self, token: str, user: str = "alice") -> dict[str, str]:
        return dict(os.environ, PGHOST=self.proxy.host, PGPORT=str(self.proxy.port), PGUSER=user, PGDATABASE=DB,
                    PGPASSWORD=token, PGSSLMODE="require")

    def psql(self, token: str, sql: str = "select current_user", user: str = "alice") -> subprocess.CompletedProcess:
        return subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
                              env=dict(self.psql_env(token, user), PGCONNECT_TIMEOUT="10"),
                              capture_output=True, text=True, timeout=60)

    def sleeping_psql(self, token: str) -> subprocess.Popen:
        """psql running ``select pg_sleep(30)`` through the proxy, in the background."""
        return subprocess.Popen(["psql", "-X", "-At", "-c", "select pg_sleep(30)"], env=self.psql_env(token),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def env(pg, scope_roles, proxy_assets):
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    base, kp, cert, key = proxy_assets
    work = base / f"grants-{os.getpid()}-{time.monotonic_ns()}"
    work.mkdir()
    port = free_port()
    cfg = write_config(work, pg_host=pg.host, pg_port=pg.port, scope_roles=scope_roles, listen_port=port,
                       kid=kp.kid, private_path=kp.private_path, public_path=kp.public_path, cert=cert, key=key)
    cfg.write_text(cfg.read_text() + GRANTS_SECTION)
    p = Proxy(work, cfg, port, kp).start()
    yield Env(work, cfg, p)
    p.stop()


# ------------------------------------------------------------ the workflow


def test_request_approve_token_psql_revoke(env):
    gid = env.request("--ticket", "INC-7")
    g = env.json("grant", "show", gid)["grant"]
    assert (g["state"], g["requester"], g["subject"], g["ticket"]) == ("requested", "alice", "alice", "INC-7")

    refused = env.cli("token", gid, "--as", "alice", check=1)
    assert f"grant {gid} is not approved (state requested)" in refused.stderr

    approved = env.cli("approve", gid, "--as", "bob")
    assert f"grant {gid} approved by bob" in approved.stdout

    tok = env.json("token", gid, "--as", "alice")
    assert (tok["grant"], tok["sub"], tok["db"], tok["scope"], tok["state"]) == (gid, "alice", DB, "write", "active")
    out = env.psql(tok["token"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pgw_write"

    # `connect` runs psql itself with the token in PGPASSWORD
    conn = env.cli("connect", gid, "--as", "alice", "--", "-X", "-At", "-c", "select 40 + 2")
    assert conn.stdout.strip() == "42"

    revoked = env.cli("revoke", gid, "--reason", "INC-7 closed", "--as", "bob")
    assert re.search(rf"grant {gid} revoked by bob at {TS}: INC-7 closed", revoked.stdout)

    again = env.cli("token", gid, "--as", "alice", check=1)
    assert re.search(rf"no token: grant {gid} revoked by bob at {TS}: INC-7 closed", again.stderr)

    show = env.cli("grant", "show", gid).stdout
    for line in (r"request\s+alice\s+requested write on appdb for alice, 30m: INC-7 fix orders",
                 r"approve\s+bob\s+approved", r"issue\s+alice\s+token issued",
                 r"revoke\s+bob\s+revoked: INC-7 closed", rf"connect now: refused: grant {gid} revoked by bob"):
        assert re.search(line, show), show
    events = [e["event"] for e in env.json("grant", "show", gid)["events"]]
    assert events == ["request", "approve", "issue", "issue", "revoke"]


def test_revoked_grant_refused_at_connect(env):
    gid = env.request()
    env.cli("approve", gid, "--as", "bob")
    token = env.json("token", gid, "--as", "alice")["token"]
    assert env.psql(token).returncode == 0
    env.cli("revoke", gid, "--reason", "suspicious activity", "--as", "bob")
    out = env.psql(token)
    assert out.returncode != 0
    assert re.search(rf"grant {gid} revoked by bob at {TS}: suspicious activity", out.stderr), out.stderr
    # the proxy recorded the session that ran before the revocation: it is part of the evidence
    deadline = time.monotonic() + 5
    while True:
        sessions = env.json("grant", "show", gid)["sessions"]
        if (sessions and sessions[0]["ended_at"]) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(sessions) == 1 and sessions[0]["user"] == "alice" and sessions[0]["ended_at"]
    assert "session" in env.cli("grant", "show", gid).stdout


def test_revocation_cuts_a_live_session(env):
    gid = env.request()
    env.cli("approve", gid, "--as", "bob")
    token = env.json("token", gid, "--as", "alice")["token"]
    live = env.sleeping_psql(token)
    try:
        time.sleep(1.0)                            # the session is in the relay, the statement running
        assert live.poll() is None
        env.cli("revoke", gid, "--reason", "incident over", "--as", "bob")
        t0 = time.monotonic()
        _, err = live.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert live.returncode != 0
    assert re.search(rf"grant {gid} revoked by bob at {TS}: incident over", err), err
    assert took < 2.0                              # DESIGN: within a second (plus CLI start-up)


def test_early_end_cuts_a_live_session_and_frees_the_backend(env, admin):
    gid = env.request(scope="read")                 # auto-approved
    token = env.json("token", gid, "--as", "alice")["token"]
    live = env.sleeping_psql(token)
    tag = f"%{gid}%"
    try:
        deadline = time.monotonic() + 10
        while not admin("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
                        " AND query LIKE 'select pg_sleep%%'", (tag,))[0][0]:
            assert time.monotonic() < deadline, "the statement never reached the server"
            time.sleep(0.05)
        env.cli("end", gid, "--as", "alice")
        _, err = live.communicate(timeout=10)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert live.returncode != 0
    assert re.search(rf"grant {gid} ended by alice at {TS}", err), err
    deadline = time.monotonic() + 1.5
    while admin("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", (tag,))[0][0]:
        assert time.monotonic() < deadline, "the upstream backend outlived the grant"
        time.sleep(0.05)
    sessions = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sessions = env.json("grant", "show", gid)["sessions"]
        if sessions and sessions[0]["ended_at"]:
            break
        time.sleep(0.1)
    assert sessions[0]["end_reason"] == "ended", sessions


def test_token_without_a_grant_is_refused(env):
    """With a [grants] store, a token the store does not know (minted by hand) does not get in."""
    out = env.psql(env.proxy.token("read", sub="alice"))
    assert out.returncode != 0
    assert "is not known to this proxy's grant store" in out.stderr, out.stderr


# ------------------------------------------------------------- refusals


def test_self_approval_refused(env):
    gid = env.request()
    out = env.cli("approve", gid, "--as", "alice", check=1)
    assert f"alice cannot approve grant {gid}: two-person rule" in out.stderr
    assert env.json("grant", "show", gid)["grant"]["state"] == "requested"


def test_duration_over_max_refused(env):
    out = env.cli("request", "--db", DB, "--scope", "write", "--for", "3h", "--reason", "x", "--as", "alice", check=1)
    assert "duration 3h is over the maximum for scope 'write' (2h)" in out.stderr


def test_approver_not_allowed_refused(env):
    gid = env.request()
    out = env.cli("approve", gid, "--as", "carol", check=1)
    assert "carol is not allowed to approve scope 'write' grants (approvers: group:dba)" in out.stderr


def test_unknown_scope_database_and_past_start_refused(env):
    base = ["request", "--for", "10m", "--reason", "x", "--as", "alice"]
    assert "unknown scope 'admin'" in env.cli(*base, "--db", DB, "--scope", "admin", check=1).stderr
    assert "unknown database 'prod'" in env.cli(*base, "--db", "prod", "--scope", "read", check=1).stderr
    past = env.cli(*base, "--db", DB, "--scope", "read", "--start", "2020-01-01T00:00:00Z", check=1)
    assert "is in the past" in past.stderr
    assert env.cli(*base, "--db", DB, "--scope", "read", "--start", "tomorrow", check=1).stderr.count("not a time")


def test_deny_end_and_usage(env):
    gid = env.request()
    denied = env.cli("deny", gid, "--reason", "use the read scope", "--as", "bob")
    assert f"grant {gid} denied by bob: use the read scope" in denied.stdout
    assert "was denied by bob" in env.cli("token", gid, "--as", "alice", check=1).stderr

    gid = env.request(scope="read")                 # auto-approved
    assert "only the requester" in env.cli("end", gid, "--as", "bob", check=1).stderr
    assert re.search(rf"grant {gid} ended by alice at {TS}", env.cli("end", gid, "--as", "alice").stdout)
    assert "ended by alice" in env.cli("token", gid, "--as", "alice", check=1).stderr
    assert env.cli("approve", check=2).returncode == 2           # usage error
    assert "no grant 'gnope'" in env.cli("approve", "gnope", "--as", "bob", check=1).stderr


def test_scheduled_window(env):
    g = env.json("request", "--db", DB, "--scope", "read", "--for", "1h", "--reason", "nightly job",
                 "--start", "+2h", "--as", "alice")
    assert g["state"] == "approved"
    tok = env.json("token", g["id"], "--as", "alice")
    assert tok["nbf"] == g["not_before"]
    out = env.psql(tok["token"])
    assert out.returncode != 0 and "not valid before" in out.stderr


def test_issue_for_automation(env):
    tok = env.json("issue", "--db", DB, "--scope", "write", "--for", "15m", "--reason", "deploy 1.2",
                   "--subject", "alice", "--as", "bob")
    assert tok["state"] == "active" and tok["sub"] == "alice"
    assert env.psql(tok["token"]).stdout.strip() == "pgw_write"
    g = env.json("grant", "show", tok["grant"])
    assert g["grant"]["approver"] == "bob" and [e["event"] for e in g["events"]] == ["request", "approve", "issue"]
    assert g["events"][1]["details"] == {"via": "issue"}

    out = env.cli("issue", "--db", DB, "--scope", "write", "--for", "15m", "--reason", "x", "--subject", "svc",
                  "--as", "ci", check=1)
    assert "ci may not issue scope 'write' grants directly" in out.stderr
    out = env.cli("issue", "--db", DB, "--scope", "write", "--for", "15m", "--reason", "x", "--subject", "bob",
                  "--as", "bob", check=1)
    assert "two-person rule" in out.stderr
    auto = env.json("issue", "--db", DB, "--scope", "read", "--for", "15m", "--reason", "etl", "--subject", "alice",
                    "--as", "ci")
    assert auto["scope"] == "read"


def test_break_glass_issued_at_once_and_reviewed(env):
    g = env.json("request", "--db", DB, "--scope", "write", "--for", "20m", "--reason", "outage INC-9",
                 "--break-glass", "--as", "alice")
    assert g["state"] == "active" and g["approver"] == "break-glass" and g["awaiting_review"]
    assert env.psql(g["token"]).stdout.strip() == "pgw_write"
    listed = [x["id"] for x in env.json("grants", "--unreviewed")]
    assert g["id"] in listed
    assert "two-person rule" in env.cli("review", g["id"], "--as", "alice", check=1).stderr
    env.cli("review", g["id"], "--as", "bob")
    assert g["id"] not in [x["id"] for x in env.json("grants", "--unreviewed")]
    human = env.cli("grants", "--user", "alice").stdout
    assert "ID" in human and g["id"] in human


# ---------------------------------------------------------------- report


def test_report_on_a_known_data_set(env):
    """A fresh store filled through the API with known times, read by `report`."""
    from policy.grants import GrantState, apply
    from proxy.store import open_store
    from proxy.store.config import load_grants_config

    work = env.workdir / "report"
    work.mkdir()
    cfg = work / "pgwarden.toml"
    cfg.write_text(env.config.read_text().replace('store = "grants.db"', 'store = "report.db"'))
    rules = load_grants_config(cfg).rules
    t0 = time.time() - 5 * 3600
    with open_store("report.db", base=work) as store:
        def make(gid, scope="write", latency=None, **kw):
            g = rules.request(requester="alice", database=DB, scope=scope, duration=3600, reason="r", now=t0,
                              grant_id=gid, **kw)
            store.create(g)
            event = rules.initial_event(g)
            if latency is not None:
                g2 = rules.approve(g, actor="bob", now=t0 + latency)
            elif event:
                g2 = apply(g, event, actor="alice", now=t0)
            else:
                return g
            store.update(g2, GrantState.REQUESTED)
            return g2

        make("ga", latency=60)
        make("gb", latency=120)
        make("gc", latency=900)
        make("gd", scope="read")
        make("ge", break_glass=True)
        make("gf")                                      # never approved: expired request
        store.record_session("ga", "s1", "alice", t0 + 100, t0 + 400)
        store.record_session("ga", "s2", "alice", t0 + 500, t0 + 600)
        store.record_session("gd", "s3", "alice", t0 + 10, t0 + 1210)
    r = env.json("report", "--config", str(cfg))
    assert r["grants"] == 6
    assert r["by_scope"] == {"read": {"expired": 1}, "write": {"expired": 5}}
    assert r["approval_latency"] == {"count": 3, "median_s": 120, "p95_s": 900}
    assert r["session_duration"] == {"count": 3, "median_s": 300}
    assert r["never_used"] == {"count": 3, "grants": ["gb", "gc", "ge"]}
    assert [b["id"] for b in r["break_glass_awaiting_review"]] == ["ge"]
    text = env.cli("report", "--config", str(cfg)).stdout
    assert "median 2m, p95 15m" in text and "median 5m" in text and "grants never used: 3" in text
    assert "break-glass awaiting review: 1" in text
    assert env.json("report", "--config", str(cfg), "--since", "1h")["grants"] == 0


# ------------------------------------------------------------ the store under a proxy

STORE_TOML = '[grants]\nstore = "grants.db"\n'


def _grant(p, reason: str, *, duration: float = 600, scope: str = "read", not_before: float | None = None,
           now: float | None = None):
    """A grant in ``p``'s store, through its rules' first step (read: approved at once)."""
    from policy.grants import GrantState, apply
    from proxy.store import open_store
    from proxy.store.config import load_grants_config

    rules = load_grants_config(p.config_path).rules
    now = time.time() if now is None else now
    with open_store("grants.db", base=p.config_path.parent) as store:
        g = store.create(rules.request(requester="alice", database=DB, scope=scope, duration=duration,
                                       reason=reason, now=now, not_before=not_before))
        return store.update(apply(g, rules.initial_event(g), actor="alice", now=now), GrantState.REQUESTED)


def _revoke(p, grant_id: str, reason: str) -> None:
    """bob revokes the grant, as another process would."""
    from policy.grants import apply
    from proxy.store import open_store

    with open_store("grants.db", base=p.config_path.parent) as store:
        cur = store.get(grant_id)
        store.update(apply(cur, "revoke", actor="bob", now=time.time(), reason=reason), cur.state)


def _failing(method: str, switch: dict, exc: Exception):
    """inprocess_server setup: the proxy's store ``method`` raises ``exc`` while ``switch["on"]``
    (counting ``switch["failures"]``)."""
    switch.setdefault("on", False)
    switch.setdefault("failures", 0)

    def setup(server):
        store = server.grants.store
        real = getattr(store, method)

        def wrapper(*args):
            if switch["on"]:
                switch["failures"] += 1
                raise exc
            return real(*args)
        setattr(store, method, wrapper)
    return setup


def _inproc_dsn(p, server, grant) -> str:
    return p.dsn("read", token=p.token("read", jti=grant.id)).replace(f":{p.port}/", f":{server.port}/")


def _cut_soon(conn, grant, by: str = "bob") -> None:
    """The session of ``conn`` is cut for ``grant``'s revoke within 5 seconds."""
    import psycopg

    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match=f"grant {grant.id} revoked by {by}"):
        for _ in range(100):
            conn.execute("SELECT pg_sleep(0.1)")
    assert time.monotonic() - t0 < 5


def test_store_that_cannot_answer_refuses_the_connection(start_proxy):
    """Fail closed: the proxy cannot vouch for a grant it cannot read. (The store's reads are made
    to fail in the proxy: corrupting a live SQLite file under it is not deterministic -- SQLite may
    answer from its cache, or die of SIGBUS when its mapped -shm shrinks.)"""
    import sqlite3

    import psycopg

    from .conftest import inprocess_server

    p = start_proxy(extra_toml=STORE_TOML)
    g = _grant(p, "store test")
    broken: dict = {}
    with inprocess_server(p.config_path, setup=_failing("get", broken,
                                                        sqlite3.DatabaseError("file is not a database"))) as server:
        dsn = _inproc_dsn(p, server, g)
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        broken["on"] = True
        with pytest.raises(psycopg.OperationalError, match="grant store is unavailable"):
            psycopg.connect(dsn, connect_timeout=10)
        broken["on"] = False
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:     # the store is back
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_session_ends_at_the_grant_end_when_the_token_outlives_it(start_proxy):
    """The deadline is the sooner of the token's exp and the grant's end."""
    import psycopg

    p = start_proxy(extra_toml=STORE_TOML)
    g = _grant(p, "short grant", duration=2.5)
    conn = psycopg.connect(p.dsn("read", token=p.token("read", jti=g.id, ttl=3600)), autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError, match=f"grant {g.id} expired at"):
            conn.execute("SELECT pg_sleep(10)")
        assert time.time() - g.expires_at < 1.5
    finally:
        conn.close()


def test_revoke_made_while_the_watcher_could_not_read_the_store_still_cuts(start_proxy):
    """The watcher restarts from "now" after a store failure; a revoke that landed during the
    failure must still reach the live session once the store answers again."""
    import psycopg

    from .conftest import inprocess_server

    p = start_proxy(extra_toml=STORE_TOML)
    g = _grant(p, "watch outage")
    failing: dict = {}
    with inprocess_server(p.config_path, setup=_failing("changes_since", failing,
                                                        OSError("the grant store is unreachable (test)"))) as server:
        with psycopg.connect(_inproc_dsn(p, server, g), autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            failing["on"] = True
            assert wait_for(lambda: failing["failures"]), "the watcher never polled the store"
            _revoke(p, g.id, "revoked during the outage")
            time.sleep(0.3)
            failing["on"] = False
            _cut_soon(conn, g)


def test_revoke_seen_while_the_grant_could_not_be_read_still_cuts(start_proxy):
    """The watcher hears of a change but cannot read the grant: it must read again until it can,
    not drop the change (it may be a revoke)."""
    import psycopg

    from .conftest import inprocess_server

    p = start_proxy(extra_toml=STORE_TOML)
    g = _grant(p, "read outage")
    failing: dict = {}
    with inprocess_server(p.config_path, setup=_failing("get", failing,
                                                        OSError("the grant store is unreachable (test)"))) as server:
        with psycopg.connect(_inproc_dsn(p, server, g), autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            failing["on"] = True
            _revoke(p, g.id, "revoked, unread")
            assert wait_for(lambda: failing["failures"]), "the watcher never heard of the revoke"
            assert conn.execute("SELECT 1").fetchone() == (1,)     # not cut: the proxy could not read why
            failing["on"] = False
            _cut_soon(conn, g)


def test_grants_active_gauge_counts_the_grants_a_client_could_use_now(start_proxy, monkeypatch):
    """pgwarden_grants_active: approved or active grants inside their window, recounted by the
    watcher (every GAUGE_EVERY seconds: shortened here)."""
    from proxy import metrics
    from proxy.net import grant_watch

    from .conftest import inprocess_server

    monkeypatch.setattr(grant_watch, "GAUGE_EVERY", 0.2)
    p = start_proxy(extra_toml=STORE_TOML)
    now = time.time()
    usable = [_grant(p, "gauge", now=now), _grant(p, "gauge", now=now)]
    _grant(p, "gauge", duration=0.5, now=now)                   # expires before the count
    _grant(p, "gauge", not_before=now + 3600, now=now)          # approved, its window not yet open
    _revoke(p, _grant(p, "gauge", now=now).id, "gauge")

    def gauge() -> float | None:
        return metrics.REGISTRY.get_sample_value("pgwarden_grants_active")

    time.sleep(0.6)
    with inprocess_server(p.config_path):
        assert wait_for(lambda: gauge() == 2), f"pgwarden_grants_active is {gauge()}, not the 2 usable grants"
        _revoke(p, usable[0].id, "gauge")
        assert wait_for(lambda: gauge() == 1), f"pgwarden_grants_active is {gauge()} after the revoke, not 1"

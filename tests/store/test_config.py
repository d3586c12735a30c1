"""[grants] in pgwarden.toml: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError
from proxy.store.config import load_grants_config


def write(tmp_path, text: str):
    p = tmp_path / "pgwarden.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_grants_section(tmp_path):
    cfg = load_grants_config(write(tmp_path, '[server]\nlisten_port = 6432\n'))
    assert not cfg.configured
    assert cfg.store_url == "grants.db" and cfg.store_path == tmp_path / "grants.db"
    rules = cfg.rules
    assert rules.databases is None
    assert (rules.policy("read").approval, rules.policy("read").max_duration) == ("auto", 8 * 3600)
    for scope in ("write", "ddl"):
        pol = rules.policy(scope)
        assert (pol.approval, pol.max_duration, pol.two_person, pol.approvers, pol.break_glass) == \
            ("required", 2 * 3600, True, (), False)


def test_full_section(tmp_path):
    cfg = load_grants_config(write(tmp_path, '''
[grants]
store = "sqlite:///var/lib/pgwarden/grants.db"
databases = ["appdb"]
[grants.groups]
dba = ["bob", "carol"]
[grants.policy.read]
max_duration = "4h"
[grants.policy.write]
max_duration = "1h30m"
approvers = ["group:dba", "dave"]
break_glass = true
[grants.policy.ddl]
max_duration = 600
approval = "auto"
two_person = false
'''))
    assert cfg.configured and str(cfg.store_path) == "/var/lib/pgwarden/grants.db"
    r = cfg.rules
    assert r.databases == ("appdb",)
    assert r.policy("read").max_duration == 4 * 3600 and r.policy("read").approval == "auto"
    w = r.policy("write")
    assert (w.max_duration, w.approvers, w.break_glass, w.approval) == (5400, ("group:dba", "dave"), True, "required")
    assert r.approvers("write") == {"bob", "carol", "dave"}
    d = r.policy("ddl")
    assert (d.max_duration, d.approval, d.two_person) == (600, "auto", False)


def test_relative_store_and_upstream_databases(tmp_path):
    cfg = load_grants_config(write(tmp_path, '''
[upstream.databases]
appdb = "app_prod"
[grants]
store = "state/grants.db"
'''))
    assert cfg.store_path == tmp_path / "state/grants.db"
    assert cfg.rules.databases == ("appdb",)


def test_scopes_follow_the_scopes_tables(tmp_path):
    cfg = load_grants_config(write(tmp_path, '[scopes.read]\nrole = "r"\n[scopes.report]\nrole = "x"\n'))
    assert set(cfg.rules.policies) == {"read", "report"}
    assert cfg.rules.policy("report").approval == "required"


def test_postgres_store(tmp_path):
    cfg = load_grants_config(write(tmp_path, '[grants]\nstore = "postgresql://pgw@db.internal/pgwarden"\n'))
    assert cfg.store_path is None and cfg.store_url.startswith("postgresql://")


@pytest.mark.parametrize(("text", "message"), [
    ('grants = 1', "grants: expected a table"),
    ('[grants]\nstor = "x"', "grants: unknown key(s) ['stor']"),
    ('[grants]\nstore = ""', "grants.store: expected a URL"),
    ('[grants]\nstore = "mysql://x"', "grants.store: unsupported URL scheme"),
    ('[grants]\ndatabases = "appdb"', "grants.databases: expected a list"),
    ('[grants.groups]\ndba = "bob"', "grants.groups.dba: expected a list"),
    ('[grants.policy.admin]\napproval = "auto"', "grants.policy.admin: no scope 'admin' is configured"),
    ('[grants.policy.write]\nmax = 1', "grants.policy.write: unknown key(s) ['max']"),
    ('[grants.policy.write]\nmax_duration = "forever"', "grants.policy.write.max_duration: invalid duration"),
    ('[grants.policy.write]\nmax_duration = -5', "grants.policy.write.max_duration: must be greater than zero"),
    ('[grants.policy.write]\napproval = "maybe"', 'grants.policy.write.approval: must be "auto" or "required"'),
    ('[grants.policy.write]\napprovers = "bob"', "grants.policy.write.approvers: expected a list"),
    ('[grants.policy.write]\napprovers = ["group:dba"]', "grants.policy.write.approvers: group 'dba' is not defined"),
    ('[grants.policy.write]\ntwo_person = "yes"', "grants.policy.write.two_person: expected true or false"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        load_grants_config(write(tmp_path, text))
    assert message in str(exc.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_grants_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_grants_config(write(tmp_path, "[grants\n"))

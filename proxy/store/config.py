"""The ``[grants]`` section of pgwarden.toml: store location and grant policy.

Job: read ``[grants]`` from the same file as the rest of the config and turn
it into a ``GrantsConfig`` (store URL + ``policy.grants.GrantRules``).

Rules:

* Every error is a ``proxy.config.ConfigError`` naming the dotted key.
* Everything is optional.  Without ``[grants]``: store ``grants.db`` beside
  the config; read is "auto" for up to 8h; write and ddl need approval by
  any other user (two-person) for up to 2h; no break-glass.
* A ``[grants.policy.NAME]`` sets only the keys it names; the rest come from
  that scope's default.
* Relative store paths resolve against the config file's directory.

```toml
[grants]
store = "sqlite:///var/lib/pgwarden/grants.db"   # or "grants.db", or "postgresql://..."
databases = ["appdb"]          # optional; default: keys of [upstream.databases], else any
[grants.groups]
dba = ["bob", "carol"]
[grants.policy.write]
max_duration = "2h"
approval = "required"          # or "auto"
approvers = ["group:dba", "dave"]
two_person = true
break_glass = true
```
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from policy.grants import DEFAULT_POLICIES, GrantPolicy, GrantRules
from policy.tokens import parse_duration

from ..config import ConfigError, read_toml
from . import StoreError, sqlite_path

__all__ = ["GrantsConfig", "load_grants_config", "grants_config_from_dict", "GRANTS_KEYS", "POLICY_KEYS"]

GRANTS_KEYS = {"store", "databases", "groups", "policy"}
POLICY_KEYS = {"max_duration", "approval", "approvers", "two_person", "break_glass"}
DEFAULT_STORE = "grants.db"


@dataclass(frozen=True)
class GrantsConfig:
    path: Path | None            # the config file
    store_url: str               # as written (or the default)
    store_path: Path | None      # the SQLite file, resolved; None for PostgreSQL
    rules: GrantRules
    configured: bool             # the file has a [grants] section
    base: Path                   # directory relative store paths resolve against


def load_grants_config(path: str | Path) -> GrantsConfig:
    """Read ``[grants]`` from the TOML file at ``path``."""
    path = Path(path)
    return grants_config_from_dict(read_toml(path), path=path)


def grants_config_from_dict(raw: dict[str, Any], *, path: Path | None = None,
                            base: Path | None = None) -> GrantsConfig:
    """The same from an already parsed file (the whole document).  Relative
    store paths resolve against ``base``, else the file's directory, else the
    working directory."""
    if base is None:
        base = path.resolve().parent if path is not None else Path.cwd()
    section = raw.get("grants")
    configured = section is not None
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise ConfigError("grants: expected a table [grants]")
    extra = set(section) - GRANTS_KEYS
    if extra:
        raise ConfigError(f"grants: unknown key(s) {sorted(extra)}; known: {sorted(GRANTS_KEYS)}")

    store_url = section.get("store", DEFAULT_STORE)
    if not isinstance(store_url, str) or not store_url.strip():
        raise ConfigError("grants.store: expected a URL string (sqlite:///path/grants.db, "
                          "a file path, or postgresql://...)")
    try:
        store_path = sqlite_path(store_url, base)
    except StoreError as e:
        raise ConfigError(f"grants.store: {e}") from None
    if store_path is None and not store_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"grants.store: unsupported URL scheme in {store_url.split('://')[0]!r}; "
                          "use sqlite:///path/grants.db or postgresql://...")

    databases = _databases(section, raw)
    groups = _groups(section)
    policies = _policies(section, raw, groups)
    return GrantsConfig(path=path, store_url=store_url, store_path=store_path,
                        rules=GrantRules(policies=policies, groups=groups, databases=databases),
                        configured=configured, base=Path(base))


def _databases(section: dict, raw: dict) -> tuple[str, ...] | None:
    if "databases" in section:
        dbs = section["databases"]
        if not isinstance(dbs, list) or not all(isinstance(d, str) and d for d in dbs):
            raise ConfigError('grants.databases: expected a list of database names, e.g. ["appdb"]')
        return tuple(dbs)
    upstream_dbs = raw.get("upstream", {}).get("databases") if isinstance(raw.get("upstream"), dict) else None
    if isinstance(upstream_dbs, dict) and upstream_dbs:
        return tuple(upstream_dbs)
    return None


def _groups(section: dict) -> dict[str, tuple[str, ...]]:
    groups_raw = section.get("groups", {})
    if not isinstance(groups_raw, dict):
        raise ConfigError('grants.groups: expected a table of NAME = ["user", ...]')
    groups = {}
    for name, members in groups_raw.items():
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise ConfigError(f'grants.groups.{name}: expected a list of user names, e.g. ["bob"]')
        groups[name] = tuple(members)
    return groups


def _policies(section: dict, raw: dict, groups: dict) -> dict[str, GrantPolicy]:
    scopes_raw = raw.get("scopes")
    known = list(scopes_raw) if isinstance(scopes_raw, dict) and scopes_raw else list(DEFAULT_POLICIES)
    policies = {s: DEFAULT_POLICIES.get(s) or GrantPolicy(s, 2 * 3600.0, "required") for s in known}
    policy_raw = section.get("policy", {})
    if not isinstance(policy_raw, dict):
        raise ConfigError("grants.policy: expected tables [grants.policy.SCOPE]")
    for scope, t in policy_raw.items():
        key = f"grants.policy.{scope}"
        if scope not in policies:
            raise ConfigError(f"{key}: no scope {scope!r} is configured (scopes: {', '.join(known)})")
        if not isinstance(t, dict):
            raise ConfigError(f"{key}: expected a table")
        extra = set(t) - POLICY_KEYS
        if extra:
            raise ConfigError(f"{key}: unknown key(s) {sorted(extra)}; known: {sorted(POLICY_KEYS)}")
        changes: dict[str, Any] = {}
        if "max_duration" in t:
            v = t["max_duration"]
            try:
                if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    raise ValueError("expected a duration such as \"2h\" or a number of seconds")
                changes["max_duration"] = parse_duration(v) if isinstance(v, str) else float(v)
                if not changes["max_duration"] > 0:
                    raise ValueError("must be greater than zero")
            except ValueError as e:
                raise ConfigError(f"{key}.max_duration: {e}") from None
        if "approval" in t:
            if t["approval"] not in ("auto", "required"):
                raise ConfigError(f'{key}.approval: must be "auto" or "required", not {t["approval"]!r}')
            changes["approval"] = t["approval"]
        if "approvers" in t:
            approvers = t["approvers"]
            if not isinstance(approvers, list) or not all(isinstance(a, str) and a for a in approvers):
                raise ConfigError(f'{key}.approvers: expected a list of user names or "group:NAME"')
            for a in approvers:
                if a.startswith("group:") and a[len("group:"):] not in groups:
                    raise ConfigError(f"{key}.approvers: group {a[len('group:'):]!r} is not defined "
                                      "in [grants.groups]")
            changes["approvers"] = tuple(approvers)
        for flag in ("two_person", "break_glass"):
            if flag in t:
                if not isinstance(t[flag], bool):
                    raise ConfigError(f"{key}.{flag}: expected true or false")
                changes[flag] = t[flag]
        policies[scope] = replace(policies[scope], **changes)
    return policies

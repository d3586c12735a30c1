"""docker/: the Dockerfile and the compose file fit together and fit the code (no Docker engine needed).

- compose.yaml: the build context and Dockerfile exist; every bind mount's source exists; the
  config the command names is the one mounted; the proxy's upstream is the postgres service; the
  password variables the config reads are set for both services; the published port is the one
  the proxy listens on, on loopback only.
- docker/pgwarden.toml is a valid config (with a key pair where keygen puts it), its scope roles
  are the ones init.sql creates, with the privileges proxy/embedded.py gives them.
- Dockerfile: COPY sources exist and pass the .dockerignore; the entrypoint is the console
  script; the wheel built from exactly the files the build context sends carries the package data.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for this file: last matching pattern wins, ! re-includes."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        parts = rel.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[:i]), p) for i in range(1, len(parts) + 1))
        if p.startswith("**/"):
            hit = hit or any(fnmatch.fnmatch(part, p[3:]) for part in parts)
        if hit:
            ignored = not neg
    return ignored


def _ignore_patterns() -> list[str]:
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# --------------------------------------------------------------------------- compose.yaml


def test_compose_build_and_mounts_exist(compose):
    svc = compose["services"]["pgwarden"]
    context = (DOCKER / svc["build"]["context"]).resolve()
    assert context == REPO
    assert (context / svc["build"]["dockerfile"]).is_file()
    for name, service in compose["services"].items():
        for vol in service.get("volumes", []):
            src, target = vol.split(":")[:2]
            if src.startswith("./"):
                if src == "./keys":                      # made by `pgwarden keygen` (docker/README.md)
                    continue
                assert (DOCKER / src).exists(), f"{name}: bind mount source {src} missing"
            else:
                assert src in compose.get("volumes", {}), f"{name}: named volume {src} not declared"


def test_compose_command_uses_the_mounted_config(compose):
    svc = compose["services"]["pgwarden"]
    cmd = svc["command"]
    assert cmd[0] == "serve" and "--config" in cmd
    config_path = cmd[cmd.index("--config") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert mounts.get(config_path) == "./pgwarden.toml", mounts
    # public keys resolve relative to the config file: keys/... -> /etc/pgwarden/keys/...
    assert mounts.get(str(Path(config_path).parent / "keys")) == "./keys", mounts
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert compose["services"]["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_compose_ports_and_passwords_match_the_config(compose):
    import tomllib

    raw = tomllib.loads((DOCKER / "pgwarden.toml").read_text())
    pgw = compose["services"]["pgwarden"]
    pg = compose["services"]["postgres"]
    assert raw["upstream"]["host"] in compose["services"], "upstream.host is not a compose service"
    assert raw["upstream"]["port"] == 5432
    (published,) = pgw["ports"]
    host_ip, host_port, container_port = published.split(":")
    assert host_ip == "127.0.0.1", "the plaintext proxy port must stay on the host's loopback"
    assert int(container_port) == raw["server"]["listen_port"]
    assert raw["server"]["listen_host"] == "0.0.0.0"
    for name, scope in raw["scopes"].items():
        var = scope["password_env"]
        assert var in pgw["environment"], f"pgwarden service lacks {var}"
        assert var in pg["environment"], f"postgres service lacks {var} (init.sql reads it)"
        assert re.search(rf"\\getenv \w+ {var}\b", (DOCKER / "init.sql").read_text()), var


def test_docker_config_is_valid(tmp_path):
    from proxy.config import load
    from proxy.keys import generate_keypair

    shutil.copy(DOCKER / "pgwarden.toml", tmp_path / "pgwarden.toml")
    generate_keypair(tmp_path / "keys", "k1")               # what docker/README.md step 1 makes
    env = {"PGW_READ_PASSWORD": "r", "PGW_WRITE_PASSWORD": "w", "PGW_DDL_PASSWORD": "d"}
    cfg = load(tmp_path / "pgwarden.toml", env=env)
    assert set(cfg.scopes) == {"read", "write", "ddl"}
    assert cfg.scopes["read"].read_only and not cfg.scopes["write"].read_only
    assert cfg.upstream.databases == {"appdb": "appdb"}
    proc = subprocess.run([sys.executable, "-m", "proxy", "check-config", "--config", str(tmp_path / "pgwarden.toml")],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr


def test_init_sql_creates_the_configured_roles_least_privilege():
    import tomllib

    from proxy.embedded import SCOPE_ROLES

    sql = (DOCKER / "init.sql").read_text()
    raw = tomllib.loads((DOCKER / "pgwarden.toml").read_text())
    assert "CREATE DATABASE appdb" in sql
    for name, scope in raw["scopes"].items():
        role = scope["role"]
        m = re.search(rf"CREATE ROLE {role}\s+(.*?);", sql, re.S)
        assert m, f"init.sql does not create {role}"
        attrs = m.group(1)
        for bad in ("SUPERUSER", "CREATEDB", "CREATEROLE", "BYPASSRLS", "REPLICATION"):
            assert f"NO{bad}" in attrs, f"{role}: {bad} not explicitly off"
    grants = {g: set(re.findall(r"pgw_\w+", rest)) for g, rest in
              re.findall(r"GRANT (pg_\w+_all_data)\s+TO ([^;]+);", sql)}
    assert grants["pg_read_all_data"] == {"pgw_read", "pgw_write", "pgw_ddl"}
    assert grants["pg_write_all_data"] == {"pgw_write", "pgw_ddl"}, "the read role must not write"
    assert re.search(r"GRANT USAGE, CREATE ON SCHEMA public TO pgw_ddl;", sql)
    assert {s["role"] for s in raw["scopes"].values()} == set(SCOPE_ROLES.values())


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_copies_what_exists_and_is_not_ignored():
    instr = _dockerfile_instructions()
    patterns = _ignore_patterns()
    copies = [rest for word, rest in instr if word == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = rest.split()
        for src in sources:
            if src.endswith("*"):                            # README.md*: optional
                continue
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert not _ignored(src, patterns), f"COPY {src}: excluded by Dockerfile.dockerignore"
    assert (DOCKER / "Dockerfile").read_text().startswith("# syntax=docker/dockerfile:1"), \
        "RUN --mount needs BuildKit's Dockerfile syntax"


def test_dockerfile_entrypoint_and_port():
    import tomllib

    instr = dict((w, r) for w, r in _dockerfile_instructions() if w in ("ENTRYPOINT", "CMD", "EXPOSE", "USER"))
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert instr["ENTRYPOINT"] == '["pgwarden"]' and "pgwarden" in scripts
    assert instr["CMD"] == '["serve", "--config", "/etc/pgwarden/pgwarden.toml"]'
    assert instr["EXPOSE"] == "6432"
    assert instr["USER"].split(":")[0] != "0", "the proxy must not run as root"


def test_wheel_from_the_build_context_has_package_data(tmp_path):
    """Build the wheel from exactly what the build context sends, as the Dockerfile's build stage does."""
    patterns = _ignore_patterns()
    ctx = tmp_path / "ctx"
    for rel in ("pyproject.toml", "README.md"):
        if not _ignored(rel, patterns):
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / rel, ctx / rel)
    for top in ("proxy", "policy"):
        for f in (REPO / top).rglob("*"):
            rel = f.relative_to(REPO).as_posix()
            if f.is_file() and not _ignored(rel, patterns):
                (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, ctx / rel)
    # setuptools' build_py: the package files and package data a wheel of this context would carry
    # (the Dockerfile runs `pip wheel .`; this needs no network and no `wheel` package).
    out = tmp_path / "lib"
    proc = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                           "--build-lib", str(out)], cwd=ctx, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()}
    for data in ("policy/sql/readsafe_functions.txt", "policy/sql/settings.txt", "policy/sql/builtin_operators.txt"):
        assert data in names, f"{data} missing from the package build"
    assert "proxy/cli.py" in names and "proxy/net/server.py" in names and "policy/sql/classify.py" in names
    # every subpackage of the repository made it (a missing __init__.py would drop one silently)
    for init in list((REPO / "proxy").rglob("__init__.py")) + list((REPO / "policy").rglob("__init__.py")):
        rel = init.relative_to(REPO).as_posix()
        if "__pycache__" not in rel:
            assert rel in names, f"{rel} missing from the package build"

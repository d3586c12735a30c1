"""`pgwarden doctor --config FILE`: each scope's upstream role has no more than its scope allows.

Against the real PostgreSQL of the test session, with the least-privilege roles the fixtures
create (pgw_read, pgw_write, pgw_ddl): doctor exits 0. Each privilege beyond a scope, granted
for the length of one test and always taken back in a ``finally``, makes it exit 1 naming the
privilege and the statement that removes it. A role that cannot log in (wrong password, no
server) makes it exit 2 saying which role and why.

The server is shared by the whole test session: every change here is undone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DB = "appdb"


def doctor(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", "doctor", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


def report(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def doctor_json(config: Path, *args: str) -> tuple[int, dict]:
    proc = doctor(config, "--json", *args)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(report(proc)) from None


def problems(data: dict, scope: str) -> list[dict]:
    s = next(s for s in data["scopes"] if s["scope"] == scope)
    return [f for f in s["findings"] if f["level"] == "problem"]


@pytest.fixture
def config(proxy) -> Path:
    return proxy.config_path


@pytest.fixture
def variant(proxy, tmp_path):
    """variant(old, new) -> a copy of the proxy's config with one text replacement."""
    def make(old: str, new: str) -> Path:
        text = proxy.config_path.read_text()
        assert old in text, text
        path = tmp_path / f"pgwarden-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(text.replace(old, new))
        return path
    return make


# =========================================================================== clean roles


def test_clean_roles_exit_0(config):
    proc = doctor(config, "--database", DB)
    assert proc.returncode == 0, report(proc)
    out = proc.stdout
    for scope, role in (("read", "pgw_read"), ("write", "pgw_write"), ("ddl", "pgw_ddl")):
        assert f"scope {scope}: role {role}" in out, out
        assert f"logged in as {role}" in out, out
    assert "PROBLEM" not in out
    assert "0 problem(s)" in out


def test_clean_roles_json(config):
    code, data = doctor_json(config, "--database", DB)
    assert code == 0 and data["exit"] == 0 and data["problems"] == 0, data
    assert [s["scope"] for s in data["scopes"]] == ["read", "write", "ddl"]
    for s in data["scopes"]:
        assert s["connected"] and s["error"] is None, s
        assert s["databases"] == [DB]
        assert all(f["level"] in ("ok", "warning") for f in s["findings"]), s
    read = next(s for s in data["scopes"] if s["scope"] == "read")
    assert "write" not in read["classes"] and "read" in read["classes"]
    checks = {f["check"] for f in read["findings"]}
    assert {"attributes", "memberships", "tables", "sequences", "schemas", "objects"} <= checks, checks


def test_default_database_comes_from_upstream_databases(variant):
    cfg = variant('sslmode = "prefer"', 'sslmode = "prefer"\ndatabases = { appdb = "appdb", other = "appdb" }')
    code, data = doctor_json(cfg)
    assert code == 0, data
    assert all(s["databases"] == [DB] for s in data["scopes"]), data


def test_only_one_scope(config):
    code, data = doctor_json(config, "--database", DB, "--scope", "read")
    assert code == 0, data
    assert [s["scope"] for s in data["scopes"]] == ["read"]
    proc = doctor(config, "--scope", "nosuch")
    assert proc.returncode == 2 and "nosuch" in proc.stderr, report(proc)


# =========================================================================== privileges beyond the scope


def test_read_role_member_of_pg_write_all_data(config, admin):
    try:
        admin("GRANT pg_write_all_data TO pgw_read")
        proc = doctor(config, "--database", DB)
        assert proc.returncode == 1, report(proc)
        assert "pg_write_all_data" in proc.stdout
        assert "REVOKE pg_write_all_data FROM pgw_read;" in proc.stdout, proc.stdout
        code, data = doctor_json(config, "--database", DB)
        assert code == 1 and data["exit"] == 1
        found = problems(data, "read")
        assert any(f["check"] == "member.pg_write_all_data" for f in found), found
        # the same membership is fine for the write scope
        assert not problems(data, "write") and not problems(data, "ddl"), data
    finally:
        admin("REVOKE pg_write_all_data FROM pgw_read")
    assert doctor(config, "--database", DB).returncode == 0


def test_membership_through_an_intermediate_role(config, admin):
    mid = f"pgw_doctor_mid_{uuid.uuid4().hex[:6]}"
    try:
        admin(f"CREATE ROLE {mid} NOLOGIN")
        admin(f"GRANT pg_execute_server_program TO {mid}")
        admin(f"GRANT {mid} TO pgw_write")
        code, data = doctor_json(config, "--database", DB, "--scope", "write")
        assert code == 1, data
        found = problems(data, "write")
        f = next(f for f in found if f["check"] == "member.pg_execute_server_program")
        assert mid in f["fix"], f
    finally:
        admin(f"DROP ROLE IF EXISTS {mid}")
    assert doctor(config, "--database", DB, "--scope", "write").returncode == 0


@pytest.mark.parametrize("attribute", ["CREATEROLE", "CREATEDB", "BYPASSRLS"])
def test_read_role_with_attribute(config, admin, attribute):
    try:
        admin(f"ALTER ROLE pgw_read {attribute}")
        proc = doctor(config, "--database", DB, "--scope", "read")
        assert proc.returncode == 1, report(proc)
        assert attribute in proc.stdout and f"ALTER ROLE pgw_read NO{attribute};" in proc.stdout, proc.stdout
    finally:
        admin(f"ALTER ROLE pgw_read NO{attribute}")
    assert doctor(config, "--database", DB, "--scope", "read").returncode == 0


def test_member_of_a_superuser_role(config, admin):
    su = f"pgw_doctor_su_{uuid.uuid4().hex[:6]}"
    try:
        admin(f"CREATE ROLE {su} SUPERUSER NOLOGIN")
        admin(f"GRANT {su} TO pgw_ddl")
        code, data = doctor_json(config, "--database", DB, "--scope", "ddl")
        assert code == 1, data
        f = next(f for f in problems(data, "ddl") if f["check"] == "member.superuser")
        assert su in f["message"] and f"REVOKE {su} FROM pgw_ddl;" in f["fix"], f
    finally:
        admin(f"DROP ROLE IF EXISTS {su}")


def test_read_role_owns_a_table(config, admin):
    name = f"doctor_owned_{uuid.uuid4().hex[:8]}"
    try:
        admin(f"CREATE TABLE public.{name} (a int)")
        admin(f"ALTER TABLE public.{name} OWNER TO pgw_read")
        proc = doctor(config, "--database", DB, "--scope", "read")
        assert proc.returncode == 1, report(proc)
        assert name in proc.stdout and "owns" in proc.stdout, proc.stdout
        assert f"ALTER TABLE {name} OWNER TO" in proc.stdout or f"ALTER TABLE public.{name} OWNER TO" in proc.stdout
    finally:
        admin(f"DROP TABLE IF EXISTS public.{name}")


def test_read_role_with_table_write_privilege(config, admin):
    name = f"doctor_priv_{uuid.uuid4().hex[:8]}"
    try:
        admin(f"CREATE TABLE public.{name} (a int)")
        admin(f"GRANT INSERT, DELETE ON public.{name} TO pgw_read")
        code, data = doctor_json(config, "--database", DB)
        assert code == 1, data
        f = next(f for f in problems(data, "read") if f["check"] == "table.privileges")
        assert name in f["message"] and "INSERT" in f["message"] and "DELETE" in f["message"], f
        assert f"REVOKE DELETE, INSERT ON TABLE {name} FROM pgw_read;" in f["fix"], f
        # write scope: INSERT/DELETE are within it
        assert not problems(data, "write"), data
    finally:
        admin(f"DROP TABLE IF EXISTS public.{name}")


def test_column_privilege_counts(config, admin):
    name = f"doctor_col_{uuid.uuid4().hex[:8]}"
    try:
        admin(f"CREATE TABLE public.{name} (a int, b int)")
        admin(f"GRANT UPDATE (b) ON public.{name} TO pgw_read")
        code, data = doctor_json(config, "--database", DB, "--scope", "read")
        assert code == 1, data
        assert any(f["check"] == "table.privileges" and name in f["message"] for f in problems(data, "read"))
    finally:
        admin(f"DROP TABLE IF EXISTS public.{name}")


def test_write_role_truncate_and_schema_create(config, admin):
    name = f"doctor_trunc_{uuid.uuid4().hex[:8]}"
    try:
        admin(f"CREATE TABLE public.{name} (a int)")
        admin(f"GRANT TRUNCATE ON public.{name} TO pgw_write")
        admin("GRANT CREATE ON SCHEMA public TO pgw_write")
        code, data = doctor_json(config, "--database", DB, "--scope", "write")
        assert code == 1, data
        checks = {f["check"]: f for f in problems(data, "write")}
        assert "table.privileges" in checks and "TRUNCATE" in checks["table.privileges"]["message"], checks
        assert "schema.create" in checks and "public" in checks["schema.create"]["message"], checks
        assert "REVOKE CREATE ON SCHEMA \"public\" FROM pgw_write;" in checks["schema.create"]["fix"], checks
    finally:
        admin("REVOKE CREATE ON SCHEMA public FROM pgw_write")
        admin(f"DROP TABLE IF EXISTS public.{name}")
    assert doctor(config, "--database", DB, "--scope", "write").returncode == 0


def test_read_role_sequence_usage(config, admin):
    name = f"doctor_seq_{uuid.uuid4().hex[:8]}"
    try:
        admin(f"CREATE SEQUENCE public.{name}")
        admin(f"GRANT USAGE ON SEQUENCE public.{name} TO pgw_read")
        code, data = doctor_json(config, "--database", DB, "--scope", "read")
        assert code == 1, data
        assert any(f["check"] == "sequence.privileges" and name in f["message"] for f in problems(data, "read"))
    finally:
        admin(f"DROP SEQUENCE IF EXISTS public.{name}")


def test_read_role_create_on_database(config, admin):
    try:
        admin(f"GRANT CREATE ON DATABASE {DB} TO pgw_read")
        code, data = doctor_json(config, "--database", DB, "--scope", "read")
        assert code == 1, data
        f = next(f for f in problems(data, "read") if f["check"] == "database.create")
        assert f'REVOKE CREATE ON DATABASE "{DB}" FROM pgw_read;' in f["fix"], f
    finally:
        admin(f"REVOKE CREATE ON DATABASE {DB} FROM pgw_read")


# =========================================================================== cannot check


def test_wrong_password_exit_2(proxy, variant, tmp_path):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    wrong.chmod(0o600)
    cfg = variant(str(proxy.workdir / "secrets" / "read.password"), str(wrong))
    proc = doctor(cfg, "--database", DB)
    assert proc.returncode == 2, report(proc)
    assert "pgw_read" in proc.stderr and "password authentication failed" in proc.stderr, report(proc)
    assert "cannot connect as pgw_read" in proc.stdout, proc.stdout
    # the other scopes are still checked and reported
    assert "logged in as pgw_write" in proc.stdout and "logged in as pgw_ddl" in proc.stdout, proc.stdout
    code, data = doctor_json(cfg, "--database", DB)
    assert code == 2 and data["exit"] == 2
    read = next(s for s in data["scopes"] if s["scope"] == "read")
    assert read["connected"] is False and "password authentication failed" in read["error"], read


def test_no_server_exit_2(pg, variant):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = variant(f"port = {pg.port}", f"port = {port}")
    proc = doctor(cfg, "--database", DB, "--timeout", "3")
    assert proc.returncode == 2, report(proc)
    assert "cannot connect as role pgw_read" in proc.stderr and str(port) in proc.stderr, report(proc)
    assert "Connection refused" in proc.stderr, report(proc)


def test_unknown_database_exit_2(config):
    proc = doctor(config, "--database", "no_such_db_here", "--scope", "read")
    assert proc.returncode == 2, report(proc)
    assert "no_such_db_here" in proc.stderr and "does not exist" in proc.stderr, report(proc)


def test_invalid_config_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten_port = 'x'\n")
    proc = doctor(bad)
    assert proc.returncode == 2, report(proc)
    assert "invalid configuration" in proc.stderr, report(proc)


# =========================================================================== the list, role by role


@pytest.mark.parametrize("scope, role", [("read", "pgw_read"), ("write", "pgw_write"), ("ddl", "pgw_ddl")])
@pytest.mark.parametrize("attribute", ["SUPERUSER", "REPLICATION", "BYPASSRLS", "CREATEROLE"])
def test_attribute_beyond_every_scope(config, admin, scope, role, attribute):
    """SUPERUSER, REPLICATION, BYPASSRLS and CREATEROLE are beyond every scope, ddl included."""
    try:
        admin(f"ALTER ROLE {role} {attribute}")
        code, data = doctor_json(config, "--database", DB, "--scope", scope)
        assert code == 1, data
        found = problems(data, scope)
        f = next((f for f in found if f["check"] == f"attribute.{attribute.lower()}"), None)
        assert f is not None, found
        assert f"ALTER ROLE {role} NO{attribute};" in f["fix"], f
        proc = doctor(config, "--database", DB, "--scope", scope)
        assert proc.returncode == 1 and attribute in proc.stdout, report(proc)
    finally:
        admin(f"ALTER ROLE {role} NO{attribute}")
    assert doctor(config, "--database", DB, "--scope", scope).returncode == 0


@pytest.mark.parametrize("predefined", ["pg_write_server_files", "pg_execute_server_program",
                                        "pg_read_server_files", "pg_create_subscription"])
@pytest.mark.parametrize("scope, role", [("read", "pgw_read"), ("ddl", "pgw_ddl")])
def test_server_file_and_program_roles_beyond_every_scope(config, admin, predefined, scope, role):
    if predefined == "pg_create_subscription" and admin("show server_version_num")[0][0] < "160000":
        pytest.skip("pg_create_subscription exists from PostgreSQL 16")
    try:
        admin(f"GRANT {predefined} TO {role}")
        code, data = doctor_json(config, "--database", DB, "--scope", scope)
        assert code == 1, data
        f = next((f for f in problems(data, scope) if f["check"] == f"member.{predefined}"), None)
        assert f is not None, problems(data, scope)
        assert f"REVOKE {predefined} FROM {role};" in f["fix"], f
    finally:
        admin(f"REVOKE {predefined} FROM {role}")
    assert doctor(config, "--database", DB, "--scope", scope).returncode == 0


def test_read_role_write_privilege_on_a_view(config, admin):
    """Write privileges on a view count as write privileges (an updatable view writes its table)."""
    name = f"doctor_view_{uuid.uuid4().hex[:8]}"
    try:
        admin(f"CREATE TABLE public.{name}_t (a int)")
        admin(f"CREATE VIEW public.{name} AS SELECT a FROM public.{name}_t")
        admin(f"GRANT UPDATE ON public.{name} TO pgw_read")
        code, data = doctor_json(config, "--database", DB, "--scope", "read")
        assert code == 1, data
        assert any(name in f["message"] for f in problems(data, "read")), problems(data, "read")
    finally:
        admin(f"DROP VIEW IF EXISTS public.{name}")
        admin(f"DROP TABLE IF EXISTS public.{name}_t")

"""The throwaway PostgreSQL (proxy.embedded) and the scope roles the proxy logs in as."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pgerr
from psycopg.conninfo import conninfo_to_dict

from proxy.embedded import DEFAULT_HBA, EmbeddedPostgres, find_pg_bindir

pytestmark = pytest.mark.integration

DB = "appdb"


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(dsn, **kwargs)


def needs_embedded(pg) -> None:
    if not isinstance(pg, EmbeddedPostgres):
        pytest.skip("needs the local EmbeddedPostgres (set_hba / log / process checks)")


def server_user() -> str:
    """The OS user the server processes run as."""
    if os.geteuid() == 0:
        return os.environ.get("PGWARDEN_PG_USER", "postgres")
    return pwd.getpwuid(os.geteuid()).pw_name


def leftover_processes(workdir: Path) -> str:
    proc = subprocess.run(
        ["pgrep", "-a", "-u", server_user(), "-f", str(workdir)], capture_output=True, text=True
    )
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def table(pg) -> str:
    """A table in appdb.public owned by the superuser, with one row."""
    name = f"embedded_{secrets.token_hex(4)}"
    pg.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, note text); "
               f"INSERT INTO public.{name} VALUES (1, 'one')", dbname=DB)
    yield name
    pg.execute(f"DROP TABLE IF EXISTS public.{name}", dbname=DB)


# --------------------------------------------------------------------------- server


def test_server_starts_and_superuser_dsn_works(pg):
    with connect(pg.dsn()) as conn:
        user, is_super, version = conn.execute(
            "SELECT current_user, usesuper, current_setting('server_version_num')::int "
            "FROM pg_user WHERE usename = current_user"
        ).fetchone()
    assert user == pg.superuser == "postgres"
    assert is_super is True
    assert version >= 140000  # pg_read_all_data / pg_write_all_data
    assert pg.host == "127.0.0.1" and pg.port > 0


def test_embedded_layout_and_settings(pg):
    needs_embedded(pg)
    assert pg.socket_dir.is_dir()
    assert pg.bindir == find_pg_bindir()
    rows = dict(pg.query(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('listen_addresses', 'port', 'fsync', 'max_connections', 'unix_socket_directories', "
        "'password_encryption')"
    ))
    assert rows == {
        "listen_addresses": "127.0.0.1",
        "port": str(pg.port),
        "fsync": "off",
        "max_connections": "200",
        "unix_socket_directories": str(pg.socket_dir),
        "password_encryption": "scram-sha-256",
    }
    assert "database system is ready to accept connections" in pg.log_text()
    # the superuser over the unix socket (trust) works too
    with psycopg.connect(host=str(pg.socket_dir), port=pg.port, user="postgres",
                         dbname="postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_dsn_quotes_its_parts(pg):
    dsn = pg.dsn("my db", user="a b@c", password="p@ss:/w?rd#%")
    parsed = conninfo_to_dict(dsn)
    assert parsed["user"] == "a b@c"
    assert parsed["password"] == "p@ss:/w?rd#%"
    assert parsed["dbname"] == "my db"
    assert parsed["host"] == pg.host and parsed["port"] == str(pg.port)
    assert "password" not in conninfo_to_dict(pg.dsn(user="x"))
    assert conninfo_to_dict(pg.dsn())["password"] == pg.superuser_password


def test_execute_runs_several_statements(pg):
    name = f"multi_{secrets.token_hex(4)}"
    pg.execute(f"CREATE TABLE {name} (x int); INSERT INTO {name} VALUES (1), (2)", dbname=DB)
    try:
        with connect(pg.dsn(DB)) as conn:
            assert conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (2,)
    finally:
        pg.execute(f"DROP TABLE {name}", dbname=DB)


def test_find_pg_bindir_errors_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("PG_BINDIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install -y postgresql-15"):
        find_pg_bindir()


# --------------------------------------------------------------------------- scope roles


@pytest.mark.parametrize("scope", ["read", "write", "ddl"])
def test_scope_role_logs_in_over_tcp_with_scram_and_is_not_superuser(pg, scope_roles, scope):
    role, password = scope_roles[scope]
    assert role == f"pgw_{scope}"
    with connect(pg.dsn(DB, role, password)) as conn:
        assert conn.info.host == "127.0.0.1"
        row = conn.execute(
            "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, "
            "rolreplication, rolcanlogin FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (role, False, False, False, False, False, True)
    # the stored verifier is SCRAM, and the session really came in over TCP (host rule)
    [(verifier,)] = pg.query(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
    assert verifier.startswith("SCRAM-SHA-256$")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg.dsn(DB, role, password + "x"))


def test_read_role_can_select_but_not_insert(pg, scope_roles, table):
    with connect(pg.dsn(DB, *scope_roles["read"])) as conn:
        assert conn.execute(f"SELECT id, note FROM {table} WHERE id = 1").fetchone() == (1, "one")
        with pytest.raises(pgerr.InsufficientPrivilege, match="permission denied"):
            conn.execute(f"INSERT INTO {table} VALUES (100, 'read')")
        with pytest.raises(pgerr.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.read_made (x int)")


def test_write_role_can_insert_but_not_create_table(pg, scope_roles, table):
    with connect(pg.dsn(DB, *scope_roles["write"])) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (200, 'write')")
        conn.execute(f"UPDATE {table} SET note = 'written' WHERE id = 200")
        assert conn.execute(f"SELECT note FROM {table} WHERE id = 200").fetchone() == ("written",)
        conn.execute(f"DELETE FROM {table} WHERE id = 200")
        with pytest.raises(pgerr.InsufficientPrivilege, match="permission denied for schema public"):
            conn.execute("CREATE TABLE public.write_made (x int)")


def test_ddl_role_can_create_table_in_public(pg, scope_roles, table):
    name = f"ddl_made_{secrets.token_hex(4)}"
    with connect(pg.dsn(DB, *scope_roles["ddl"])) as conn:
        conn.execute(f"CREATE TABLE public.{name} (x int)")
        conn.execute(f"INSERT INTO public.{name} VALUES (1)")
        conn.execute(f"INSERT INTO {table} VALUES (300, 'ddl')")
        conn.execute(f"DELETE FROM {table} WHERE id = 300")
        conn.execute("CREATE TEMP TABLE ddl_tmp (x int)")
        conn.execute(f"DROP TABLE public.{name}")
        # still no superuser powers
        with pytest.raises(pgerr.InsufficientPrivilege):
            conn.execute("CREATE ROLE sneaky")


# --------------------------------------------------------------------------- pg_hba


@pytest.fixture
def restore_hba(pg):
    needs_embedded(pg)
    yield
    pg.set_hba(list(DEFAULT_HBA))


def test_set_hba_md5_for_one_role(pg, scope_roles, restore_hba):
    role, password = scope_roles["read"]
    pg.set_hba(["local all all trust",
                f"host all {role} 127.0.0.1/32 md5",
                "host all all 127.0.0.1/32 scram-sha-256"])
    # md5 with a SCRAM verifier: the server negotiates SCRAM, and the login works
    with connect(pg.dsn(DB, role, password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    with connect(pg.dsn(DB, *scope_roles["write"])) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_set_hba_real_md5_password_and_trust(pg, restore_hba):
    role, password = f"md5_{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    pg.execute(f"SET password_encryption = 'md5'; CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        [(verifier,)] = pg.query(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
        assert verifier.startswith("md5")
        # the default rules ask for SCRAM, which an md5 verifier cannot answer
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(pg.dsn(user=role, password=password))
        for method in ("md5", "password"):
            pg.set_hba(["local all all trust", f"host all {role} 127.0.0.1/32 {method}",
                        "host all all 127.0.0.1/32 scram-sha-256"])
            with connect(pg.dsn(user=role, password=password)) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                connect(pg.dsn(user=role, password="wrong"))
        pg.set_hba(["local all all trust", f"host all {role} 127.0.0.1/32 trust",
                    "host all all 127.0.0.1/32 scram-sha-256"])
        with connect(pg.dsn(user=role, password=None)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        pg.set_hba(["local all all trust", f"host all {role} 127.0.0.1/32 reject",
                    "host all all 127.0.0.1/32 scram-sha-256"])
        with pytest.raises(psycopg.OperationalError, match="rejects connection"):
            connect(pg.dsn(user=role, password=password))
    finally:
        pg.set_hba(list(DEFAULT_HBA))
        pg.execute(f"DROP ROLE IF EXISTS {role}")


def test_set_hba_rejects_invalid_file_and_keeps_the_old_one(pg, scope_roles, restore_hba):
    before = (pg.datadir / "pg_hba.conf").read_text()
    with pytest.raises(ValueError, match="invalid pg_hba.conf"):
        pg.set_hba(["local all all trust", "host all all 127.0.0.1/32 no-such-method"])
    assert (pg.datadir / "pg_hba.conf").read_text() == before
    with connect(pg.dsn(DB, *scope_roles["read"])) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --------------------------------------------------------------------------- lifecycle


@pytest.fixture
def private_pg(pg):
    """A second, short-lived server (not the session one)."""
    needs_embedded(pg)
    server = EmbeddedPostgres(max_connections=20)
    yield server
    server.stop()


def test_stop_kills_the_server_and_removes_the_workdir(private_pg):
    with private_pg as server:
        workdir, port = server.workdir, server.port
        conn = connect(server.dsn())
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert leftover_processes(workdir)  # the pattern does find a running server
    try:
        assert leftover_processes(workdir) == ""
        assert not workdir.exists()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            connect(server.dsn(), connect_timeout=3)
        with socket.socket() as s:  # the port is free again
            s.bind(("127.0.0.1", port))
    finally:
        conn.close()
    server.stop()  # idempotent


def test_stop_falls_back_to_sigkill(private_pg, monkeypatch):
    server = private_pg.start()
    workdir = server.workdir
    with connect(server.dsn()) as conn:
        conn.execute("SELECT 1")
        assert leftover_processes(workdir)

        def broken_run(*args, **kwargs):
            raise OSError("pg_ctl is gone")

        monkeypatch.setattr(server, "_run", broken_run)
        server.stop()
    assert leftover_processes(workdir) == ""
    assert not workdir.exists()


@pytest.fixture
def shared_tmp():
    """A temp dir the server user can reach (pytest's tmp_path is 0700 root's when root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pgw-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_explicit_workdir_is_kept_and_extra_conf_applies(pg, shared_tmp):
    needs_embedded(pg)
    extra = {"work_mem": "7MB", "application_name": "it's quoted"}
    with EmbeddedPostgres(shared_tmp / "pg", extra_conf=extra) as srv:
        assert srv.query("SHOW work_mem") == [("7MB",)]
        assert srv.query("SHOW application_name") == [("it's quoted",)]
        workdir = srv.workdir
    assert leftover_processes(workdir) == ""
    assert (workdir / "data" / "PG_VERSION").exists()  # a caller's directory is kept


def test_unreachable_workdir_fails_clearly(pg, tmp_path):
    needs_embedded(pg)
    if os.geteuid() != 0:
        pytest.skip("only root hands the workdir to another user")
    os.chmod(tmp_path, 0o700)
    with pytest.raises(RuntimeError, match="cannot write to"):
        EmbeddedPostgres(tmp_path / "pg").start()


def test_self_signed_cert_verifies_with_libpq(pg, shared_tmp):
    """make_self_signed_cert's output serves TLS that libpq accepts with verify-full."""
    needs_embedded(pg)
    from proxy.tlsutil import make_self_signed_cert

    certdir = shared_tmp / "tls"
    cert, key = make_self_signed_cert(certdir)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN CERTIFICATE" in cert.read_bytes()

    # Python's own client accepts it for both names (and strict X.509 checks).
    ctx = ssl.create_default_context(cafile=str(cert))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    for hostname in ("localhost", "127.0.0.1"):
        a, b = socket.socketpair()
        errors: list[BaseException] = []

        def serve(sock=b):
            try:
                with server_ctx.wrap_socket(sock, server_side=True) as tls:
                    tls.recv(1)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        t = threading.Thread(target=serve)
        t.start()
        with ctx.wrap_socket(a, server_hostname=hostname) as tls:
            tls.sendall(b"x")
        t.join(10)
        assert not errors

    # And PostgreSQL serves it; libpq verifies it (verify-full) by IP and by name.
    # The key must belong to the server user (or root with mode 0640).
    if os.geteuid() == 0:
        user = pwd.getpwnam(os.environ.get("PGWARDEN_PG_USER", "postgres"))
        os.chmod(certdir, 0o755)
        for path in (cert, key):
            os.chown(path, user.pw_uid, user.pw_gid)
    with EmbeddedPostgres(max_connections=10, extra_conf={
        "ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key),
    }) as srv:
        for host in ("127.0.0.1", "localhost"):
            with psycopg.connect(srv.dsn(), host=host, sslmode="verify-full",
                                 sslrootcert=str(cert), connect_timeout=10) as conn:
                assert conn.pgconn.ssl_in_use
                assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                                    ).fetchone() == (True,)

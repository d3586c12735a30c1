"""A throwaway local PostgreSQL server, for ``pgwarden demo`` and the test suite.

``EmbeddedPostgres`` runs ``initdb`` into a temporary directory, starts the
server on 127.0.0.1 (a free port unless one is given) and on a unix socket in
that directory, and removes everything again on ``stop()``.

PostgreSQL refuses to run as root.  When this process is root, every server
program (initdb, pg_ctl, postgres) runs as the ``postgres`` system user (or
the user named by ``PGWARDEN_PG_USER``) and the work directory is handed to
that user.  Clients (psycopg here, the proxy, the tests) keep running as root.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

__all__ = [
    "DEFAULT_HBA",
    "SCOPE_ROLES",
    "EmbeddedPostgres",
    "create_scope_roles",
    "find_pg_bindir",
]

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. "
    "Install them (Debian/Ubuntu, as root: `apt-get update && apt-get install -y postgresql-15`) "
    "or point PG_BINDIR at the directory that holds them."
)

#: pg_hba.conf written by ``start()``; ``set_hba(DEFAULT_HBA)`` restores it.
DEFAULT_HBA: tuple[str, ...] = (
    "local all all trust",
    "host all all 127.0.0.1/32 scram-sha-256",
    "host all all ::1/128 scram-sha-256",
)

#: scope name -> upstream role created by ``create_scope_roles``.
SCOPE_ROLES: dict[str, str] = {"read": "pgw_read", "write": "pgw_write", "ddl": "pgw_ddl"}

_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_RELOAD_LINE = "received SIGHUP, reloading configuration files"


# --------------------------------------------------------------------------- binaries


def _has_server_programs(directory: Path) -> bool:
    return all(os.access(directory / prog, os.X_OK) for prog in _SERVER_PROGRAMS)


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: "15", "9.6", "17"
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


def find_pg_bindir() -> Path:
    """Locate the directory holding initdb, pg_ctl and postgres.

    Order: ``$PG_BINDIR``; ``pg_config --bindir``; the highest version under
    ``/usr/lib/postgresql/*/bin``; the (symlink-resolved) directory of ``pg_ctl``
    on ``PATH``.  Raises ``RuntimeError`` with install instructions otherwise.
    """
    env = os.environ.get("PG_BINDIR")
    if env:
        path = Path(env).expanduser()
        if _has_server_programs(path):
            return path
        raise RuntimeError(
            f"PG_BINDIR={env!r} does not contain {', '.join(_SERVER_PROGRAMS)}. " + INSTALL_HINT
        )

    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        # Debian's pg_config may come from libpq-dev without a server: check.
        if out and _has_server_programs(Path(out)):
            return Path(out)

    candidates = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_server_programs(p)),
        key=_version_key,
        reverse=True,
    )
    if candidates:
        return candidates[0]

    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        for directory in (Path(pg_ctl).parent, Path(pg_ctl).resolve().parent):
            if _has_server_programs(directory):
                return directory

    raise RuntimeError(INSTALL_HINT)


# --------------------------------------------------------------------------- helpers


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _conf_quote(value: Any) -> str:
    """Quote a value for postgresql.conf (every GUC accepts a quoted string)."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class _SupportsExecute(Protocol):
    def execute(self, sql: str, dbname: str = "postgres") -> None: ...


# --------------------------------------------------------------------------- server


class EmbeddedPostgres:
    """A private PostgreSQL cluster in a temporary directory.

    >>> with EmbeddedPostgres() as pg:
    ...     pg.execute("CREATE TABLE t (x int)")
    ...     dsn = pg.dsn()
    """

    host: str = "127.0.0.1"
    superuser: str = "postgres"

    def __init__(
        self,
        workdir: Path | None = None,
        port: int | None = None,
        *,
        max_connections: int = 200,
        extra_conf: Mapping[str, str] | None = None,
    ) -> None:
        self.bindir: Path = find_pg_bindir()
        self._owns_workdir = workdir is None
        self._workdir_arg = Path(workdir).resolve() if workdir is not None else None
        self._port_arg = port
        self.port: int = port or 0
        self.max_connections = max_connections
        self.extra_conf: dict[str, str] = dict(extra_conf or {})
        self.superuser_password: str = secrets.token_urlsafe(24)
        self.workdir: Path = self._workdir_arg or Path()
        self.datadir: Path = Path()
        self.socket_dir: Path = Path()
        self.logfile: Path = Path()
        self._extra_dirs: list[Path] = []
        self._started = False
        self._stopped = False
        self._atexit_registered = False
        # Run server programs as another user when we are root.
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            name = os.environ.get("PGWARDEN_PG_USER", "postgres")
            try:
                self._run_as = pwd.getpwnam(name)
            except KeyError:
                raise RuntimeError(
                    "running as root, but PostgreSQL refuses to run as root and there is no "
                    f"{name!r} system user to run it as (install postgresql-15, which creates "
                    "it, or `useradd --system postgres`, or set PGWARDEN_PG_USER)"
                ) from None

    # ---------------------------------------------------------------- processes

    def _env(self) -> dict[str, str]:
        # Keep PG* variables of the caller (PGDATA, PGPORT, PGOPTIONS...) away
        # from initdb / pg_ctl: every setting is given explicitly.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env.pop("LANG", None)
        if self._run_as is not None:
            env["HOME"] = str(self.workdir)
            env["USER"] = env["LOGNAME"] = self._run_as.pw_name
        return env

    def _run(
        self, args: Sequence[str | os.PathLike[str]], *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(
                user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[], umask=0o077
            )
        proc = subprocess.run(
            [str(a) for a in args],
            cwd=str(self.workdir),
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{Path(str(args[0])).name} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}".rstrip()
            )
        return proc

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def _make_dir(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(mode=mode, parents=False, exist_ok=True)
        os.chmod(path, mode)
        self._chown(path)

    def _check_server_user_access(self) -> None:
        """Fail early, with a clear message, if the server user cannot reach workdir."""
        if self._run_as is None:
            return
        proc = subprocess.run(
            ["test", "-w", str(self.workdir), "-a", "-x", str(self.workdir)],
            user=self._run_as.pw_uid,
            group=self._run_as.pw_gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=10,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"the PostgreSQL server runs as {self._run_as.pw_name!r} (we are root), but that "
                f"user cannot write to {self.workdir} (check the permissions of it and of every "
                "parent directory, or pass a workdir under /tmp)"
            )

    # ---------------------------------------------------------------- lifecycle

    def _prepare_workdir(self) -> None:
        if self._workdir_arg is None:
            base = Path(tempfile.gettempdir())
            self.workdir = Path(tempfile.mkdtemp(prefix="pgwarden-pg-", dir=base))
            self._make_dir(self.workdir)
            if self._run_as is not None:
                try:
                    self._check_server_user_access()
                except RuntimeError:
                    # $TMPDIR not reachable by the server user: fall back to /tmp.
                    shutil.rmtree(self.workdir, ignore_errors=True)
                    self.workdir = Path(tempfile.mkdtemp(prefix="pgwarden-pg-", dir="/tmp"))
                    self._make_dir(self.workdir)
        else:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
            if any(self.workdir.iterdir()):
                raise RuntimeError(f"workdir {self.workdir} is not empty")
            self._chown(self.workdir)
        self._check_server_user_access()

        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "postgres.log"
        self.socket_dir = self.workdir / "sock"
        # sun_path holds 107 bytes: fall back to a short directory for deep workdirs.
        if len(os.fsencode(self.socket_dir / ".s.PGSQL.65535")) > 100:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="pgw-sock-", dir="/tmp"))
            self._extra_dirs.append(self.socket_dir)
        self._make_dir(self.socket_dir)

    def _initdb(self) -> None:
        pwfile = self.workdir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.superuser_password + "\n")
        self._chown(pwfile)
        try:
            self._run(
                [
                    self.bindir / "initdb",
                    "-D", self.datadir,
                    "-U", self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E", "UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)

    def _write_conf(self) -> None:
        settings: dict[str, Any] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": self.max_connections,
            "password_encryption": "scram-sha-256",
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": False,
            "shared_buffers": "32MB",
            "logging_collector": False,
            "log_destination": "stderr",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_timezone": "UTC",
            "timezone": "UTC",
        }
        settings.update(self.extra_conf)
        lines = ["", "# --- pgwarden embedded settings (later lines win) ---"]
        lines += [f"{key} = {_conf_quote(value)}" for key, value in settings.items()]
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        self._write_hba(DEFAULT_HBA)

    def _write_hba(self, lines: Sequence[str]) -> None:
        path = self.datadir / "pg_hba.conf"
        tmp = path.with_name("pg_hba.conf.new")
        tmp.write_text("".join(line.rstrip("\n") + "\n" for line in lines), encoding="utf-8")
        os.chmod(tmp, 0o600)
        self._chown(tmp)
        os.replace(tmp, path)

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        return self._run(
            [self.bindir / "pg_ctl", "start", "-w", "-t", "60", "-D", self.datadir, "-l", self.logfile],
            timeout=90,
            check=False,
        )

    def start(self) -> EmbeddedPostgres:
        if self._started:
            return self
        if self._stopped:
            raise RuntimeError("EmbeddedPostgres cannot be restarted after stop()")
        self._started = True
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._prepare_workdir()
            self._initdb()
            if self._port_arg is None:
                self.port = _free_port(self.host)
            self._write_conf()
            for attempt in range(5):
                proc = self._pg_ctl_start()
                if proc.returncode == 0:
                    break
                log = self.log_text()
                port_taken = "could not bind" in log or "Address already in use" in log
                if self._port_arg is None and port_taken and attempt < 4:
                    # Someone took the port between our probe and the bind: retry.
                    self.port = _free_port(self.host)
                    with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as f:
                        f.write(f"port = {_conf_quote(self.port)}\n")
                    continue
                raise RuntimeError(
                    f"pg_ctl start failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}\n--- server log ---\n{log[-4000:]}".rstrip()
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first.strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _pid_alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # The postmaster is reparented to PID 1 (pg_ctl daemonizes it); a PID 1 that is
        # slow to reap leaves a zombie behind, which is dead for our purposes.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and remove what we created.

        Idempotent; safe to call from atexit and from a failed ``start()``.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._atexit_registered:
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            self._atexit_registered = False
        try:
            if self._started and self.datadir != Path() and (self.datadir / "postmaster.pid").exists():
                pid = self._postmaster_pid()
                pg_ctl = self.bindir / "pg_ctl"
                # A directory we delete needs no clean shutdown checkpoint.
                modes = [("immediate", 10)] if self._owns_workdir else [("fast", 15), ("immediate", 10)]
                stopped = False
                for mode, wait in modes:
                    try:
                        proc = self._run(
                            [pg_ctl, "stop", "-D", self.datadir, "-m", mode, "-w", "-t", str(wait)],
                            timeout=wait + 10,
                            check=False,
                        )
                    except (OSError, subprocess.SubprocessError):
                        continue
                    if proc.returncode == 0:
                        stopped = True
                        break
                if pid is not None:
                    self._kill_leftovers(pid, grace=5.0 if stopped else 0.0)
        finally:
            if self._owns_workdir and self.workdir != Path():
                shutil.rmtree(self.workdir, ignore_errors=True)
            for d in self._extra_dirs:
                shutil.rmtree(d, ignore_errors=True)

    def _kill_leftovers(self, pid: int, grace: float) -> None:
        """Make sure the postmaster and its children are gone (SIGKILL after ``grace`` s)."""
        deadline = time.monotonic() + grace
        while self._pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._pid_alive(pid) and self._is_our_postmaster(pid):
            victims = [pid, *self._children(pid)]
            for victim in victims:
                with contextlib.suppress(OSError):
                    os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while any(self._pid_alive(v) for v in victims) and time.monotonic() < deadline:
                time.sleep(0.05)

    @staticmethod
    def _children(pid: int) -> list[int]:
        children = []
        for entry in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = entry.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if len(fields) > 1 and fields[1] == str(pid):
                children.append(int(entry.parent.name))
        return children

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True  # no /proc: trust postmaster.pid
        return os.fsencode(self.datadir) in cmdline or b"postgres" in cmdline

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._started and not self._stopped else "stopped"
        return f"<EmbeddedPostgres {self.host}:{self.port} {self.workdir} {state}>"

    # ---------------------------------------------------------------- clients

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A libpq URL for TCP on 127.0.0.1; defaults to the superuser and its password."""
        if user is None:
            user = self.superuser
            if password is None:
                password = self.superuser_password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg connection as superuser over the unix socket (works whatever set_hba did
        to the TCP lines, as long as a ``local`` line admits the password or trust)."""
        import psycopg

        params: dict[str, Any] = {
            "host": str(self.socket_dir),
            "port": self.port,
            "dbname": dbname,
            "user": self.superuser,
            "password": self.superuser_password,
            "connect_timeout": 10,
            "autocommit": True,
        }
        params.update(kwargs)
        return psycopg.connect(**params)

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run SQL (one or several statements, no parameters) as superuser, autocommit."""
        with self.connect(dbname) as conn:
            conn.execute(sql.encode())  # bytes, no params: simple protocol, ';' lists allowed

    def query(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as superuser and return its rows."""
        with self.connect(dbname) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description is not None else []

    def set_hba(self, lines: Sequence[str]) -> None:
        """Replace pg_hba.conf and reload; returns once new connections use it.

        A file the server would reject is not installed (ValueError).
        ``set_hba(DEFAULT_HBA)`` restores the initial rules.
        """
        path = self.datadir / "pg_hba.conf"
        old = path.read_text(encoding="utf-8")
        self._write_hba(lines)
        try:
            errors = self.query(
                "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
            )
        except BaseException:
            self._write_hba(old.splitlines())
            raise
        if errors:
            self._write_hba(old.splitlines())
            detail = "; ".join(f"line {n}: {e}" for n, e in errors)
            raise ValueError(f"invalid pg_hba.conf: {detail}")
        self._reload()

    def reload(self) -> None:
        """Reload postgresql.conf / pg_hba.conf and wait until the postmaster has."""
        self._reload()

    def _reload(self) -> None:
        before = self.log_text().count(_RELOAD_LINE)
        self.execute("SELECT pg_reload_conf()")
        # The postmaster logs the line from its SIGHUP handler and finishes
        # loading pg_hba.conf before it accepts the next connection.
        deadline = time.monotonic() + 10
        while self.log_text().count(_RELOAD_LINE) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not acknowledge the reload within 10 s")
            time.sleep(0.01)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(encoding="utf-8", errors="replace")
        except (OSError, ValueError):
            return ""


# --------------------------------------------------------------------------- roles


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_scope_roles(pg: _SupportsExecute, database: str = "appdb") -> dict[str, tuple[str, str]]:
    """Create ``database`` and the least-privilege upstream roles of the three scopes.

    - ``pgw_read``: member of pg_read_all_data
    - ``pgw_write``: pg_read_all_data + pg_write_all_data
    - ``pgw_ddl``: both, plus USAGE/CREATE on schema public and CONNECT/TEMP on ``database``

    All LOGIN, NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION, with a new random
    password (SCRAM) on every call.  Idempotent.  Only needs ``pg.execute(sql, dbname)``, so it
    works for any object offering that (EmbeddedPostgres, a container adapter).
    Returns ``{"read": (role, password), "write": ..., "ddl": ...}``.
    """
    import psycopg

    try:
        pg.execute(f"CREATE DATABASE {_ident(database)}")
    except psycopg.errors.DuplicateDatabase:
        pass

    result: dict[str, tuple[str, str]] = {}
    for scope, role in SCOPE_ROLES.items():
        password = secrets.token_urlsafe(24)
        try:
            pg.execute(f"CREATE ROLE {_ident(role)}")
        except psycopg.errors.DuplicateObject:
            pass
        pg.execute(
            "SET password_encryption = 'scram-sha-256';\n"
            f"ALTER ROLE {_ident(role)} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
            f"NOBYPASSRLS NOREPLICATION PASSWORD {_literal(password)}"
        )
        result[scope] = (role, password)

    read, write, ddl = (_ident(SCOPE_ROLES[s]) for s in ("read", "write", "ddl"))
    db = _ident(database)
    pg.execute(
        f"GRANT pg_read_all_data TO {read}, {write}, {ddl};\n"
        f"GRANT pg_write_all_data TO {write}, {ddl};\n"
        f"GRANT CONNECT ON DATABASE {db} TO {read}, {write}, {ddl};\n"
        f"GRANT TEMPORARY ON DATABASE {db} TO {ddl};"
    )
    pg.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {ddl}", dbname=database)
    return result

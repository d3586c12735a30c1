"""Shared fixtures: one real PostgreSQL for the whole test run.

``pg``          the server: an ``EmbeddedPostgres`` from the local binaries, or -- when a Docker
                engine answers and ``PGWARDEN_TEST_DOCKER`` is not ``0`` -- a testcontainers
                ``PostgresContainer`` behind ``ContainerPostgres`` (same attributes).
``scope_roles`` ``{"read": (role, password), "write": ..., "ddl": ...}`` created in database
                ``appdb`` by ``proxy.embedded.create_scope_roles``.

Proxy-specific fixtures live in tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

SCOPE_DATABASE = "appdb"


def docker_engine_answers(timeout: float = 5.0) -> bool:
    """True when a `docker info` gets an answer from an engine within ``timeout`` seconds."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def use_docker() -> bool:
    """testcontainers when a Docker engine answers (issue 2); ``PGWARDEN_TEST_DOCKER=0`` forces the
    local binaries (tests that need ``set_hba`` or the unix socket skip under Docker)."""
    if os.environ.get("PGWARDEN_TEST_DOCKER", "auto").strip().lower() in ("0", "no", "false", "off"):
        return False
    return docker_engine_answers()


class ContainerPostgres:
    """testcontainers' PostgresContainer with EmbeddedPostgres' surface.

    Offers host, port, superuser, superuser_password, dsn(), connect(), execute(), query(),
    start(), stop().  No set_hba()/log_text(): tests needing them skip under Docker.
    """

    superuser = "postgres"

    def __init__(self, image: str | None = None) -> None:
        from testcontainers.postgres import PostgresContainer

        self.image = image or os.environ.get("PGWARDEN_TEST_DOCKER_IMAGE", "postgres:15")
        self.superuser_password = secrets.token_urlsafe(24)
        self._container = PostgresContainer(
            self.image, username=self.superuser, password=self.superuser_password, dbname="postgres"
        )
        self.host = "127.0.0.1"
        self.port = 0

    def start(self) -> ContainerPostgres:
        self._container.start()
        self.host = self._container.get_container_host_ip()
        if self.host == "localhost":
            self.host = "127.0.0.1"
        self.port = int(self._container.get_exposed_port(5432))
        return self

    def stop(self) -> None:
        self._container.stop()

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        if user is None:
            user = self.superuser
            if password is None:
                password = self.superuser_password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        import psycopg

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(dbname), **kwargs)

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with self.connect(dbname) as conn:
            conn.execute(sql.encode())

    def query(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description is not None else []

    def __repr__(self) -> str:
        return f"<ContainerPostgres {self.image} {self.host}:{self.port}>"


@pytest.fixture(scope="session")
def _pg_server() -> Iterator[tuple[Any, dict[str, tuple[str, str]]]]:
    # Imported here so unit tests still collect when the server side is broken.
    from proxy.embedded import EmbeddedPostgres, create_scope_roles

    server: Any = ContainerPostgres() if use_docker() else EmbeddedPostgres()
    server.start()
    try:
        roles = create_scope_roles(server, SCOPE_DATABASE)
        yield server, roles
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg(_pg_server: tuple[Any, dict[str, tuple[str, str]]]) -> Any:
    """The session's PostgreSQL (scope roles and database ``appdb`` already created)."""
    return _pg_server[0]


@pytest.fixture(scope="session")
def scope_roles(_pg_server: tuple[Any, dict[str, tuple[str, str]]]) -> dict[str, tuple[str, str]]:
    """``{"read": ("pgw_read", pw), "write": ("pgw_write", pw), "ddl": ("pgw_ddl", pw)}``."""
    return _pg_server[1]

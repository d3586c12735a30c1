"""Store fixtures: the same tests run against SQLite and PostgreSQL.

``store_url``  a URL for an empty store: a fresh SQLite file, or the run's
               PostgreSQL database ``pgw_store_<random>`` (created once per run
               on the ``pg`` fixture's server, emptied before each test)
``store``      ``open_store(store_url)``, closed after the test
"""

from __future__ import annotations

import secrets

import pytest

from proxy.store import open_store

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


@pytest.fixture(scope="session")
def pg_store_db(request):
    pg = request.getfixturevalue("pg")
    name = f"pgw_store_{secrets.token_hex(4)}"
    pg.execute(f"CREATE DATABASE {name}")
    yield pg, name
    pg.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _empty_pg(pg, name: str) -> None:
    import psycopg

    with psycopg.connect(pg.dsn(name), autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('grants') IS NOT NULL").fetchone()[0]
        if exists:
            conn.execute("TRUNCATE grant_sessions, grant_events, grants RESTART IDENTITY")


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'grants.db'}"
    pg, name = request.getfixturevalue("pg_store_db")
    _empty_pg(pg, name)
    return pg.dsn(name)


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()

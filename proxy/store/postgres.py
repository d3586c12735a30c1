"""The PostgreSQL grant store: one store shared by proxies on several hosts.

Job: the same ``GrantStore`` as SQLite, in a PostgreSQL database, with
revocations pushed to every proxy by LISTEN/NOTIFY.

Rules:

* Same tables and migrations as SQLite (``base.migrations``), versioned in
  ``schema_version``.  Migrations run under a transaction-level advisory
  lock, so proxies starting together migrate once.
* Every change sends ``NOTIFY pgwarden_grants, '<grant id>'`` inside its
  transaction: listeners hear of it exactly when it commits.
* Writers take the same advisory lock: grant changes are rare, and
  serialising them makes ``grant_events.seq`` commit in order, so a poller
  of ``changes_since`` can never skip a change that commits late with a
  smaller sequence number.
* One connection per thread (psycopg 3, autocommit with explicit
  transactions); reopened after fork or when the server dropped it.
* Credentials come from the URL or libpq's usual sources (PGPASSWORD,
  ~/.pgpass, PGPASSFILE); the URL is never logged with a password.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from .base import SQLGrantStore, StoreError, migrations

__all__ = ["PostgresGrantStore", "CHANNEL"]

CHANNEL = "pgwarden_grants"
_LOCK_KEY = 0x70677764        # "pgwd": pg_advisory_xact_lock key for grant writers


def _redact(url: str) -> str:
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://..."
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


class PostgresGrantStore(SQLGrantStore):
    paramstyle = "format"

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[psycopg.Connection] = []
        self._closed = False
        self._migrate()

    # -- connections

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)))
        except psycopg.Error as e:
            raise StoreError(f"grant store ({_redact(self.url)}): cannot connect: {e}") from None

    def _conn(self) -> psycopg.Connection:
        if self._closed:
            raise StoreError("grant store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid() and not conn.closed \
                and conn.info.transaction_status != psycopg.pq.TransactionStatus.UNKNOWN:
            return conn
        conn = self._connect()
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Any]:
        conn = self._conn()
        try:
            with conn.transaction(), conn.cursor() as cur:
                if write:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                else:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield cur
        except psycopg.OperationalError as e:
            self._local.conn = None           # reconnect next time
            raise StoreError(f"grant store ({_redact(self.url)}): {e}") from None

    def _write(self):
        return self._tx(write=True)

    def _read(self):
        return self._tx(write=False)

    def _changed(self, cur: Any, grant_id: str) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, grant_id))

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
            self._closed = True
        for conn in conns:
            conn.close()

    # -- schema

    def _migrate(self) -> None:
        with self._write() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version "
                        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            have = cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            steps = migrations("BIGSERIAL PRIMARY KEY")
            newest = steps[-1][0]
            if have > newest:
                raise StoreError(f"grant store has schema version {have}, newer than this pgwarden "
                                 f"knows ({newest}): upgrade pgwarden")
            for version, statements in steps:
                if version <= have:
                    continue
                for sql in statements:
                    cur.execute(sql)
                cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                            (version, time.time()))

    # -- revocation feed

    def listen(self, stop: threading.Event | None = None, interval: float = 1.0) -> Iterator[str | None]:
        """Yield the id of every grant that changes from now on, as NOTIFY
        delivers it; ``None`` after ``interval`` quiet seconds so the caller
        can check its own stop condition.  Ends when ``stop`` is set.

        A dropped listening connection is reopened, and the changes made
        while it was down are caught up from ``changes_since`` (an id may
        then be yielded twice: a listener must treat ids as "look again")."""
        cursor, _ = self.changes_since(None)
        conn: psycopg.Connection | None = None
        try:
            while stop is None or not stop.is_set():
                if conn is None or conn.closed:
                    try:
                        conn = self._connect()
                        conn.execute(f"LISTEN {CHANNEL}")
                    except (StoreError, psycopg.Error):
                        conn = None
                        yield None
                        (stop.wait if stop is not None else time.sleep)(interval)
                        continue
                    cursor, missed = self.changes_since(cursor)
                    yield from missed
                heard = False
                try:
                    for note in conn.notifies(timeout=interval):
                        heard = True
                        yield note.payload
                except psycopg.OperationalError:
                    conn.close()
                    conn = None
                    continue
                if not heard:
                    # A quiet tick: move the catch-up cursor (cheap, and keeps
                    # the replay after a reconnect short).
                    cursor, _ = self.changes_since(None)
                    yield None
        finally:
            if conn is not None:
                conn.close()

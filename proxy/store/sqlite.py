"""The SQLite grant store: one file, safe for several proxy processes on one host.

Job: the default ``GrantStore``.  The CLI and every proxy process on the
host open the same file.

Rules:

* WAL mode: readers never block the writer and the writer never blocks
  readers; a proxy checking a grant at connect is not held up by a CLI
  revoking another one.
* Writes start with ``BEGIN IMMEDIATE``: the write lock is taken before the
  first read, so two writers queue on ``busy_timeout`` instead of failing
  with "database is locked" when a read transaction would have to upgrade
  (busy handlers are not called for that upgrade).
* One connection per thread (and per process: a connection inherited over
  fork is never used).  Connections are in autocommit mode; transactions
  are explicit.
* The schema is versioned in ``schema_version``; ``open`` applies missing
  migrations inside one write transaction, so concurrent openers migrate
  once.
* Revocations reach proxies by polling ``changes_since`` (``listen``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .base import SQLGrantStore, StoreError, migrations

__all__ = ["SQLiteGrantStore"]

BUSY_TIMEOUT_MS = 30_000


class SQLiteGrantStore(SQLGrantStore):
    """``SQLiteGrantStore(path)``; ``url`` is ``sqlite:///<absolute path>``."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path.resolve()}" if self.path.is_absolute() else f"sqlite://{self.path}"
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        if not self.path.parent.is_dir():
            raise StoreError(f"grant store {self.path}: directory {self.path.parent} does not exist")
        self._migrate()

    # -- connections

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"grant store {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"grant store {self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")   # durable in WAL at each checkpoint
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as e:
            raise StoreError(f"grant store {self.path}: {e}") from None
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self, begin: str) -> Iterator[sqlite3.Cursor]:
        cur = self._conn().cursor()
        try:
            cur.execute(begin)
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"grant store {self.path}: {e}") from e
        finally:
            cur.close()

    def _write(self):
        return self._tx("BEGIN IMMEDIATE")

    def _read(self):
        return self._tx("BEGIN")      # deferred: one consistent snapshot, no lock taken

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
            self._closed = True
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:   # owned by another thread and already gone
                pass

    # -- schema

    def _migrate(self) -> None:
        with self._write() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version "
                        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            have = cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            steps = migrations("INTEGER PRIMARY KEY AUTOINCREMENT")
            newest = steps[-1][0]
            if have > newest:
                raise StoreError(f"grant store {self.path} has schema version {have}, newer than this "
                                 f"pgwarden knows ({newest}): upgrade pgwarden")
            for version, statements in steps:
                if version <= have:
                    continue
                for sql in statements:
                    cur.execute(sql)
                cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                            (version, time.time()))

    # -- revocation feed

    def listen(self, stop: threading.Event | None = None, interval: float = 0.5) -> Iterator[str | None]:
        """Yield the id of every grant that changes from now on, polling
        ``changes_since`` every ``interval`` seconds; yields ``None`` after a
        quiet poll so the caller can check its own stop condition.  Ends
        when ``stop`` is set."""
        cursor, _ = self.changes_since(None)
        while stop is None or not stop.is_set():
            cursor, ids = self.changes_since(cursor)
            yield from ids
            if not ids:
                yield None
            if stop is not None:
                stop.wait(interval)
            else:
                time.sleep(interval)

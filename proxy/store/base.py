"""The grant store interface, and the SQL both backends share.

Job: keep grants, their append-only event history and the sessions opened
under them, for the CLI (which changes grants) and the proxy (which reads
them at connect and watches for revocations).

Rules:

* A grant changes only by ``update(grant, expected_state)`` with a grant
  that ``policy.grants.apply`` produced: the store writes the row only if it
  still holds ``expected_state`` and the version before the change
  (compare-and-set), and appends ``grant.last_change`` to the history in the
  same transaction.  A lost race raises ``Conflict``; nothing is overwritten.
* History is append-only: rows in ``grant_events`` are never updated or
  deleted.  ``changes_since`` reads it by sequence number, so a poller that
  keeps its cursor sees every change exactly in commit order.
* Thread-safe: each thread gets its own connection (the proxy calls the
  store from executor threads); connections are also reopened after fork.
* Times are UNIX timestamps (floats), as in ``policy``.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from policy.grants import Change, Grant, GrantState

__all__ = [
    "GrantStore", "GrantEvent", "SessionRecord", "StoreError", "UnknownGrant",
    "Conflict", "SQLGrantStore", "GRANT_COLUMNS", "SCHEMA_VERSION",
]


class StoreError(Exception):
    """The store could not do what was asked; str() says why."""


class UnknownGrant(StoreError, KeyError):
    def __init__(self, grant_id: str) -> None:
        super().__init__(f"no grant {grant_id!r}")
        self.grant_id = grant_id

    def __str__(self) -> str:
        return self.args[0]


class Conflict(StoreError):
    """Compare-and-set lost: the grant changed since it was read."""


@dataclass(frozen=True)
class GrantEvent:
    """One line of a grant's history: who did what, when."""

    seq: int
    grant_id: str
    at: float
    actor: str
    event: str
    from_state: str | None
    to_state: str
    details: dict[str, Any]


@dataclass(frozen=True)
class SessionRecord:
    grant_id: str
    session_id: str
    user: str
    started_at: float
    ended_at: float | None = None
    end_reason: str | None = None


@runtime_checkable
class GrantStore(Protocol):
    """What the CLI and the proxy use; ``open_store(url)`` returns one."""

    url: str

    def create(self, grant: Grant) -> Grant: ...
    def get(self, grant_id: str) -> Grant | None: ...
    def update(self, grant: Grant, expected_state: GrantState | str) -> Grant: ...
    def list(self, *, state: GrantState | str | None = None, user: str | None = None,
             since: float | None = None, scope: str | None = None) -> list[Grant]: ...
    def events(self, grant_id: str) -> list[GrantEvent]: ...
    def record_session(self, grant_id: str, session_id: str, user: str, started_at: float,
                       ended_at: float | None = None, end_reason: str | None = None) -> None: ...
    def sessions(self, grant_id: str) -> list[SessionRecord]: ...
    def changes_since(self, cursor: int | None) -> tuple[int, list[str]]: ...
    def listen(self, stop: threading.Event | None = None,
               interval: float = 0.5) -> Iterator[str | None]: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------ schema

SCHEMA_VERSION = 1

# Grant fields stored as columns (everything but last_change), in order.
GRANT_COLUMNS = tuple(f.name for f in fields(Grant) if f.name != "last_change")

# The tables, for both dialects: only the event sequence type differs.
_GRANTS_DDL = """
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    subject TEXT NOT NULL,
    database TEXT NOT NULL,
    scope TEXT NOT NULL,
    not_before DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    ticket TEXT,
    state TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    approver TEXT,
    break_glass BOOLEAN NOT NULL DEFAULT FALSE,
    reviewed_by TEXT,
    reviewed_at DOUBLE PRECISION,
    approved_at DOUBLE PRECISION,
    denied_at DOUBLE PRECISION,
    denied_by TEXT,
    deny_reason TEXT,
    issued_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    revoked_by TEXT,
    revoke_reason TEXT,
    ended_at DOUBLE PRECISION,
    ended_by TEXT,
    version INTEGER NOT NULL
)"""

_SESSIONS_DDL = """
CREATE TABLE grant_sessions (
    grant_id TEXT NOT NULL REFERENCES grants(id),
    session_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    end_reason TEXT,
    PRIMARY KEY (grant_id, session_id)
)"""


def migrations(seq_column: str) -> list[tuple[int, list[str]]]:
    """Versioned migrations: (version, statements).  Append; never edit one
    that has shipped.  ``seq_column`` is the dialect's auto-increment key."""
    return [
        (1, [
            _GRANTS_DDL,
            "CREATE INDEX grants_created ON grants (created_at)",
            "CREATE INDEX grants_state ON grants (state)",
            f"""CREATE TABLE grant_events (
                seq {seq_column},
                grant_id TEXT NOT NULL REFERENCES grants(id),
                at DOUBLE PRECISION NOT NULL,
                actor TEXT NOT NULL,
                event TEXT NOT NULL,
                from_state TEXT,
                to_state TEXT NOT NULL,
                details TEXT NOT NULL
            )""",
            "CREATE INDEX grant_events_grant ON grant_events (grant_id, seq)",
            _SESSIONS_DDL,
        ]),
    ]


def grant_to_row(grant: Grant) -> dict[str, Any]:
    row = {name: getattr(grant, name) for name in GRANT_COLUMNS}
    row["state"] = GrantState(grant.state).value
    row["break_glass"] = bool(grant.break_glass)
    return row


def row_to_grant(row: tuple | list) -> Grant:
    values = dict(zip(GRANT_COLUMNS, row))
    values["state"] = GrantState(values["state"])
    values["break_glass"] = bool(values["break_glass"])
    return Grant(**values)


def _json(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, default=str)


# ------------------------------------------------------- the shared SQL core


class SQLGrantStore(ABC):
    """Everything but connections and dialect: SQL is written with ``?``
    placeholders; a backend whose driver wants ``%s`` sets ``paramstyle``."""

    url: str
    paramstyle = "qmark"

    # -- hooks for the backends

    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction; yields a cursor.  Writers are serialised."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A read (snapshot) transaction; yields a cursor."""

    def _changed(self, cur: Any, grant_id: str) -> None:
        """Called inside the write transaction after a grant changed."""

    @abstractmethod
    def close(self) -> None: ...

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.paramstyle == "format" else sql

    def _exec(self, cur: Any, sql: str, params: tuple | list = ()) -> Any:
        cur.execute(self._q(sql), tuple(params))
        return cur

    # -- grants

    def create(self, grant: Grant) -> Grant:
        """Insert a new grant and its first event ("request" unless the grant
        carries another change).  Raises ``StoreError`` if the id is taken."""
        row = grant_to_row(grant)
        change = grant.last_change or Change("request", grant.requester, grant.created_at,
                                             None, grant.state)
        cols = ", ".join(row)
        marks = ", ".join("?" * len(row))
        with self._write() as cur:
            if self._exec(cur, "SELECT 1 FROM grants WHERE id = ?", (grant.id,)).fetchone():
                raise StoreError(f"grant {grant.id!r} already exists")
            self._exec(cur, f"INSERT INTO grants ({cols}) VALUES ({marks})", list(row.values()))
            self._append_event(cur, grant.id, change)
            self._changed(cur, grant.id)
        return grant

    def get(self, grant_id: str) -> Grant | None:
        with self._read() as cur:
            row = self._exec(cur, f"SELECT {', '.join(GRANT_COLUMNS)} FROM grants WHERE id = ?",
                             (grant_id,)).fetchone()
        return None if row is None else row_to_grant(row)

    def update(self, grant: Grant, expected_state: GrantState | str) -> Grant:
        """Write ``grant`` if the stored one is still in ``expected_state`` at
        ``grant.version - 1``; append ``grant.last_change`` to its history."""
        change = grant.last_change
        if change is None:
            raise StoreError(f"grant {grant.id}: update needs the change made by policy.grants.apply")
        expected = GrantState(expected_state).value
        row = grant_to_row(grant)
        sets = ", ".join(f"{name} = ?" for name in row if name != "id")
        params = [v for k, v in row.items() if k != "id"] + [grant.id, expected, grant.version - 1]
        with self._write() as cur:
            cur = self._exec(cur, f"UPDATE grants SET {sets} WHERE id = ? AND state = ? AND version = ?",
                             params)
            if cur.rowcount != 1:
                now = self._exec(cur, "SELECT state, version FROM grants WHERE id = ?",
                                 (grant.id,)).fetchone()
                if now is None:
                    raise UnknownGrant(grant.id)
                raise Conflict(
                    f"grant {grant.id} changed meanwhile: it is now {now[0]} (version {now[1]}), "
                    f"expected {expected} (version {grant.version - 1}); read it again and retry")
            self._append_event(cur, grant.id, change)
            self._changed(cur, grant.id)
        return grant

    def list(self, *, state: GrantState | str | None = None, user: str | None = None,
             since: float | None = None, scope: str | None = None) -> list[Grant]:
        """Grants, oldest first.  ``state`` is the *stored* state (use
        ``policy.grants.effective_state`` for the state at a time); ``user``
        matches the requester or the subject; ``since`` the creation time."""
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(GrantState(state).value)
        if user is not None:
            where.append("(requester = ? OR subject = ?)")
            params += [user, user]
        if since is not None:
            where.append("created_at >= ?")
            params.append(float(since))
        if scope is not None:
            where.append("scope = ?")
            params.append(scope)
        sql = f"SELECT {', '.join(GRANT_COLUMNS)} FROM grants"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._read() as cur:
            rows = self._exec(cur, sql + " ORDER BY created_at, id", params).fetchall()
        return [row_to_grant(r) for r in rows]

    # -- history

    def _append_event(self, cur: Any, grant_id: str, change: Change) -> None:
        self._exec(cur, "INSERT INTO grant_events (grant_id, at, actor, event, from_state, to_state, details)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (grant_id, change.at, change.actor, change.event,
                    None if change.from_state is None else GrantState(change.from_state).value,
                    GrantState(change.to_state).value, _json(change.details)))

    def events(self, grant_id: str) -> list[GrantEvent]:
        with self._read() as cur:
            rows = self._exec(cur, "SELECT seq, grant_id, at, actor, event, from_state, to_state, details "
                                   "FROM grant_events WHERE grant_id = ? ORDER BY seq", (grant_id,)).fetchall()
        return [GrantEvent(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]

    def changes_since(self, cursor: int | None) -> tuple[int, list[str]]:
        """``(new_cursor, ids of grants changed after cursor)``, in order of
        change, each id once.  ``None`` starts at the present: it returns the
        current cursor and no ids (a proxy starting up needs no backlog)."""
        with self._read() as cur:
            if cursor is None:
                row = self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM grant_events").fetchone()
                return int(row[0]), []
            rows = self._exec(cur, "SELECT seq, grant_id FROM grant_events WHERE seq > ? ORDER BY seq",
                              (int(cursor),)).fetchall()
        ids: list[str] = []
        for _, gid in rows:
            if gid not in ids:
                ids.append(gid)
        return (int(rows[-1][0]) if rows else int(cursor)), ids

    # -- sessions

    def record_session(self, grant_id: str, session_id: str, user: str, started_at: float,
                       ended_at: float | None = None, end_reason: str | None = None) -> None:
        """Insert a session, or (same grant and session id) record its end.
        An end is never undone: a late start record (calls from executor
        threads may arrive out of order) keeps the recorded end."""
        with self._write() as cur:
            if not self._exec(cur, "SELECT 1 FROM grants WHERE id = ?", (grant_id,)).fetchone():
                raise UnknownGrant(grant_id)
            self._exec(cur, "INSERT INTO grant_sessions (grant_id, session_id, user_name, started_at, ended_at,"
                            " end_reason) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (grant_id, session_id) DO UPDATE"
                            " SET ended_at = COALESCE(excluded.ended_at, grant_sessions.ended_at),"
                            " end_reason = COALESCE(excluded.end_reason, grant_sessions.end_reason)",
                       (grant_id, session_id, user, started_at, ended_at, end_reason))

    def sessions(self, grant_id: str) -> list[SessionRecord]:
        with self._read() as cur:
            rows = self._exec(cur, "SELECT grant_id, session_id, user_name, started_at, ended_at, end_reason "
                                   "FROM grant_sessions WHERE grant_id = ? ORDER BY started_at, session_id",
                              (grant_id,)).fetchall()
        return [SessionRecord(*r) for r in rows]

    def session_counts(self) -> dict[str, int]:
        """{grant id: number of sessions} for every grant that had one (for reports)."""
        with self._read() as cur:
            rows = self._exec(cur, "SELECT grant_id, COUNT(*) FROM grant_sessions GROUP BY grant_id").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def all_sessions(self, since: float | None = None) -> list[SessionRecord]:
        sql = "SELECT grant_id, session_id, user_name, started_at, ended_at, end_reason FROM grant_sessions"
        params: tuple = ()
        if since is not None:
            sql, params = sql + " WHERE started_at >= ?", (float(since),)
        with self._read() as cur:
            rows = self._exec(cur, sql + " ORDER BY started_at", params).fetchall()
        return [SessionRecord(*r) for r in rows]

    def schema_version(self) -> int:
        with self._read() as cur:
            row = self._exec(cur, "SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

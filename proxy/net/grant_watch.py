"""The proxy's side of the grant store: check at connect, watch for changes.

Job: when the config has a ``[grants]`` section, every token's grant (its
``jti``) is looked up in the store at connect and refused unless
``policy.grants.check_for_connect`` lets it in; a change to a grant (revoke,
early end, a shortened expiry) reaches the sessions of that grant in this
process; each session's start and end are written to the store as evidence.

Rules:

* The store is blocking (sqlite3, psycopg): every call runs on a small
  thread pool, never on the event loop.
* Fail closed: a store that cannot answer refuses the connection (the
  proxy cannot vouch for a grant it cannot read). A store that fails while
  sessions run does not cut them: their deadline still holds, and the
  watcher retries until the store answers again, then reads again every
  grant with sessions here (a revoke made during the failure was not seen);
  a change whose grant cannot be read is read again every LISTEN_RETRY.
* The watcher is one daemon thread iterating ``store.listen`` (SQLite:
  polling every 0.5 s; PostgreSQL: LISTEN/NOTIFY); it hands grant ids to the
  loop with ``call_soon_threadsafe``. Each worker process has its own.
* Session records are best effort (logged on failure): evidence must not
  hold a session hostage, and the recording (proxy/audit) is the authority.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import structlog

from policy.grants import check_for_connect
from policy.tokens import format_ts

from .. import metrics

log = structlog.get_logger("pgwarden.grants")

LISTEN_RETRY = 1.0        # seconds between attempts when the store fails under the watcher
GAUGE_EVERY = 10.0        # seconds between counts of active grants for the metrics gauge


class GrantRefused(Exception):
    """The grant does not let this client in; str() is the reason for the client."""


class GrantWatch:
    def __init__(self, server, grants_config) -> None:
        from ..store import open_store

        self.server = server
        self.loop = server.loop
        self.store = open_store(grants_config.store_url, base=grants_config.base)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pgwarden-store")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ connect

    async def admit(self, claims, now: float):
        """The grant for ``claims`` if it lets the client in now; else GrantRefused."""
        try:
            grant = await self.loop.run_in_executor(self.executor, self.store.get, claims.jti)
        except Exception as e:
            log.warning("grant_store_unavailable", grant=claims.jti, error=str(e))
            raise GrantRefused(f"grant {claims.jti} cannot be checked: the grant store is unavailable") from None
        if grant is None:
            raise GrantRefused(f"grant {claims.jti} is not known to this proxy's grant store")
        reason = check_for_connect(grant, now, user=claims.sub, database=claims.db, scope=claims.scope)
        if reason is not None:
            raise GrantRefused(reason)
        return grant

    def session_started(self, grant_id: str, session_id: str, user: str, started: float) -> None:
        self._record(grant_id, session_id, user, started, None, None)

    def session_ended(self, grant_id: str, session_id: str, user: str, started: float, ended: float,
                      reason: str) -> None:
        self._record(grant_id, session_id, user, started, ended, reason)

    def _record(self, *args) -> None:
        def write() -> None:
            try:
                self.store.record_session(*args)
            except Exception as e:
                log.warning("grant_session_record_failed", grant=args[0], session=args[1], error=str(e))
        try:
            self.executor.submit(write)
        except RuntimeError:                 # executor shut down: the process is stopping
            write()

    # ------------------------------------------------------------------ changes

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="pgwarden-grant-watch", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        counted = 0.0
        recheck = False
        while not self._stop.is_set():
            try:
                for gid in self.store.listen(self._stop):
                    if self._stop.is_set():
                        return
                    if recheck:
                        # listen() watches from its first poll on: a change made while the store
                        # failed (a revoke) was never seen. Now that the new watch has its starting
                        # point, read again every grant with sessions here.
                        recheck = False
                        self.loop.call_soon_threadsafe(self._recheck_all)
                    if gid is not None:
                        self.loop.call_soon_threadsafe(self._changed, gid)
                    if time.monotonic() - counted >= GAUGE_EVERY:
                        counted = time.monotonic()
                        metrics.set_grants_active(self._count_live())
            except Exception as e:
                log.warning("grant_watch_failed", error=str(e), retry_in=LISTEN_RETRY)
                recheck = True
                self._stop.wait(LISTEN_RETRY)
            except BaseException:
                return

    def _count_live(self) -> int:
        """Grants a client could connect with now (approved or active, within their window)."""
        now = time.time()
        return sum(1 for state in ("approved", "active") for g in self.store.list(state=state)
                   if check_for_connect(g, now) is None)

    def _recheck_all(self) -> None:
        grants = {s.claims.jti for s in self.server.sessions if s.claims is not None and s.claims.jti}
        if grants:
            log.info("grant_watch_recheck", grants=len(grants))
        for gid in grants:
            self._changed(gid)

    def _changed(self, grant_id: str) -> None:
        if self.server.sessions_of_grant(grant_id):
            self.server.track(self.loop.create_task(self.apply_change(grant_id)))

    async def apply_change(self, grant_id: str) -> None:
        """Bring this process's sessions of ``grant_id`` in line with the store."""
        try:
            grant = await self.loop.run_in_executor(self.executor, self.store.get, grant_id)
        except Exception as e:
            # The change may be a revoke: read again until the store answers (or the sessions end).
            log.warning("grant_store_unavailable", grant=grant_id, error=str(e), retry_in=LISTEN_RETRY)
            if not self._stop.is_set():
                self.loop.call_later(LISTEN_RETRY, self._changed, grant_id)
            return
        now = time.time()
        for session in self.server.sessions_of_grant(grant_id):
            if grant is None:
                session.cut(f"grant {grant_id} was removed from the grant store", reason="revoked")
                continue
            why = check_for_connect(grant, now)
            if why is not None:
                kind = "revoked" if grant.revoked_at else "ended" if grant.ended_at else "expired"
                session.cut(why, reason=kind)
            else:
                session.set_deadline(grant.expires_at,
                                     f"grant {grant_id} expired at {format_ts(grant.expires_at)}")

    # ------------------------------------------------------------------ stop

    async def close(self) -> None:
        self._stop.set()
        await asyncio.get_running_loop().run_in_executor(None, self._drain)

    def _drain(self) -> None:
        self.executor.shutdown(wait=True)    # pending session records reach the store
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.store.close()
        except Exception:
            pass

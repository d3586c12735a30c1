"""Write one session's recording as the session runs.

Job: ``SessionRecorder`` appends a session's records to
``<dir>/<YYYY-MM-DD>/<session_id>.jsonl`` (directories 0700, file 0600) and
seals it with the signed ``session_end``; ``RecorderFactory`` holds what all
sessions share (directory, key, policies) and opens one recorder per session.

The API the relay calls (all from the session's own event-loop thread)::

    factory = RecorderFactory.from_config(cfg.audit)     # proxy start; ConfigError if the key is bad
    #         RecorderFactory.from_config(cfg.audit, executor=pool)  to fsync off the loop

    rec = factory.open(grant=claims.jti, session_id=None, on_failure=None)  # nothing on disk yet
    rec.session_id                                       # "20250102T030405-1a2b3c4d5e6f"
    rec.start(client_addr="10.0.0.7:51234", tls="TLSv1.3", user="alice", database="app",
              grant="g-123", scope="read", reason="INC-1 debugging", ticket="INC-1",
              approver="bob", backend_pid=4242, **extra)  # extra: any JSON values (application_name=...)
    rec.statement(text="select * from t where id = $1", params=["42"],
                  statement_class=StatementClass.READ,   # str or str-enum, or None
                  decision="allowed",                    # "allowed" | "denied" (True/False accepted)
                  rule="read.select",                    # the classifier's rule id
                  started=t0,                            # wall clock, epoch seconds (time.time())
                  duration=0.0012,                       # seconds (None: now - started)
                  tag="SELECT 1", rows=None,             # rows None: taken from the tag
                  sqlstate=None, message=None,           # on ErrorResponse or denial
                  introspection=None,                    # None: decided by is_introspection(text)
                  via="query")                           # the message that carried it: "query",
                                                         # "execute", "parse", "function_call"
    rec.copy("in", 123456, rows=1000)                    # a COPY's data phase: "in" | "out" | "both"
    rec.notice("expiry_warning", "grant expires in 60 s", **extra)
    rec.end("client_closed", **totals)                   # signed session_end; totals override counts

Every method returns True when its record was written and False otherwise
(after ``end()``, after a disk failure); none raises into the relay except
for programming errors (a reserved field name in ``start``/``notice``).  ``statement()`` costs a few
microseconds plus one ``write(2)`` (benchmarks/test_micro_audit.py).

Rules:

* The recorder serialises its own records (``record.Chain``: orjson, sorted
  keys, hash chain).  It never goes through structlog: the chain needs the
  exact bytes, and a structlog line costs ten times more (STYLE.md, (d) 8).
  ``statement`` lines come from the optional C extension when it is built
  (``record.LINE_IMPL == "c"``, the same bytes; a record it refuses, and
  any that keeps a ``rows_sample``, goes through ``record.Chain``).  The
  relay's tracker hands its statements to ``statement_sink`` when built
  (``SINK_IMPL == "c"``): the same record, counters and failure handling as
  ``client_conn._write_statement`` + ``statement()``, in one C call, with
  everything unusual handed back to them (proxy/audit/_recline.c).
* Identity is bound explicitly (session id and grant id given to ``open``),
  never read from contextvars: in asyncio.Protocol callbacks they do not
  carry a session's identity, and under uvloop they leak.
* The file is opened lazily (at the first record) and each record is one
  ``write(2)`` of its whole line (no buffer of ours), so a killed proxy
  leaves every completed statement on disk (a SIGKILL loses nothing the
  kernel has; a power cut loses what was not fsynced).  The one exception
  is ``hold()``/``release()``: the relay holds while it walks one chunk of
  server bytes and releases before forwarding it, so the records of one
  read (a pipeline's statements) go in one ``write(2)``, still before any
  of their answers reaches the client.  fsync policy: ``"off"`` never;
  ``"statement"`` after each record, or each release (safest, slowest: a
  disk round trip per statement, on the event loop); ``"session"``
  (default) the file and its directory once, at ``end()`` -- on
  ``executor`` when the factory has one, else inline.
* Disk errors never raise into the caller.  They are logged (structlog event
  ``audit_write_failed``), the recorder is marked ``failed`` (with ``error``),
  ``on_failure(error)`` is called if given, and every later call returns
  False.  The session's owner decides whether to cut the session.
* ``start()`` comes first; a record before it writes an empty
  ``session_start`` first (logged as ``audit_autostart``) so the chain stays
  well formed.  Nothing follows ``end()``.  A recorder dropped without
  ``end()`` leaves an unterminated recording, which is the truth.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import record as R
from .config import FSYNC_POLICIES, AuditConfig, load_signing_key
from .introspection import is_introspection

__all__ = ["SessionRecorder", "RecorderFactory", "new_session_id", "recording_path"]

log = structlog.get_logger("pgwarden.audit")

DIR_MODE = 0o700
FILE_MODE = 0o600

# session_start fields written on every recording (null when unknown), in the API's names.
START_FIELDS = ("client_addr", "tls", "user", "database", "grant", "scope", "reason", "ticket",
                "approver", "backend_pid")
_START_RESERVED = R.RESERVED | {"v", "session", "capture"}


try:
    from ._recline import write_statement as write_statement_c
except ImportError:        # built without a C compiler (or an older build): the reference path
    write_statement_c = None
try:
    from ._recline import release as release_c
except ImportError:
    release_c = None
if R.statement_line_c is None:      # the sink builds its lines with the same code: only when that passed
    write_statement_c = release_c = None

#: The tracker's emit when compiled: ``statement_sink(fallback, rec, st)`` records ``st`` exactly as
#: ``fallback(rec, st)`` (``proxy.net.client_conn._write_statement``) would, in C for the ordinary
#: statement, through ``fallback`` or ``SessionRecorder._record`` otherwise (proxy/audit/_recline.c).
#: ``ClientConn._start_recording`` looks it up per session; None (tests, benchmarks) forces the Python path.
statement_sink = write_statement_c
SINK_IMPL = "c" if write_statement_c is not None else "python"


def release(rec: SessionRecorder) -> bool:
    """``rec.release()``: the relay's call after each chunk it walked (rebound below to the
    compiled one when built, which does the ordinary case in one C call)."""
    return rec.release()


if release_c is not None:
    release = release_c  # noqa: F811
RELEASE_IMPL = "c" if release_c is not None else "python"


def new_session_id(now: float | None = None) -> str:
    """``20250102T030405-1a2b3c4d5e6f``: sortable by start time, unique, safe in a file name."""
    g = time.gmtime(time.time() if now is None else now)
    return "%04d%02d%02dT%02d%02d%02d-%s" % (
        g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec, secrets.token_hex(6))


def recording_path(directory: Path, session_id: str, started: float) -> Path:
    """``<directory>/<YYYY-MM-DD of started, UTC>/<session_id>.jsonl``."""
    g = time.gmtime(started)
    return Path(directory) / ("%04d-%02d-%02d" % (g.tm_year, g.tm_mon, g.tm_mday)) / f"{session_id}.jsonl"


def _decision(value: Any) -> str:
    if value is True or value == "allowed":
        return "allowed"
    if value is False or value == "denied":
        return "denied"
    return str(value)


class SessionRecorder:
    """One session's recording.  Not thread-safe: call it from the session's own loop."""

    __slots__ = (
        "session_id", "grant", "path", "failed", "error", "ended", "_chain", "_fd",
        "_key", "_kid", "_fsync", "_capture_params", "_capture_rows", "_clock", "_on_failure",
        "_executor", "_started", "_n_statements", "_n_denied", "_n_errors", "_n_rows",
        "_copy_in", "_copy_out", "_copy_both", "_n_notices", "_n_introspection", "_held",
    )

    def __init__(
        self,
        directory: str | Path,
        session_id: str,
        *,
        signing_key: Ed25519PrivateKey,
        key_id: str,
        grant: str | None = None,
        fsync: str = "session",
        capture_params: bool = True,
        capture_rows: int = 0,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[str], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be off, statement or session, not {fsync!r}")
        if not session_id or "/" in session_id or "\\" in session_id or session_id.startswith("."):
            raise ValueError(f"unfit session id {session_id!r}")
        self.session_id = session_id
        self.grant = grant
        self._clock = clock
        self._started = clock()
        self.path = recording_path(Path(directory), session_id, self._started)
        self.failed = False
        self.error: str | None = None
        self.ended = False
        self._chain = R.Chain()
        self._fd = -1                   # the recording's file, opened at the first record
        self._held: list[bytes] | None = None   # lines made between hold() and release(), not yet written
        self._key = signing_key
        self._kid = key_id
        self._fsync = fsync
        self._capture_params = capture_params
        self._capture_rows = capture_rows
        self._on_failure = on_failure
        self._executor = executor
        self._n_statements = self._n_denied = self._n_errors = self._n_rows = 0
        self._copy_in = self._copy_out = self._copy_both = self._n_notices = self._n_introspection = 0

    # ------------------------------------------------------------------ records

    def start(
        self,
        *,
        client_addr: str | None = None,
        tls: Any = None,
        user: str | None = None,
        database: str | None = None,
        grant: str | None = None,
        scope: str | None = None,
        reason: str | None = None,
        ticket: str | None = None,
        approver: str | None = None,
        backend_pid: int | None = None,
        **extra: Any,
    ) -> bool:
        """``session_start``: who, from where, under which grant, and why.

        ``tls``: False/None (plain), True, or a description such as the
        protocol version.  ``grant`` defaults to the one given to ``open``.
        ``extra`` adds fields (``application_name``, ``sub``, ...); names of
        the chain's own fields (seq, ts, type, prev, sig, key_id) and of the
        recorder's (v, session, capture) are refused with ValueError.
        """
        if self._chain.seq:
            return self._misuse("start() called twice")
        bad = _START_RESERVED.intersection(extra)
        if bad:
            raise ValueError(f"reserved record field(s) {sorted(bad)}")
        if grant is not None:
            self.grant = grant
        fields: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
        fields.update(
            v=R.FORMAT_VERSION, session=self.session_id, grant=self.grant,
            capture={"params": self._capture_params, "rows": self._capture_rows},
            client_addr=client_addr, tls=tls, user=user, database=database, scope=scope,
            reason=reason, ticket=ticket, approver=approver, backend_pid=backend_pid)
        return self._emit(R.SESSION_START, fields)

    def statement(
        self,
        text: str,
        *,
        params: Sequence[Any] | None = None,
        statement_class: str | None = None,
        decision: str | bool = "allowed",
        rule: str | None = None,
        started: float | None = None,
        duration: float | None = None,
        tag: str | None = None,
        rows: int | None = None,
        sqlstate: str | None = None,
        message: str | None = None,
        introspection: bool | None = None,
        via: str = "query",
        rows_sample: Sequence[Sequence[Any]] | None = None,
    ) -> bool:
        """One executed (or denied) statement, written when its outcome is known:
        CommandComplete, EmptyQueryResponse, ErrorResponse or pgwarden's denial.

        ``started`` is wall-clock epoch seconds; ``duration`` seconds (both
        default to now).  ``params`` are the Bind values (str, bytes or None),
        kept unless ``capture_params`` is off; ``rows_sample`` the first rows
        of the result, kept up to ``capture_rows``.
        """
        if self.ended or self.failed:
            return False
        if not self._chain.seq and not self._autostart():
            return False
        now = self._clock()
        if started is None:
            started = now
        if duration is None:
            duration = now - started if now > started else 0.0
        decision = _decision(decision)
        cls = None if statement_class is None else str(statement_class)
        duration_ms = round(duration * 1000.0, 3)
        if not self._capture_params:
            params = None
        if tag is not None and rows is None:
            rows = R.rows_from_tag(tag)
        if introspection is None:
            introspection = is_introspection(text)
        sample = None
        if rows_sample is not None and self._capture_rows:
            sample = rows_sample[:self._capture_rows]
        return self._record(now, text, params, cls, decision, rule, started, duration_ms, tag, rows, sqlstate,
                            message, introspection, via, sample)

    def _record(self, now: float, text: str, params: Sequence[Any] | None, cls: str | None, decision: str,
                rule: str | None, started: float, duration_ms: float, tag: str | None, rows: int | None,
                sqlstate: str | None, message: str | None, introspection: Any, via: str,
                sample: Sequence[Sequence[Any]] | None) -> bool:
        """The rest of ``statement()`` once the clock was read and the fields settled (params
        already dropped unless captured, rows taken from the tag, introspection decided, the
        sample cut): build the line, count, emit.  The compiled sink (``statement_sink``) calls
        it with the clock's reading when ``statement_line_c`` refuses the record."""
        built = fields = None
        if sample is None and R.LINE_IMPL == "c":      # the compiled line; None: Python's to write
            chain = self._chain
            built = R.statement_line_c(chain.seq + 1, chain.prev, now, text, cls, decision, rule, started,
                                       duration_ms, via, params, tag, rows, sqlstate, message, introspection)
        if built is None:
            fields = R.statement_fields(text, cls, decision, rule, started, duration_ms, via, params, tag,
                                        rows, sqlstate, message, introspection, sample)
        if rows is not None:
            self._n_rows += rows
        if introspection:
            self._n_introspection += 1
        self._n_statements += 1
        if decision != "allowed":
            self._n_denied += 1
        elif sqlstate is not None:
            self._n_errors += 1
        return self._emit(R.STATEMENT, fields, now, built)

    def copy(self, direction: str, bytes: int, rows: int | None = None) -> bool:  # noqa: A002
        """A COPY's data phase: direction ``"in"`` (client to server), ``"out"``, or
        ``"both"`` (CopyBothResponse, replication), bytes of COPY data moved, rows
        when known.  Written before the COPY's own ``statement`` record (which
        comes with its CommandComplete)."""
        if self.ended or self.failed:
            return False
        if not self._chain.seq and not self._autostart():
            return False
        if direction == "in":
            self._copy_in += bytes
        elif direction == "out":
            self._copy_out += bytes
        else:
            self._copy_both += bytes
        rec: dict[str, Any] = {"direction": direction, "bytes": bytes}
        if rows is not None:
            rec["rows"] = rows
        return self._emit(R.COPY, rec)

    def notice(self, kind: str, message: str, **fields: Any) -> bool:
        """Something pgwarden told the client or did: ``expiry_warning``,
        ``revoked``, ``drain`` ... (``fields``: any JSON values)."""
        if self.ended or self.failed:
            return False
        if not self._chain.seq and not self._autostart():
            return False
        bad = R.RESERVED.intersection(fields)
        if bad:
            raise ValueError(f"reserved record field(s) {sorted(bad)}")
        self._n_notices += 1
        fields["kind"] = kind
        fields["message"] = message
        return self._emit(R.NOTICE, fields)

    def end(self, reason: str, **totals: Any) -> bool:
        """Seal the recording: the signed ``session_end`` with ``reason``
        (client_closed, expired, revoked, server_closed, shutdown, error ...)
        and ``totals`` (the recorder's own counts, overridden and extended by
        the caller's), flush, fsync unless the policy is "off", close.
        Only the first call writes."""
        if self.ended:
            return False
        self.ended = True
        self.release()
        if self.failed:
            self._close_quietly()
            return False
        if not self._chain.seq and not self._autostart():
            return False
        now = self._clock()
        counted: dict[str, Any] = {
            "statements": self._n_statements, "denied": self._n_denied, "errors": self._n_errors,
            "rows": self._n_rows, "copy_in_bytes": self._copy_in, "copy_out_bytes": self._copy_out,
            "notices": self._n_notices, "introspection": self._n_introspection,
            "duration_s": round(max(0.0, now - self._started), 3),
        }
        if self._copy_both:
            counted["copy_both_bytes"] = self._copy_both
        counted.update(totals)
        fields = {"session": self.session_id, "reason": reason, "totals": counted}
        try:
            line = self._chain.seal(now, fields, self._key, self._kid)
            self._append(line)
        except Exception as e:          # never raise into the session
            self._fail(e)
            return False
        fd, self._fd = self._fd, -1
        if self._fsync == "off":
            self._finish(fd, sync=False)
        elif self._executor is not None:
            try:
                self._executor.submit(self._finish, fd, True)
            except RuntimeError:        # executor shut down: do it here
                self._finish(fd, sync=True)
        else:
            self._finish(fd, sync=True)
        return True

    def hold(self) -> None:
        """Keep the records made from now until ``release()`` and write them together.

        The relay holds while it walks one chunk of the server's bytes and
        releases before it forwards that chunk: a pipeline's statements (ten
        CommandCompletes in one read) cost one ``write(2)`` instead of ten, and
        still no client sees an answer whose record is not the kernel's.  A
        record method returns True for a held record once it is chained and
        kept; a failure to write shows at ``release()``.  Holding twice is
        holding once; ``end()`` releases first."""
        if self._held is None:
            self._held = []

    def release(self) -> bool:
        """Write what ``hold()`` kept, in one ``write(2)`` (and one fsync under
        the "statement" policy), and stop holding.  False when the recorder
        failed, now or before (``on_failure`` was called as for any record)."""
        held, self._held = self._held, None
        if self.failed:
            return False
        if held:
            try:
                self._write(b"".join(held))
                if self._fsync == "statement":
                    os.fsync(self._fd)
            except Exception as e:      # never raise into the session
                self._fail(e)
                return False
        return True

    @property
    def records(self) -> int:
        """Records made so far (written, or held until ``release()``)."""
        return self._chain.seq

    # ------------------------------------------------------------------ internals

    def _autostart(self) -> bool:
        # A record before start(): the owner forgot; keep the chain well formed.
        self._log().warning("audit_autostart", reason="record written before session_start")
        return self.start()

    def _misuse(self, what: str) -> bool:
        self._log().warning("audit_misuse", reason=what)
        return False

    def _emit(self, rtype: str, fields: dict[str, Any] | None, now: float | None = None,
              built: tuple[bytes, str] | None = None) -> bool:
        """Chain one record and append it (one write(2); fsynced per policy).  Any
        failure marks the recorder failed.  ``built``: a line and its digest
        that ``record.statement_line_c`` made for the chain's next seq and
        prev, written as it is (``fields`` is then None)."""
        if self.failed:
            return False
        try:
            if built is None:
                line = self._chain.line(rtype, self._clock() if now is None else now, fields)
            else:
                line, line_digest = built
                self._chain.advance(line_digest)
            self._append(line)
            if self._fsync == "statement" and self._held is None:
                os.fsync(self._fd)
        except Exception as e:          # never raise into the session
            self._fail(e)
            return False
        return True

    def _append(self, line: bytes) -> None:
        """Kept for ``release()`` while held, else written at once (``_write``)."""
        if self._held is not None:
            self._held.append(line)
        else:
            self._write(line)

    def _write(self, data: bytes) -> None:
        """One ``write(2)`` of whole lines, no buffer of ours in between: when this
        returns, the lines are the kernel's, and a crash of pgwarden cannot lose them."""
        fd = self._fd
        if fd < 0:
            fd = self._open()
        done = os.write(fd, data)
        while done < len(data):         # a short write (the disk filling up, a signal): the rest
            if done <= 0:
                raise OSError(errno.EIO, "the recording's file took no bytes")
            data = data[done:]
            done = os.write(fd, data)

    def _open(self) -> int:
        directory = self.path.parent
        if not directory.is_dir():
            _makedirs(directory)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)      # whatever the umask
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if self._fsync == "statement":
            _fsync_dir(directory)          # the new name survives a crash, not only the data
        return fd

    def _finish(self, fd: int, sync: bool) -> None:
        try:
            if sync:
                os.fsync(fd)
                if self._fsync == "session":
                    _fsync_dir(self.path.parent)
        except OSError as e:
            self._log().error("audit_write_failed", path=str(self.path), error=str(e), stage="fsync")
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        self._held = None
        self.error = f"{type(exc).__name__}: {exc}"
        self._log().error("audit_write_failed", path=str(self.path), error=self.error,
                          records=self._chain.seq)
        self._close_quietly()
        if self._on_failure is not None:
            try:
                self._on_failure(self.error)
            except Exception:
                self._log().exception("audit_on_failure_error")

    def _close_quietly(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _log(self):
        return log.bind(session_id=self.session_id, grant=self.grant)


def _makedirs(directory: Path) -> None:
    """Create missing directories with mode 0700 (existing ones are left as they are)."""
    missing = []
    d = directory
    while not d.is_dir():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
            os.chmod(d, DIR_MODE)
        except FileExistsError:
            pass                         # another session created it first


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecorderFactory:
    """What every session's recorder shares: directory, key, policies.

    Build it once at server start (``RecorderFactory.from_config(cfg.audit)``,
    which fails fast with a ConfigError on a missing or wrong key), then
    ``open()`` one recorder per session.
    """

    def __init__(self, cfg: AuditConfig, signing_key: Ed25519PrivateKey, *,
                 clock: Callable[[], float] = time.time, executor: Executor | None = None) -> None:
        self.cfg = cfg
        self.signing_key = signing_key
        self.clock = clock
        self.executor = executor

    @classmethod
    def from_config(cls, cfg: AuditConfig, *, executor: Executor | None = None,
                    clock: Callable[[], float] = time.time) -> RecorderFactory:
        """Load the signing key and check that the directory can be created and written."""
        factory = cls(cfg, load_signing_key(cfg), executor=executor, clock=clock)
        factory.check_directory()
        return factory

    def check_directory(self) -> None:
        """Create the recordings directory (0700) if missing; ConfigError if it is not writable."""
        from ..config import ConfigError

        d = Path(self.cfg.dir)
        try:
            _makedirs(d)
        except OSError as e:
            raise ConfigError(f"audit.dir: cannot create {d}: {e.strerror or e}") from None
        if not os.access(d, os.W_OK | os.X_OK):
            raise ConfigError(f"audit.dir: {d} is not writable by this process")

    def open(self, *, grant: str | None = None, session_id: str | None = None,
             on_failure: Callable[[str], None] | None = None) -> SessionRecorder:
        """A recorder for a new session.  Nothing touches the disk until its first record."""
        cfg = self.cfg
        return SessionRecorder(
            cfg.dir, session_id or new_session_id(self.clock()), signing_key=self.signing_key,
            key_id=cfg.signing_kid, grant=grant, fsync=cfg.fsync, capture_params=cfg.capture_params,
            capture_rows=cfg.capture_rows, clock=self.clock, on_failure=on_failure,
            executor=self.executor)

"""One client session: startup, token authentication, upstream login, relay.

ClientConn is the asyncio.Protocol for the client socket and owns the
session's whole life, readable top to bottom:

  STARTUP   SSLRequest / direct TLS / GSSENCRequest / CancelRequest / StartupMessage
  AUTH      AuthenticationCleartextPassword sent; the PasswordMessage carries the token
  CONNECTING  token verified; logging in upstream as the scope's role. Client bytes
            that arrive meanwhile are held (bounded), never dropped
  RELAY     client messages framed and checked, forwarded in bulk; server bytes
            forwarded as received
  CLOSED

Rules:
- pgwarden answers nothing on the client's behalf after RELAY starts except
  its own errors; everything else is the server's.
- Every refusal is a FATAL ErrorResponse that says which check failed; the
  token is never echoed.
- One transport.write per data_received in each direction.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
import time
from functools import partial

import structlog

from policy import tokens
from policy.startup import StartupRefused, filter_startup

from ..wire import constants as c
from ..wire import decode, encode, framing
from ..wire.errors import ClientProtocolError, ProtocolError
from ..wire.framing import NEED_DATA, FrameScanner
from ..session.enforce import Enforcer
from ..wire.server_stream import ServerStream
from .. import metrics
from ..audit import writer as audit_writer
from ..audit.writer import new_session_id
from ..session import track
from ..session.track import Statement
from .gate import query_walk_context
from .grant_watch import GrantRefused
from .tls import MemoryTLS
from .upstream import UpstreamError, UpstreamProtocol, open_and_login, send_cancel

log = structlog.get_logger("pgwarden.session")

STARTUP, AUTH, CONNECTING, RELAY, CLOSED = "STARTUP", "AUTH", "CONNECTING", "RELAY", "CLOSED"

HOLD_LIMIT = 1 << 20          # bytes held from the client while the upstream logs in before pausing reads
APP_NAME_MAX = 63             # NAMEDATALEN - 1

# Where _relay's walk (framing.walk_client) must stop besides the types it leaves to Python anyway:
# at Bind while a Parse was denied (Enforcer.check_bind must see every Bind then).
_WALK_STOP = bytes(256)
_WALK_STOP_BIND = bytes(t == c.PqMsg_Bind for t in range(256))


class ClientConn(asyncio.Protocol):
    __slots__ = (
        "server", "cfg", "loop", "transport", "peer", "loopback", "phase", "tls", "scanner", "log",
        "startup_timer", "params", "user", "database", "claims", "scope", "upstream", "up_transport",
        "up_pid", "up_key", "pid", "key", "reading_paused", "up_reading_paused", "connect_task",
        "started_at", "closing", "_seen_first_byte", "enforcer", "waiting", "sql_prepared", "stream",
        "sync_points", "deadline", "deadline_reason", "timer", "warned", "pending_notices", "end_reason",
        "session_id", "grant_recorded", "recorder", "tracker", "cut_lag", "live", "query_walk",
    )

    def __init__(self, server) -> None:
        self.server = server
        self.cfg = server.config
        self.loop = server.loop
        self.transport = None
        self.peer = None
        self.loopback = False
        self.phase = STARTUP
        self.tls: MemoryTLS | None = None
        self.scanner = FrameScanner(self.cfg.max_message_size, ClientProtocolError)
        self.log = log
        self.startup_timer = None
        self.params: dict[str, str] = {}
        self.user = self.database = None
        self.claims = None
        self.scope = None
        self.upstream = None
        self.up_transport = None
        self.up_pid = self.up_key = 0
        self.pid = self.key = 0
        self.reading_paused = False
        self.up_reading_paused = False
        self.connect_task = None
        self.started_at = time.time()
        self.closing = False
        self._seen_first_byte = False
        self.enforcer = Enforcer()
        self.waiting: str | None = None          # statement text being classified off the loop
        self.sql_prepared: dict[str, str] = {}   # SQL-level PREPARE name -> statement class
        self.stream = ServerStream(self.enforcer.rewrite_error)
        self.sync_points = 0                     # Query/Sync/FunctionCall sent: each earns one ReadyForQuery
        self.deadline: float | None = None       # wall-clock time the session must end (grant/token expiry)
        self.deadline_reason = ""
        self.timer = None                        # the one timer: next warning or the cut
        self.warned: set[float] = set()
        self.pending_notices: list[bytes] = []   # injected only between server messages
        self.end_reason = "client closed"
        self.session_id = new_session_id(self.started_at)
        self.grant_recorded = False              # the grant store holds this session's start
        self.recorder = None                     # proxy.audit SessionRecorder when [audit] is configured
        self.tracker: track.StatementTracker | None = None   # pairs statements with their outcome, for the recorder
        self.cut_lag: float | None = None        # ms from the deadline to the cut, when cut at a deadline
        self.live = False                        # counted in the sessions_active metric
        self.query_walk = None                   # gate.query_walk_context for the compiled client walk

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        self.loopback = _is_loopback(peer)
        self.log = log.bind(peer=self.peer)
        self.startup_timer = self.loop.call_later(self.cfg.startup_timeout, self._on_startup_timeout)
        self.server.sessions.add(self)

    def data_received(self, data: bytes) -> None:
        if self.phase == CLOSED:
            return
        try:
            if self.tls is None and not self._seen_first_byte and data:
                self._seen_first_byte = True
                if data[0] == c.TLS_HANDSHAKE_BYTE:
                    self._start_tls(direct=True)
            if self.tls is not None:
                try:
                    data, out = self.tls.receive(data)
                except ssl.SSLError as e:
                    self.log.info("tls_failed", reason=str(e))
                    self._abort()
                    return
                if out:
                    self.transport.write(out)
                if not data:
                    return
            self.scanner.feed(data)
            if self.server.timing and self.phase == RELAY:
                t0 = time.perf_counter()
                self._process()
                metrics.relay_latency(time.perf_counter() - t0)
            else:
                self._process()
            self.scanner.compact()
        except _Stop:
            return
        except ProtocolError as e:
            self.log.warning("protocol_violation", reason=e.message, phase=self.phase)
            self.fatal(e.sqlstate, e.message if isinstance(e, ClientProtocolError)
                       else f"upstream protocol error: {e.message}")
        except Exception:
            self.log.exception("internal_error", phase=self.phase)
            self.fatal(c.SQLSTATE_INTERNAL_ERROR, "pgwarden internal error; the session was closed")

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        if self.phase != CLOSED and self.phase == RELAY:
            self.log.info("session_end", reason="client closed", duration=round(time.time() - self.started_at, 3))
        self._teardown()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading the server so nothing piles up here.
        if self.up_transport is not None and not self.up_reading_paused:
            self.up_reading_paused = True
            self.up_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up_transport is not None and self.up_reading_paused:
            self.up_reading_paused = False
            self.up_transport.resume_reading()

    # called by UpstreamProtocol
    def pause_client_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_client_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ phases

    def _process(self) -> None:
        scanner = self.scanner
        while self.phase == STARTUP:
            frame = scanner.next_startup_packet()
            if frame is NEED_DATA:
                return
            pkt = decode.decode_startup(scanner.buf, *frame)
            self._on_client_startup_packet(pkt)
        if self.phase == AUTH:
            frame = scanner.next_frame()
            if frame is NEED_DATA:
                return
            mtype, start, end = frame
            if mtype != c.PqMsg_PasswordMessage:
                raise ClientProtocolError(f"expected a password message, got message type {chr(mtype)!r}")
            self._on_client_password(decode.decode_password(scanner.buf, start, end))
        if self.phase == CONNECTING:
            if scanner.buffered > HOLD_LIMIT:
                self.pause_client_reading()
            return
        if self.phase == RELAY:
            if self.waiting is not None:
                if scanner.buffered > HOLD_LIMIT:
                    self.pause_client_reading()
                return
            self._relay()

    def _on_client_startup_packet(self, pkt: decode.StartupPacket) -> None:
        if pkt.code == c.SSL_REQUEST_CODE:
            if self.tls is not None:
                raise ClientProtocolError("SSLRequest received inside TLS")
            if self.server.tls_context is None:
                self.transport.write(encode.SSL_REFUSE)
                return
            if self.scanner.buffered:
                # Bytes sent before the handshake could have been injected by a man in the
                # middle and would be read as if they had been encrypted (CVE-2021-23214).
                raise ClientProtocolError("received unencrypted data after SSL request")
            self.transport.write(encode.SSL_ACCEPT)
            self._start_tls(direct=False)
            return
        if pkt.code == c.GSSENC_REQUEST_CODE:
            self.transport.write(encode.SSL_REFUSE)        # 'N': GSSAPI encryption not offered
            return
        if pkt.code == c.CANCEL_REQUEST_CODE:
            self._on_client_cancel(pkt.cancel_pid, pkt.cancel_key)
            return
        self._on_client_startup(pkt)

    def _start_tls(self, *, direct: bool) -> None:
        if self.server.tls_context is None:
            self.log.info("tls_refused", reason="direct TLS attempted but TLS is not configured")
            self._abort()
            raise _Stop
        self.tls = MemoryTLS(self.server.tls_context, direct=direct)

    def _on_client_cancel(self, pid: int, key: int) -> None:
        # Accepted without TLS even where sessions require it, as PostgreSQL does:
        # the key is the secret. A wrong key is dropped silently.
        target = self.server.cancel_keys.get((pid, key))
        self._close()
        if target is not None:
            target.cancel_upstream()
        elif self.server.peers is not None:      # another worker may hold the session
            self.server.track(self.loop.create_task(self.server.peers.broadcast(pid, key)))

    def _on_client_startup(self, pkt: decode.StartupPacket) -> None:
        if not self._tls_ok():
            self.fatal(c.SQLSTATE_INVALID_AUTHORIZATION,
                       f"pgwarden requires TLS for connections from {self.peer}: connect with sslmode=require")
            return
        self.params = pkt.params
        self.user = pkt.params.get("user")
        if not self.user:
            self.fatal(c.SQLSTATE_INVALID_AUTHORIZATION, "no user name in the startup packet")
            return
        self.database = pkt.params.get("database") or self.user
        unrecognized = [k for k in pkt.params if k.startswith("_pq_.")]
        if pkt.minor > 0 or unrecognized:
            self.transport_write(encode.negotiate_protocol_version(0, unrecognized))
        self.log = self.log.bind(user=self.user, database=self.database)
        self.phase = AUTH
        self.transport_write(encode.AUTH_CLEARTEXT)

    def _tls_ok(self) -> bool:
        if self.tls is not None:
            return True
        mode = self.cfg.require_tls
        return mode == "never" or (mode == "off-loopback" and self.loopback)

    def _on_client_password(self, token: str) -> None:
        try:
            claims = tokens.verify(token, self.server.public_keys, now=time.time(), audience=self.cfg.audience,
                                   user=self.user, database=self.database)
        except tokens.TokenError as e:
            self.log.info("auth_refused", check=e.check, reason=e.message)
            metrics.auth_failure(e.check)
            self.fatal(e.sqlstate, f"pgwarden: {e.message}")
            return
        scope = self.cfg.scopes.get(claims.scope)
        if scope is None:
            self.log.info("auth_refused", check="scope", scope=claims.scope)
            metrics.auth_failure("scope")
            self.fatal(c.SQLSTATE_INVALID_AUTHORIZATION,
                       f"pgwarden: scope {claims.scope!r} of grant {claims.jti} is not configured on this proxy")
            return
        updb = self.cfg.upstream.upstream_database(claims.db)
        if updb is None:
            self.fatal("3D000", f"pgwarden: database {claims.db!r} is not served by this proxy")
            return
        try:
            settings = filter_startup(self.params, self.cfg.catalog)
        except StartupRefused as e:
            self.log.info("auth_refused", check="startup_parameter", reason=str(e))
            metrics.auth_failure("startup_parameter")
            self.fatal(c.SQLSTATE_INSUFFICIENT_PRIVILEGE, f"pgwarden: {e}")
            return
        app = self.params.get("application_name", "")
        settings["application_name"] = _tag_app_name(app, claims.sub, claims.jti)
        if scope.read_only:
            settings["default_transaction_read_only"] = "on"
        self.claims, self.scope = claims, scope
        self.set_deadline(claims.exp, f"grant {claims.jti} expired at {tokens.format_ts(claims.exp)}")
        self.log = self.log.bind(session=self.session_id, grant=claims.jti, scope=claims.scope)
        self.phase = CONNECTING
        self.connect_task = self.loop.create_task(self._connect_upstream(updb, settings, app))

    async def _connect_upstream(self, updb: str, settings: dict[str, str], client_app: str) -> None:
        scope = self.scope
        watch = self.server.grants
        if watch is not None:
            claims = self.claims
            try:
                grant = await watch.admit(claims, time.time())
            except GrantRefused as e:
                self.log.info("auth_refused", check="grant", reason=str(e))
                metrics.auth_failure("grant")
                self.fatal(c.SQLSTATE_INVALID_AUTHORIZATION, f"pgwarden: {e}")
                return
            if self.phase == CLOSED:
                return
            self.set_deadline(grant.expires_at, f"grant {grant.id} expired at {tokens.format_ts(grant.expires_at)}")
        try:
            result = await asyncio.wait_for(
                open_and_login(self.cfg.upstream, database=updb, role=scope.role, password=scope.password,
                               settings=settings),
                self.cfg.connect_timeout)
        except asyncio.TimeoutError:
            self.log.warning("upstream_timeout", timeout=self.cfg.connect_timeout)
            self.fatal(c.SQLSTATE_CONNECTION_FAILURE,
                       f"pgwarden: upstream did not complete the login within {self.cfg.connect_timeout:g} s")
            return
        except UpstreamError as e:
            self.log.warning("upstream_login_failed", reason=e.message)
            self.fatal(e.sqlstate, f"pgwarden: {e.message}", detail=e.detail)
            return
        except (ProtocolError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as e:
            self.log.warning("upstream_login_failed", reason=str(e))
            self.fatal(c.SQLSTATE_CONNECTION_FAILURE, f"pgwarden: upstream login failed: {e}")
            return
        if self.phase == CLOSED:
            result.writer.transport.abort()
            return
        self._cancel_startup_timer()
        transport = result.writer.transport
        # Keep the StreamWriter alive: its __del__ closes the transport it wrapped.
        self.upstream = result
        proto = UpstreamProtocol(self)
        proto.transport = transport
        leftover = bytes(result.reader._buffer)      # anything the server sent after ReadyForQuery
        transport.set_protocol(proto)
        self.up_transport = transport
        self.up_pid, self.up_key = result.backend_pid, result.backend_key
        self.pid, self.key = self.server.new_cancel_key(self, result.backend_pid)
        if self.server.recorders is not None:
            # Before the client hears AuthenticationOk, and before anything it pipelined behind
            # its password is relayed: a session whose recording cannot start runs nothing.
            self._start_recording()
            if self.recorder.failed:
                self.end_reason = "recording_failed"
                self.fatal(c.SQLSTATE_ADMIN_SHUTDOWN,
                           f"pgwarden: the session recording could not be written ({self.recorder.error})")
                return
        out = [encode.AUTH_OK]
        for name, value in result.parameters:
            if name == "application_name":
                value = client_app            # the client sees its own name; pg_stat_activity sees the tag
            out.append(encode.parameter_status(name, value))
        out.append(encode.backend_key_data(self.pid, self.key))
        out.extend(result.notices)
        out.append(encode.READY_IDLE)
        self.transport_write(b"".join(out))
        self.query_walk = query_walk_context(self.server.gate, self.claims.scope)
        self.phase = RELAY
        self._arm_timer()
        self.log.info("session_start", upstream_pid=self.up_pid, tls=self.tls is not None,
                      upstream_tls=result.tls_version)
        if watch is not None:
            watch.session_started(self.claims.jti, self.session_id, self.claims.sub, self.started_at)
            self.grant_recorded = True
        metrics.session_started()
        self.live = True
        if leftover:
            self.on_server_data(leftover)
        self.resume_client_reading()
        self._resume_relay()

    # ------------------------------------------------------------------ relay

    def _resume_relay(self) -> None:
        """Relay what the client sent while the session waited (the upstream login, an off-loop
        verdict): outside data_received, so its failures are handled here the same way."""
        try:
            self._relay()
            self.scanner.compact()
        except ProtocolError as e:
            self.fatal(e.sqlstate, e.message)
        except Exception:
            self.log.exception("internal_error", phase=self.phase)
            self.fatal(c.SQLSTATE_INTERNAL_ERROR, "pgwarden internal error; the session was closed")

    def _relay(self) -> None:
        """Frame what the client sent, judge what policy must judge, forward in one write.

        Whole messages are forwarded as byte ranges of the receive buffer; a denied
        message is replaced in place by the Enforcer's substitute. When a statement
        needs classifying off the event loop, the frame is left unread, everything
        before it is sent, and _relay runs again once the verdict is in.
        """
        scanner = self.scanner
        buf = scanner.buf
        first = scanner.pos
        pieces: list = []
        terminate = False
        gate = self.server.gate
        enforcer = self.enforcer
        tracker = self.tracker
        walk = framing.walk_client
        query_walk = self.query_walk
        max_size = scanner.max_message_size
        while self.waiting is None:
            # framing.walk_client (compiled) steps over the messages that need no policy decision --
            # Bind, Execute, Sync, CopyData, Describe, Flush, CopyDone, CopyFail -- and, given
            # query_walk, a Query or unnamed Parse whose verdict the judge has cached, allowed and
            # effect-free (see gate.query_walk_context), doing for each what the branches below
            # would, and stops before anything else (or malformed, or not whole), which they then
            # take. The walked bytes stay in the forwarded range. If a tracker method raises, it
            # propagates with scanner.pos and sync_points not advanced for that walk's messages
            # (the branches would have advanced both); nothing is forwarded either way, and
            # data_received fails the session.
            pos, syncs = walk(buf, scanner.pos, _WALK_STOP_BIND if enforcer.denied_statements else _WALK_STOP,
                              max_size, tracker, query_walk)
            scanner.pos = pos
            if syncs:
                self.sync_points += syncs
            frame = scanner.next_frame()
            if frame is NEED_DATA:
                break
            mtype, start, end = frame
            sub = None
            if mtype == c.PqMsg_Query or mtype == c.PqMsg_Parse:
                if mtype == c.PqMsg_Query:
                    name, text = None, decode.decode_query(buf, start, end)
                else:
                    p = decode.decode_parse(buf, start, end)
                    name, text = p.name, p.query
                verdict = gate.judge(text, self)
                if verdict is None:                      # classifying off the loop: resume later
                    scanner.pos = start - 5
                    self.waiting = text
                    break
                if verdict.allowed:
                    self.apply_effects(verdict)
                    if name is not None:
                        enforcer.allowed_parse(name)
                        if name:
                            # SQL EXECUTE and protocol Parse share one name space on the server.
                            self.sql_prepared[name] = verdict.statement_class
                else:
                    self.log.info("statement_denied", rule=verdict.rule, statement_class=verdict.statement_class,
                                  via="Query" if name is None else "Parse")
                    sub = enforcer.deny_query(verdict.message, verdict.sqlstate) if name is None \
                        else enforcer.deny_parse(name, verdict.message, verdict.sqlstate)
                metrics.statement(verdict.allowed, verdict.statement_class)
                if name is None:
                    self.sync_points += 1
                if tracker is not None:
                    if name is None:
                        tracker.query(text, verdict)
                    else:
                        tracker.parse(name, text, verdict, p.param_types)
            elif mtype == c.PqMsg_Bind:
                if tracker is not None:
                    portal, statement, params = decode.decode_bind(buf, start, end)
                    tracker.bind(portal, statement, params)
                if enforcer.denied_statements:
                    sub = enforcer.check_bind(decode.decode_bind_statement(buf, start, end))
            elif mtype == c.PqMsg_Execute:
                if tracker is not None:
                    tracker.execute(decode.decode_execute(buf, start, end))
            elif mtype == c.PqMsg_Sync:
                self.sync_points += 1
                if tracker is not None:
                    tracker.sync()
            elif mtype == c.PqMsg_CopyData:
                if tracker is not None:
                    tracker.copy_data(end - start)
            elif mtype == c.PqMsg_Close:
                kind, name = decode.decode_close(buf, start, end)
                if tracker is not None:
                    tracker.close(kind, name)
                if kind == "S":
                    enforcer.closed_statement(name)
                    self.sql_prepared.pop(name, None)
            elif mtype == c.PqMsg_FunctionCall:
                self.sync_points += 1
                if tracker is not None:
                    tracker.function_call(None)
                if gate.deny_function_call(self):
                    self.log.info("statement_denied", rule="admin.function_call", via="FunctionCall")
                    sub = enforcer.deny_function_call(
                        "pgwarden: the fast-path FunctionCall message is admin class and never allowed "
                        "[rule admin.function_call]")
            elif mtype == c.PqMsg_Terminate:
                terminate = True
            elif mtype not in c.FRONTEND_TYPES:
                raise ClientProtocolError(f"unknown message type {chr(mtype)!r} from client")
            if sub is not None:
                pieces.append(buf[first:start - 5])
                pieces.append(sub)
                first = end
            if terminate:
                break
        last = scanner.pos
        if last > first:
            pieces.append(buf[first:last])
        if pieces:
            self.up_transport.write(b"".join(pieces))
        if terminate:
            self.closing = True

    # ------------------------------------------------------------------ recording

    def _start_recording(self) -> None:
        claims = self.claims
        acfg = self.cfg.audit
        self.recorder = rec = self.server.recorders.open(grant=claims.jti, session_id=self.session_id,
                                                         on_failure=self._on_recording_failed)
        rec.start(client_addr=self.peer, tls=self.tls.obj.version() if self.tls is not None else None,
                  user=self.user, database=self.database, grant=claims.jti, scope=claims.scope,
                  reason=claims.reason, ticket=claims.ticket, approver=claims.approver,
                  backend_pid=self.up_pid, upstream_role=self.scope.role)
        # The tracker hands each finished statement straight to the recorder (no method of ours in
        # between): the compiled sink when built (audit_writer.statement_sink, None forces the Python path),
        # else _write_statement; both and the class are looked up here so tests can swap in the references.
        sink = audit_writer.statement_sink
        emit = partial(_write_statement, rec) if sink is None else partial(sink, _write_statement, rec)
        self.tracker = track.StatementTracker(emit, capture_params=acfg.capture_params,
                                              copy_out_bytes=self._copy_out_bytes, capture_rows=acfg.capture_rows,
                                              watch_rows=self._watch_rows)
        self.stream.on_message = self.tracker.on_server

    def _copy_out_bytes(self) -> int:
        return self.stream.copy_bytes

    def _watch_rows(self, on: bool) -> None:
        self.stream.watch_rows = on

    def _on_recording_failed(self, error: str) -> None:
        """The recording cannot be written: fail closed, the session does not go on unrecorded."""
        metrics.recording_failed()
        message = f"the session recording could not be written ({error})"
        self.loop.call_soon(lambda: self.cut(message, reason="recording_failed"))

    def _end_recording(self) -> None:
        rec, tracker = self.recorder, self.tracker
        self.recorder = self.tracker = None
        if tracker is not None:
            self.stream.on_message = None
            for st in tracker.pending():          # sent, never answered: recorded as interrupted
                _write_statement(rec, st)
        extra = {"lag_ms": self.cut_lag} if self.cut_lag is not None else {}
        rec.end(self.end_reason, **extra)

    def apply_effects(self, verdict) -> None:
        """SQL-level PREPARE/DEALLOCATE: EXECUTE is judged as what its PREPARE was."""
        for name in verdict.deallocates:
            if name == "*":
                self.sql_prepared.clear()
            else:
                self.sql_prepared.pop(name, None)
        for name, cls in verdict.prepares:
            self.sql_prepared[name] = cls

    def on_verdict(self, text: str) -> None:
        """The gate classified `text` off the loop (now in its cache): carry on relaying."""
        if self.phase != RELAY or self.waiting != text:
            return
        self.waiting = None
        self._resume_relay()
        if self.waiting is None:
            self.resume_client_reading()

    def on_server_data(self, data: bytes) -> None:
        if self.phase == CLOSED:
            return
        rec = self.recorder
        try:
            if rec is None:
                data = self.stream.feed(data)
            else:
                # The records of the statements this chunk ends go in one write, before it is forwarded.
                rec.hold()
                try:
                    data = self.stream.feed(data)
                finally:
                    audit_writer.release(rec)
        except ProtocolError as e:
            self.log.warning("upstream_protocol_violation", reason=e.message)
            self.fatal(e.sqlstate, f"pgwarden: upstream protocol error: {e.message}")
            return
        if data:
            self.transport_write(data)
        if self.pending_notices and self.stream.at_boundary:
            self.transport_write(b"".join(self.pending_notices))
            self.pending_notices.clear()

    def on_upstream_lost(self, exc) -> None:
        if self.phase == CLOSED:
            return
        if self.closing:
            self.log.info("session_end", reason="client terminated",
                          duration=round(time.time() - self.started_at, 3))
            self._close()
            return
        self.log.warning("upstream_lost", reason=str(exc) if exc else "closed by server")
        self.fatal(c.SQLSTATE_CONNECTION_FAILURE, "pgwarden: the upstream server closed the connection")

    def cancel_upstream(self) -> None:
        if self.up_pid and self.phase == RELAY:
            task = self.loop.create_task(send_cancel(self.cfg.upstream, self.up_pid, self.up_key))
            self.server.track(task)
            self.log.info("cancel_forwarded", upstream_pid=self.up_pid)

    # ------------------------------------------------------------------ egress and teardown

    def transport_write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.tls is not None:
            data = self.tls.send(data)
        self.transport.write(data)

    def fatal(self, sqlstate: str, message: str, *, detail: str | None = None) -> None:
        if self.phase == CLOSED:
            return
        self.transport_write(encode.fatal(sqlstate, message, detail=detail))
        self._close()

    def shutdown(self, message: str) -> None:
        self.cut(message, reason="shutdown")

    # ------------------------------------------------------------------ time

    def set_deadline(self, at: float, reason: str) -> None:
        """End the session at `at` (wall clock) unless it already ends sooner."""
        if self.deadline is None or at < self.deadline:
            self.deadline, self.deadline_reason = at, reason
            if self.phase == RELAY:
                self._arm_timer()

    def _arm_timer(self) -> None:
        """One timer per session, set to the next due event: a warning NOTICE or the cut."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline is None or self.phase != RELAY:
            return
        now = time.time()
        due = self.deadline
        for before in self.cfg.expiry_warnings:
            at = self.deadline - before
            if before not in self.warned and at > now:
                due = min(due, at)
        self.timer = self.loop.call_later(max(0.0, due - now), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.phase != RELAY or self.deadline is None:
            return
        now = time.time()
        if now >= self.deadline - 0.0005:
            self.cut(self.deadline_reason, reason="expired", deadline=self.deadline)
            return
        for before in self.cfg.expiry_warnings:
            if before not in self.warned and now >= self.deadline - before - 0.0005:
                self.warned.add(before)
                left = self.deadline - now
                self.notify_client(
                    f"pgwarden: grant {self.claims.jti} expires at {tokens.format_ts(self.deadline)} "
                    f"(in {_human(left)}); the session will be closed then",
                    hint="request a new grant to keep working")
        self._arm_timer()

    def notify_client(self, message: str, *, hint: str | None = None) -> None:
        """A WARNING notice, sent between server messages (never inside one)."""
        notice = encode.notice(message, hint=hint)
        if self.stream.at_boundary:
            self.transport_write(notice)
        else:
            self.pending_notices.append(notice)
        self.log.info("expiry_warning", message=message)
        if self.recorder is not None:
            self.recorder.notice("expiry_warning", message)

    def cut(self, message: str, *, reason: str, deadline: float | None = None,
            sqlstate: str = c.SQLSTATE_ADMIN_SHUTDOWN) -> None:
        """End the session now: cancel what runs upstream, drop the upstream connection (its
        open transaction rolls back), tell the client why, and record the lag."""
        if self.phase == CLOSED:
            return
        if self.phase != RELAY:
            self.fatal(sqlstate, f"pgwarden: {message}")
            return
        lag = None if deadline is None else round((time.time() - deadline) * 1000, 2)
        if self.busy:
            self.cancel_upstream()           # stop the statement in flight, not just the socket
        up = self.up_transport
        if up is not None:
            self.up_transport = None
            try:
                up.write(encode.TERMINATE)
            except Exception:
                pass
            up.abort()                       # no waiting: the backend sees EOF and rolls back
        self.end_reason = reason
        self.cut_lag = lag
        metrics.cut(reason)
        self.log.info("session_cut", reason=reason, message=message, lag_ms=lag,
                      busy=self.busy, duration=round(time.time() - self.started_at, 3))
        self.server.record_cut(reason, lag)
        client = self.transport
        if client is not None and not client.is_closing():
            if self.stream.at_boundary and client.get_write_buffer_size() < 65536:
                self.transport_write(encode.fatal(sqlstate, f"pgwarden: {message}"))
                self._close()
                return
            # Mid-message (a FATAL now would corrupt the stream) or a client that is not
            # reading: drop the connection rather than wait, with a reset (SO_LINGER 0) so
            # the kernel does not keep delivering what was queued for the ended session.
            sock = client.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self._abort()
            return
        self._teardown()

    def _on_startup_timeout(self) -> None:
        if self.phase in (STARTUP, AUTH, CONNECTING):
            self.log.info("startup_timeout", phase=self.phase)
            self.fatal(c.SQLSTATE_CONNECTION_FAILURE,
                       f"pgwarden: startup not completed within {self.cfg.startup_timeout:g} s")

    def _cancel_startup_timer(self) -> None:
        if self.startup_timer is not None:
            self.startup_timer.cancel()
            self.startup_timer = None

    def _close(self) -> None:
        self.phase = CLOSED
        if self.transport is not None:
            if self.tls is not None and self.tls.handshake_done and not self.transport.is_closing():
                # close_notify: without it libpq reports "unexpected eof" (its TLS cancel
                # connection treats a bare close as an error).
                self.transport.write(self.tls.close())
            self.transport.close()
        self._teardown()

    def _abort(self) -> None:
        self.phase = CLOSED
        if self.transport is not None:
            self.transport.abort()
        self._teardown()

    @property
    def idle(self) -> bool:
        """Nothing running and no transaction open: safe to close without losing work."""
        return self.phase != RELAY or (not self.busy and self.stream.txn_status == b"I" and not self.waiting)

    @property
    def busy(self) -> bool:
        """The server owes ReadyForQuery for something sent: a statement may be running."""
        return self.sync_points > self.stream.ready_count

    def _teardown(self) -> None:
        if self.phase == RELAY and self.up_transport is not None and not self.closing and self.busy:
            # The client is gone mid-statement. Closing the socket alone does not stop a
            # backend that is busy (pg_sleep, a long scan): it notices only when it next
            # writes. Cancel first, as a client's Ctrl-C would.
            self.cancel_upstream()
        self.phase = CLOSED
        self._cancel_startup_timer()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        if self.up_transport is not None:
            if not self.up_transport.is_closing():
                try:
                    self.up_transport.write(encode.TERMINATE)
                except Exception:
                    pass
                self.up_transport.close()
            self.up_transport = None
        if self.recorder is not None:
            self._end_recording()
        if self.live:
            self.live = False
            metrics.session_ended()
        if self.grant_recorded:
            self.grant_recorded = False
            self.server.grants.session_ended(self.claims.jti, self.session_id, self.claims.sub, self.started_at,
                                             time.time(), self.end_reason)
        self.server.forget(self)


class _Stop(Exception):
    pass


def _write_statement(rec, st: Statement) -> None:
    """Record one finished (or never answered) statement: the tracker's emit, bound to the recorder."""
    v = st.verdict
    message = st.message
    if v is not None:
        denied = not v.allowed
    else:                                   # not judged here (FunctionCall): pgwarden's own error says
        denied = st.sqlstate == "42501" and (message or "").startswith("pgwarden:")
    ended = st.ended
    if st.skipped:
        message = "not executed: an earlier message of the same pipeline failed"
    elif ended is None:
        message = message or "interrupted: the session ended before the server answered"
    if ended is None:
        ended = time.time()
    rows = st.rows
    if st.copy_direction is not None:
        rec.copy(st.copy_direction, st.copy_bytes, rows)
    rec.statement(st.text, params=st.params, statement_class=v.statement_class if v else "admin",
                  decision="denied" if denied else "allowed", rule=v.rule if v else None,
                  started=st.started, duration=ended - st.started, tag=st.tag, rows=rows,
                  sqlstate=st.sqlstate, message=message, via=st.via, rows_sample=st.sample)


def _human(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds % 60 else "")
    return f"{seconds} s"


def _is_loopback(peer) -> bool:
    if not isinstance(peer, tuple):
        return True                      # unix socket
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


def _tag_app_name(app: str, sub: str, grant: str) -> str:
    tag = f"pgwarden:{sub}:{grant[:16]}"
    name = f"{app} ({tag})" if app else tag
    raw = name.encode()
    if len(raw) <= APP_NAME_MAX:
        return name
    keep = APP_NAME_MAX - len(tag.encode()) - 3
    return raw[:max(keep, 0)].decode("utf-8", "ignore") + f" ({tag})"

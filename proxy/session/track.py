"""Follow statements from the client's messages to the server's answers, for the recording.

Sans-I/O. The relay tells the tracker what the client sent (Query, Parse,
Bind, Execute, Sync, FunctionCall, CopyData) and the server stream hands it
the messages that end or describe a statement (CommandComplete,
EmptyQueryResponse, PortalSuspended, ErrorResponse, Copy*Response,
ReadyForQuery). The tracker pairs them and calls ``emit(statement)`` once per
statement with its outcome:

* Simple Query: one statement per Query message (its text may hold several
  SQL statements; their command tags are all kept), emitted at its
  ReadyForQuery.
* Extended protocol: one statement per Execute, with the text its portal's
  prepared statement was parsed from and the Bind parameters, emitted when
  the server answers the Execute. The server answers requests in order, and
  after an error skips everything up to Sync: the error belongs to the
  first unanswered Execute of that Sync group (a failed Parse or Bind means
  its Execute failed), the later ones are emitted as skipped. An error in a
  group with no Execute (a Parse that fails alone) is emitted with the text
  of that group's last Parse.
* FunctionCall: one statement, emitted at its ReadyForQuery.

A row count comes from the command tag. DataRows are seen only when the
first rows of each statement are captured (``capture_rows``), and only
until the statement has them (``watch_rows`` tells the server stream).

The tracker runs once or more per statement on the relay's hot path, so it
is compiled: the optional C extension ``proxy.session._track`` (built by
``pip install -e .`` when a C compiler is present) has the same two classes
with the same API and behaviour, down to the order of the calls made to
``clock``, ``emit``, ``watch_rows`` and ``copy_out_bytes``.
``StatementTrackerPy`` and ``StatementPy`` below are the reference, and the
fallback: ``StatementTracker`` / ``Statement`` are the C classes when the
extension was built and passes a self-test on import (a fixed session run
through both, compared), else these. ``TRACKER_IMPL`` says which ("c" or
"python"). The C classes call this module's ``render_params`` (binary or
long parameters), ``_data_row``, ``_error_fields`` and ``StatementPy.rows``
(tags that are not ASCII) for what they leave to Python.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from ..wire.constants import (PqMsg_CommandComplete, PqMsg_CopyBothResponse, PqMsg_CopyInResponse,
                              PqMsg_CopyOutResponse, PqMsg_DataRow, PqMsg_EmptyQueryResponse, PqMsg_ErrorResponse,
                              PqMsg_PortalSuspended, PqMsg_ReadyForQuery)

__all__ = ["Statement", "StatementTracker", "StatementPy", "StatementTrackerPy", "StatementC", "StatementTrackerC",
           "TRACKER_IMPL", "render_params", "MAX_PARAM_CHARS"]

MAX_PARAM_CHARS = 1024          # a recorded parameter longer than this is cut, and says so


class StatementPy:
    """One statement and what became of it (the reference; ``Statement`` is the class in use)."""

    __slots__ = ("text", "via", "started", "ended", "params", "verdict", "tags", "sqlstate", "message",
                 "copy_direction", "copy_bytes", "skipped", "sample")

    def __init__(self, text: str, via: str, started: float, verdict=None, params=None) -> None:
        self.text = text
        self.via = via                       # "query" | "execute" | "function_call" | "parse"
        self.started = started
        self.ended: float | None = None
        self.params = params                 # list of str | None (rendered), or None when not captured
        self.verdict = verdict               # proxy.session.enforce.Verdict, or None when not judged here
        self.tags: list[str] = []
        self.sqlstate: str | None = None
        self.message: str | None = None
        self.copy_direction: str | None = None
        self.copy_bytes = 0
        self.skipped = False                 # never ran: an earlier error in its Sync group
        self.sample: list[list[str | None]] | None = None   # first result rows, when captured

    @property
    def rows(self) -> int | None:
        """Rows the command tags report (SELECT n, INSERT 0 n, COPY n, ...), summed; None if none do."""
        total = None
        for tag in self.tags:
            word, _, rest = tag.rpartition(" ")
            if word and rest.isdigit():
                total = (total or 0) + int(rest)
        return total

    @property
    def tag(self) -> str | None:
        return ";".join(self.tags) if self.tags else None


class _Group:
    """What the client sent up to one sync point (Query, Sync, FunctionCall)."""

    __slots__ = ("items", "next", "failed", "last_parse", "synced")

    def __init__(self) -> None:
        self.items: list[StatementPy] = []
        self.next = 0                        # the first item the server has not answered
        self.failed = False
        self.last_parse: tuple[str, Any] | None = None
        self.synced = False


class StatementTrackerPy:
    """The reference tracker (``StatementTracker`` is the class in use): see the module docstring."""

    __slots__ = ("emit", "clock", "capture_params", "groups", "statements", "portals", "copy_in", "copy_out_of",
                 "copying", "capture_rows", "watch_rows")

    def __init__(self, emit: Callable[[StatementPy], None], *, capture_params: bool = True,
                 copy_out_bytes: Callable[[], int] | None = None, clock: Callable[[], float] = time.time,
                 capture_rows: int = 0, watch_rows: Callable[[bool], None] | None = None) -> None:
        """capture_rows: keep the first N DataRows of each statement; watch_rows(on) asks the
        server stream to show DataRows (on until the statement has its N rows)."""
        self.emit = emit
        self.clock = clock
        self.capture_params = capture_params
        self.groups: deque[_Group] = deque([_Group()])
        self.statements: dict[str, tuple[str, Any, tuple]] = {}   # name -> (text, verdict, param type oids)
        self.portals: dict[str, tuple[str, Any, Any]] = {}  # portal -> (text, verdict, params)
        self.copy_in = 0                     # CopyData bytes from the client during COPY FROM STDIN
        self.copy_out_of = copy_out_bytes or (lambda: 0)
        self.copying: tuple[StatementPy, int] | None = None  # the statement in COPY, server bytes at its start
        self.capture_rows = capture_rows
        self.watch_rows = watch_rows if capture_rows > 0 else None
        if self.watch_rows is not None:
            self.watch_rows(True)

    # ------------------------------------------------------------------ client side

    def query(self, text: str, verdict) -> None:
        group = self.groups[-1]
        group.items.append(StatementPy(text, "query", self.clock(), verdict))
        self._sync()

    def function_call(self, verdict) -> None:
        group = self.groups[-1]
        group.items.append(StatementPy("<FunctionCall message>", "function_call", self.clock(), verdict))
        self._sync()

    def parse(self, name: str, text: str, verdict, param_types: tuple[int, ...] = ()) -> None:
        self.statements[name] = (text, verdict, param_types)
        self.groups[-1].last_parse = (text, verdict)

    def bind(self, portal: str, statement: str, params: list | None) -> None:
        found = self.statements.get(statement)
        text, verdict, types = found if found is not None else (
            "<unknown prepared statement %r>" % statement, None, ())
        self.portals[portal] = (text, verdict, render_params(params, types) if self.capture_params else None)

    def execute(self, portal: str) -> None:
        found = self.portals.get(portal)
        text, verdict, params = found if found is not None else ("<unknown portal %r>" % portal, None, None)
        self.groups[-1].items.append(StatementPy(text, "execute", self.clock(), verdict, params))

    def close(self, kind: str, name: str) -> None:
        (self.statements if kind == "S" else self.portals).pop(name, None)

    def copy_data(self, nbytes: int) -> None:
        self.copy_in += nbytes

    def _sync(self) -> None:
        self.groups[-1].synced = True
        self.groups.append(_Group())

    sync = _sync

    # ------------------------------------------------------------------ server side

    def on_server(self, mtype: int, body: bytes) -> None:
        group = self.groups[0]
        if mtype == PqMsg_DataRow:
            st = self._current(group)
            if st is not None and self.capture_rows:
                if st.sample is None:
                    st.sample = []
                if len(st.sample) < self.capture_rows:
                    st.sample.append(_data_row(body))
                if len(st.sample) >= self.capture_rows and self.watch_rows is not None:
                    self.watch_rows(False)           # the rest of this result goes by in bulk
            return
        if self.watch_rows is not None:
            self.watch_rows(True)                    # the next statement's rows are wanted again
        if mtype == PqMsg_ReadyForQuery:
            self._ready(group)
            return
        now = self.clock()
        if mtype == PqMsg_CommandComplete or mtype == PqMsg_EmptyQueryResponse or mtype == PqMsg_PortalSuspended:
            if group.next >= len(group.items):
                return
            st = group.items[group.next]
            if mtype == PqMsg_CommandComplete:
                st.tags.append(body.rstrip(b"\x00").decode("utf-8", "replace"))
            elif mtype == PqMsg_PortalSuspended:
                st.tags.append("(suspended)")
            if self.copying is not None:
                self._end_copy(st)
            if st.via == "execute":
                st.ended = now
                group.next += 1
                self.emit(st)
        elif mtype == PqMsg_ErrorResponse:
            st = self._current(group)
            if st is None:
                if group.last_parse is None and not group.synced:
                    return                   # an error outside any request (e.g. a FATAL): the end says it
                text, verdict = group.last_parse or ("<no statement>", None)
                st = StatementPy(text, "parse", now, verdict)
                group.items.append(st)
                group.next = len(group.items) - 1
            fields = _error_fields(body)
            st.sqlstate, st.message = fields.get("C"), fields.get("M")
            self._end_copy(st)
            if st.via == "execute" or st.via == "parse":
                st.ended = now
                group.next += 1
                group.failed = True
                self.emit(st)
            # a Query: the rest of its text is abandoned, the statement ends at ReadyForQuery
        elif mtype in (PqMsg_CopyInResponse, PqMsg_CopyOutResponse, PqMsg_CopyBothResponse):
            st = self._current(group)
            if st is not None:
                st.copy_direction = {PqMsg_CopyInResponse: "in", PqMsg_CopyOutResponse: "out"}.get(mtype, "both")
                self.copy_in = 0
                self.copying = (st, self.copy_out_of())

    def _current(self, group: _Group) -> StatementPy | None:
        if group.next < len(group.items):
            return group.items[group.next]
        return None

    def _end_copy(self, st: StatementPy) -> None:
        if self.copying is not None and self.copying[0] is st:
            st.copy_bytes += self.copy_in if st.copy_direction == "in" else self.copy_out_of() - self.copying[1]
            self.copying = None
            self.copy_in = 0

    def _ready(self, group: _Group) -> None:
        if group.next < len(group.items):
            now = self.clock()
            for st in group.items[group.next:]:
                st.ended = now
                if st.via == "execute" or st.via == "parse":
                    st.skipped = True        # the server skipped it after an earlier error
                self.emit(st)
        if len(self.groups) > 1:
            self.groups.popleft()
        else:                                # a ReadyForQuery nobody asked for: start afresh
            self.groups[0] = _Group()

    def pending(self) -> list[StatementPy]:
        """Statements sent and not yet answered (a session cut mid-statement)."""
        return [st for g in self.groups for st in g.items[g.next:]]


def _data_row(body: bytes) -> list[str | None]:
    """A DataRow's values: text when they decode as UTF-8, else \\x-hex; NULL as None; long ones cut."""
    (count,) = struct.unpack_from("!h", body, 0)
    pos, out = 2, []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if size < 0:
            out.append(None)
            continue
        value = body[pos:pos + size]
        pos += size
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = "\\x" + value.hex()
        if len(text) > MAX_PARAM_CHARS:
            text = text[:MAX_PARAM_CHARS] + f"... ({size} bytes)"
        out.append(text)
    return out


def _error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


_BINARY = {                     # type oid -> decoder of the binary format (what drivers send most)
    16: lambda b: "true" if b == b"\x01" else "false",                       # bool
    20: lambda b: str(int.from_bytes(b, "big", signed=True)),                 # int8
    21: lambda b: str(int.from_bytes(b, "big", signed=True)),                 # int2
    23: lambda b: str(int.from_bytes(b, "big", signed=True)),                 # int4
    26: lambda b: str(int.from_bytes(b, "big", signed=False)),                # oid
    700: lambda b: repr(struct.unpack("!f", b)[0]),                           # float4
    701: lambda b: repr(struct.unpack("!d", b)[0]),                           # float8
    25: lambda b: b.decode("utf-8", "replace"),                               # text
    1043: lambda b: b.decode("utf-8", "replace"),                             # varchar
    19: lambda b: b.decode("utf-8", "replace"),                               # name
    2950: lambda b: str(uuid.UUID(bytes=b)),                                  # uuid
}


def render_params(params: list | None, types: tuple[int, ...] = ()) -> list | None:
    """Bind parameters for the record: text as text, NULL as None, binary decoded when Parse
    declared a common type (int, float, bool, text, uuid), else \\x-hex; long ones cut."""
    if params is None:
        return None
    out: list[Any] = []
    for i, (value, binary) in enumerate(params):
        if value is None:
            out.append(None)
            continue
        if binary:
            decoder = _BINARY.get(types[i]) if i < len(types) else None
            try:
                text = decoder(value) if decoder is not None else "\\x" + value.hex()
            except (ValueError, struct.error):
                text = "\\x" + value.hex()
        else:
            text = value.decode("utf-8", "replace")
        if len(text) > MAX_PARAM_CHARS:
            text = text[:MAX_PARAM_CHARS] + f"... ({len(value)} bytes)"
        out.append(text)
    return out


# ------------------------------------------------------------------ the compiled tracker

STATEMENT_ATTRS = ("text", "via", "started", "ended", "params", "verdict", "tags", "sqlstate", "message",
                   "copy_direction", "copy_bytes", "skipped", "sample", "rows", "tag")


def _freeze(value: Any) -> Any:
    """Lists as tuples, all the way down: a value that later appends cannot change."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _snapshot(st: Any) -> tuple:
    """Every attribute of a statement (``rows`` and ``tag`` included), as it is now."""
    return tuple(_freeze(getattr(st, a)) for a in STATEMENT_ATTRS)


def _self_test_log(tracker_cls: Any) -> list:
    """A fixed session through ``tracker_cls``: every callback call and emitted statement, in order."""
    log: list = []
    now = [1000.0]
    server = [0]

    def clock() -> float:
        now[0] += 0.25
        log.append(("clock", now[0]))
        return now[0]

    def copy_out() -> int:
        log.append(("copy_out", server[0]))
        return server[0]

    def emit(st: Any) -> None:
        log.append(("emit", _snapshot(st)))

    def watch(on: bool) -> None:
        log.append(("watch", on))

    def err(*fields: bytes) -> bytes:
        return b"".join(f + b"\x00" for f in fields) + b"\x00"

    def row(*values: bytes | None) -> bytes:
        out = struct.pack("!h", len(values))
        for v in values:
            out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
        return out

    ok, no = ("allow", 1), ("deny", 2)
    t = tracker_cls(emit, clock=clock, copy_out_bytes=copy_out, capture_rows=2, watch_rows=watch)
    # a simple query, several statements, rows captured
    t.query("BEGIN; SELECT x FROM t", ok)
    t.on_server(PqMsg_CommandComplete, b"BEGIN\x00")
    for v in (b"1", b"\xff", None):
        t.on_server(PqMsg_DataRow, row(v, b"x" * 3))
    t.on_server(PqMsg_CommandComplete, b"SELECT 3\x00")
    t.on_server(PqMsg_ReadyForQuery, b"T")
    # an extended pipeline: an answer, an error, skipped statements, a FunctionCall after it
    t.parse("", "SELECT $1::int", ok, (23,))
    t.bind("", "", [(b"\x00\x00\x00\x07", True)])
    t.execute("")
    t.parse("s2", "SELECT 1/$1", no)
    t.bind("p", "s2", [(b"0", False), (None, False), (b"\xff\xfe", False), (b"y" * (MAX_PARAM_CHARS + 1), False)])
    t.execute("p")
    t.bind("", "nope", [])
    t.execute("")
    t.execute("gone")
    t.sync()
    t.function_call(None)
    t.close("S", "s2")
    t.close("P", "p")
    t.on_server(PqMsg_CommandComplete, b"SELECT 1\x00")
    t.on_server(PqMsg_ErrorResponse, err(b"SERROR", b"C22012", b"Mdivision by zero"))
    t.on_server(PqMsg_ReadyForQuery, b"E")
    t.on_server(PqMsg_ErrorResponse, err(b"C42501", b"Mpgwarden: no"))
    t.on_server(PqMsg_ReadyForQuery, b"I")
    # a Parse that fails alone; an error with no fields; an unsolicited ReadyForQuery
    t.parse("bad", "SELEC 1", no)
    t.sync()
    t.on_server(PqMsg_ErrorResponse, err(b"C42601", b"Msyntax error"))
    t.on_server(PqMsg_ReadyForQuery, b"I")
    t.on_server(PqMsg_ErrorResponse, err())
    t.on_server(PqMsg_ReadyForQuery, b"I")
    # COPY in and out, an empty query, a suspended portal
    t.query("COPY t FROM STDIN", ok)
    t.on_server(PqMsg_CopyInResponse, b"\x00\x00\x00")
    t.copy_data(10)
    t.copy_data(5)
    t.on_server(PqMsg_CommandComplete, b"COPY 2\x00")
    t.on_server(PqMsg_ReadyForQuery, b"I")
    t.query("COPY t TO STDOUT", ok)
    server[0] += 100
    t.on_server(PqMsg_CopyOutResponse, b"\x00\x00\x00")
    server[0] += 42
    t.on_server(PqMsg_CommandComplete, b"COPY 3\x00")
    t.on_server(PqMsg_ReadyForQuery, b"I")
    t.query("", ok)
    t.on_server(PqMsg_EmptyQueryResponse, b"")
    t.on_server(PqMsg_ReadyForQuery, b"I")
    t.parse("", "SELECT g FROM generate_series(1, 9) g", ok)
    t.bind("c", "", None)
    t.execute("c")
    t.sync()
    t.on_server(PqMsg_PortalSuspended, b"")
    t.on_server(PqMsg_ReadyForQuery, b"T")
    t.query("SELECT pg_sleep(60)", ok)
    log.append(("pending", [_snapshot(st) for st in t.pending()]))
    # no parameters captured; the default copy_out_bytes; tags that are not UTF-8 or not ASCII
    t = tracker_cls(emit, clock=clock, capture_params=False)
    t.parse("", "INSERT ...", ok)
    t.bind("", "", [(b"1", False)])
    t.execute("")
    t.sync()
    t.on_server(PqMsg_CommandComplete, b"INSERT 0 5\x00")
    t.on_server(PqMsg_ReadyForQuery, b"I")
    t.query("SELECT ...", ok)
    t.on_server(PqMsg_CopyBothResponse, b"\x00\x00\x00")
    t.on_server(PqMsg_CommandComplete, b"SELECT \xff 2\x00\x00")
    t.on_server(PqMsg_CommandComplete, "SELECT \u0663".encode() + b"\x00")
    t.on_server(PqMsg_ReadyForQuery, b"I")
    log.append(("pending", [_snapshot(st) for st in t.pending()]))
    return log


def _passes(tracker_cls: Any, statement_cls: Any) -> bool:
    """Does ``tracker_cls`` do exactly what ``StatementTrackerPy`` does in ``_self_test_log``?"""
    try:
        if _self_test_log(tracker_cls) != _self_test_log(StatementTrackerPy):
            return False
        made = [cls("SELECT 1", "query", 1.0, ("allow", 1), ["1"]) for cls in (statement_cls, StatementPy)]
        for st in made:
            st.tags += ["BEGIN", "INSERT 0 5"]
        return _snapshot(made[0]) == _snapshot(made[1])
    except Exception:  # noqa: BLE001 - any surprise: do not use it
        return False


try:
    from . import _track
except ImportError:        # built without a C compiler (or an older build): the reference
    _track = None

StatementTrackerC: Any = None
StatementC: Any = None
if _track is not None:
    _track._setup(render_params, _data_row, _error_fields, StatementPy.rows.fget, MAX_PARAM_CHARS)
    if _passes(_track.StatementTracker, _track.Statement):
        StatementTrackerC, StatementC = _track.StatementTracker, _track.Statement

#: The classes in use: the compiled ones when built and passing the self-test, else the reference.
StatementTracker: Any = StatementTrackerC if StatementTrackerC is not None else StatementTrackerPy
Statement: Any = StatementC if StatementC is not None else StatementPy
#: Which tracker is in use: "c" or "python".
TRACKER_IMPL = "c" if StatementTrackerC is not None else "python"

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

Nothing here is on the per-row path: DataRows are never seen, a row count
comes from the command tag.
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

__all__ = ["Statement", "StatementTracker", "render_params", "MAX_PARAM_CHARS"]

MAX_PARAM_CHARS = 1024          # a recorded parameter longer than this is cut, and says so


class Statement:
    """One statement and what became of it."""

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
        self.items: list[Statement] = []
        self.next = 0                        # the first item the server has not answered
        self.failed = False
        self.last_parse: tuple[str, Any] | None = None
        self.synced = False


class StatementTracker:
    __slots__ = ("emit", "clock", "capture_params", "groups", "statements", "portals", "copy_in", "copy_out_of",
                 "copying", "capture_rows", "watch_rows")

    def __init__(self, emit: Callable[[Statement], None], *, capture_params: bool = True,
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
        self.copying: tuple[Statement, int] | None = None  # the statement in COPY, server bytes at its start
        self.capture_rows = capture_rows
        self.watch_rows = watch_rows if capture_rows > 0 else None
        if self.watch_rows is not None:
            self.watch_rows(True)

    # ------------------------------------------------------------------ client side

    def query(self, text: str, verdict) -> None:
        group = self.groups[-1]
        group.items.append(Statement(text, "query", self.clock(), verdict))
        self._sync()

    def function_call(self, verdict) -> None:
        group = self.groups[-1]
        group.items.append(Statement("<FunctionCall message>", "function_call", self.clock(), verdict))
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
        self.groups[-1].items.append(Statement(text, "execute", self.clock(), verdict, params))

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
                st = Statement(text, "parse", now, verdict)
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

    def _current(self, group: _Group) -> Statement | None:
        if group.next < len(group.items):
            return group.items[group.next]
        return None

    def _end_copy(self, st: Statement) -> None:
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

    def pending(self) -> list[Statement]:
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

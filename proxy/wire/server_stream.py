"""Scan the server->client stream by message headers, forwarding bytes in bulk.

Sans-I/O. feed(chunk) returns the bytes to send to the client: the chunk
itself, untouched, unless an ErrorResponse was rewritten (PgBouncer's sbuf:
look at headers, forward ranges). It tracks what pgwarden needs:

- ReadyForQuery and its transaction status byte ('I', 'T', 'E'),
- ErrorResponses, which are held until whole when a rewrite hook is set, so
  that a denial substituted upstream can be turned into pgwarden's own 42501
  error before the client sees it,
- when a message hook is set (the session recording): the bodies of the
  few messages that end or describe a statement (WATCHED: CommandComplete,
  EmptyQueryResponse, PortalSuspended, ErrorResponse, CopyIn/Out/Both
  responses, ReadyForQuery), given to the hook once whole, and the bytes of
  CopyData. DataRows are not looked at (a row count comes from the
  CommandComplete tag) unless ``watch_rows`` is set: the recording's
  optional capture of a statement's first rows turns it on until it has
  them.

Only an ErrorResponse being held is ever copied; a watched message split
across chunks is forwarded at once and its body collected on the side.

Speed: a 10,000-row result is 10,000 DataRow headers, and walking them one
Python iteration each cost more than the rest of the relay.  The walk over
messages that need nothing (every type but ReadyForQuery, and ErrorResponse
/ WATCHED when a hook is set; CopyData only counted) is ``skip_messages``:
the compiled ``proxy.wire._scan.skip`` when the optional C extension was
built (``pip install -e .`` builds it when a C compiler is present), else
``skip_messages_py``, the reference.  ``SCANNER_IMPL`` says which ("c" or
"python"); both are run by the same tests.

With a message hook set, every CommandComplete and ReadyForQuery would still
stop that walk and cost a Python iteration of feed's loop body each (two per
pgbench transaction).  There feed uses ``walk_server`` instead: the compiled
``proxy.wire._scan.walk_server``, which steps over messages as skip does,
counts CopyData into ``copy_bytes`` and also delivers the whole watched
messages the loop body would simply hand to the hook (not an ErrorResponse
held for ``on_error``, not a DataRow, nothing oversized or split), doing for
each exactly what the body does, in its order: ``ready_count`` and
``txn_status`` for a ReadyForQuery, the hook call, ``_table`` read again.
It is handed feed's hook, which feed reads once per call: a hook replaced
or cleared during a call still gets that call's messages the table stops
at, on both paths.  Everything else it leaves to the loop body, which is the reference and the
fallback: ``walk_server`` is None when the extension was not built, and
tests set it to None to force the Python path.  ``DELIVER_IMPL`` says which
("c" or "python").  A hook's exception propagates out of feed alike on both
paths, with ``copy_bytes``, ``ready_count`` and ``txn_status`` updated up to
the message whose hook call raised.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .constants import (PqMsg_CommandComplete, PqMsg_CopyBothResponse, PqMsg_CopyData, PqMsg_CopyInResponse,
                        PqMsg_CopyOutResponse, PqMsg_DataRow, PqMsg_EmptyQueryResponse, PqMsg_ErrorResponse,
                        PqMsg_PortalSuspended, PqMsg_ReadyForQuery)
from .errors import ServerProtocolError

_HDR = struct.Struct("!Bi")
MAX_ERROR_SIZE = 1 << 20
WATCHED = frozenset((PqMsg_CommandComplete, PqMsg_EmptyQueryResponse, PqMsg_PortalSuspended, PqMsg_ErrorResponse,
                     PqMsg_CopyInResponse, PqMsg_CopyOutResponse, PqMsg_CopyBothResponse, PqMsg_ReadyForQuery))


def skip_messages_py(data, pos: int, stop: bytes, count_copy: bool) -> tuple[int, int]:
    """Step over whole messages from ``pos`` while none needs attention: the reference walk.

    Stops at the first message whose type has a non-zero byte in ``stop`` (256
    bytes), whose length is below 4, or that does not end inside ``data``, or
    where fewer than 5 bytes are left.  Returns ``(offset reached, CopyData
    payload bytes stepped over)``, the latter only when ``count_copy``.
    """
    n = len(data)
    copy = 0
    unpack = _HDR.unpack_from
    while n - pos >= 5:
        mtype, length = unpack(data, pos)
        if stop[mtype] or length < 4:
            break
        end = pos + 1 + length
        if end > n:
            break
        if count_copy and mtype == PqMsg_CopyData:
            copy += length - 4
        pos = end
    return pos, copy


def _stop_table(types) -> bytes:
    table = bytearray(256)
    for t in types:
        table[t] = 1
    return bytes(table)


# index: (on_error set) | (on_message set) << 1 | (watch_rows and on_message set) << 2
_STOP = (_stop_table({PqMsg_ReadyForQuery}),
         _stop_table({PqMsg_ReadyForQuery, PqMsg_ErrorResponse}),
         _stop_table(WATCHED),
         _stop_table(WATCHED | {PqMsg_ErrorResponse}),
         None, None,
         _stop_table(WATCHED | {PqMsg_DataRow}),
         _stop_table(WATCHED | {PqMsg_ErrorResponse, PqMsg_DataRow}))

try:
    from ._scan import skip as skip_messages_c
except ImportError:        # built without a C compiler: the reference walk
    skip_messages_c = None

#: The walk ``ServerStream.feed`` uses (looked up on every call, so tests can swap it).
skip_messages = skip_messages_c or skip_messages_py
SCANNER_IMPL = "c" if skip_messages_c is not None else "python"

try:
    from ._scan import walk_server as walk_server_c
except ImportError:        # not built (or an older build): feed's loop body delivers every message
    walk_server_c = None

#: With a message hook, what ``ServerStream.feed`` walks with in place of skip_messages (looked up on
#: every call; None: skip_messages and the loop body, the reference):
#: ``walk_server(stream, data, pos, stop, hook) -> pos``.
walk_server = walk_server_c
DELIVER_IMPL = "c" if walk_server_c is not None else "python"


class ServerStream:
    __slots__ = ("remaining", "header", "cur_type", "held", "txn_status", "_on_error", "ready_count",
                 "_on_message", "side", "copy_bytes", "_watch_rows", "_table")

    def __init__(self, on_error: Callable[[bytes], bytes | None] | None = None,
                 on_message: Callable[[int, bytes], None] | None = None) -> None:
        self.remaining = 0              # bytes of the current message body not yet seen
        self.header = b""               # a header split across chunks
        self.cur_type = 0               # type of the message whose body is in progress
        self.held: bytearray | None = None   # an ErrorResponse being collected (whole message)
        self.txn_status = b"I"
        self._on_error = on_error       # ErrorResponse body -> replacement message, or None to keep
        self.ready_count = 0
        self._on_message = on_message   # (type, body) of each WATCHED message, once whole
        self.side: bytearray | None = None   # body of a watched message split across chunks
        self.copy_bytes = 0             # CopyData payload bytes seen (with on_message only)
        self._watch_rows = False        # with on_message: DataRows go to the hook too
        self._table = self._stop()      # the types skip_messages stops at; kept in step by the setters

    # The three settings that decide where the walk stops (a hook may change them mid-feed).
    @property
    def on_error(self) -> Callable[[bytes], bytes | None] | None:
        return self._on_error

    @on_error.setter
    def on_error(self, hook: Callable[[bytes], bytes | None] | None) -> None:
        self._on_error = hook
        self._table = self._stop()

    @property
    def on_message(self) -> Callable[[int, bytes], None] | None:
        return self._on_message

    @on_message.setter
    def on_message(self, hook: Callable[[int, bytes], None] | None) -> None:
        self._on_message = hook
        self._table = self._stop()

    @property
    def watch_rows(self) -> bool:
        return self._watch_rows

    @watch_rows.setter
    def watch_rows(self, on: bool) -> None:
        self._watch_rows = on
        self._table = self._stop()

    def feed(self, data: bytes) -> bytes:
        if self.header:
            data = self.header + bytes(data)
            self.header = b""
        n = len(data)
        pos = 0
        out = None                      # stays None while the chunk goes out untouched
        start = 0                       # first byte not yet copied into out
        on_message = self._on_message
        stop = self._table
        count_copy = on_message is not None
        skip = skip_messages
        walk = walk_server if count_copy else None
        if self.remaining:
            take = min(self.remaining, n)
            if self.held is not None:
                self.held += data[:take]
            else:
                if self.cur_type == PqMsg_ReadyForQuery:
                    self.txn_status = data[0:1]
                if self.side is not None:
                    self.side += data[:take]
            self.remaining -= take
            pos = take
            if self.held is not None:
                out = bytearray()
                start = pos
                if self.remaining:
                    return bytes(out)
                out += self._release_error()
                stop = self._table
            elif self.side is not None and not self.remaining:
                body, self.side = bytes(self.side), None
                on_message(self.cur_type, body)
                stop = self._table
        while pos < n:
            if walk is not None:        # also delivers watched messages; copy bytes counted inside
                pos = walk(self, data, pos, stop, on_message)
                stop = self._table
            else:
                pos, copied = skip(data, pos, stop, count_copy)
                if copied:
                    self.copy_bytes += copied
            if pos >= n:
                break
            if n - pos < 5:
                self.header = bytes(data[pos:])
                if out is None:
                    return data[:pos] if pos else b""
                out += data[start:pos]
                return bytes(out)
            mtype, length = _HDR.unpack_from(data, pos)
            if length < 4:
                raise ServerProtocolError(f"server sent a message of invalid length {length}")
            end = pos + 1 + length
            if mtype == PqMsg_ReadyForQuery:
                self.ready_count += 1
                if pos + 5 < n:
                    self.txn_status = data[pos + 5:pos + 6]
            elif mtype == PqMsg_ErrorResponse and self._on_error is not None:
                if length > MAX_ERROR_SIZE:
                    raise ServerProtocolError("server sent an oversized ErrorResponse")
                if out is None:
                    out = bytearray()
                out += data[start:pos]
                self.held = bytearray(data[pos:min(end, n)])
                if end > n:
                    self.remaining = end - n
                    self.cur_type = mtype
                    return bytes(out)
                out += self._release_error()
                stop = self._table
                pos = start = end
                continue
            if on_message is not None:
                if mtype == PqMsg_CopyData:
                    self.copy_bytes += length - 4
                elif mtype in WATCHED or (mtype == PqMsg_DataRow and self._watch_rows and length <= MAX_ERROR_SIZE):
                    if length > MAX_ERROR_SIZE:
                        raise ServerProtocolError(f"server sent an oversized {chr(mtype)!r} message")
                    if end <= n:
                        on_message(mtype, bytes(data[pos + 5:end]))
                        stop = self._table
                    else:
                        self.side = bytearray(data[pos + 5:n])
            if end > n:
                self.remaining = end - n
                self.cur_type = mtype
                break
            pos = end
        if out is None:
            return data
        out += data[start:]
        return bytes(out)

    def _stop(self) -> bytes:
        hooked = self._on_message is not None
        return _STOP[(self._on_error is not None) | (hooked << 1) | ((hooked and self._watch_rows) << 2)]

    @property
    def at_boundary(self) -> bool:
        """True between two whole messages: bytes of pgwarden's own may go to the client now."""
        return not self.remaining and not self.header and self.held is None

    def _release_error(self) -> bytes:
        msg = bytes(self.held)
        self.held = None
        replacement = self._on_error(msg[5:]) if self._on_error is not None else None
        if replacement is not None:
            msg = replacement
        if self._on_message is not None:
            self._on_message(PqMsg_ErrorResponse, msg[5:])    # what the client sees
        return msg

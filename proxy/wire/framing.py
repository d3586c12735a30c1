"""Frame the PostgreSQL v3 byte stream: bytes in, (type, start, end) out.

Sans-I/O, after h11's receive_data/next_event: feed() appends bytes,
next_frame() returns the next whole message as integer offsets into the
buffer (no per-message copies), or NEED_DATA. compact() drops consumed bytes;
callers call it once per received chunk, not once per message.

Rules:
- A length below 4 or above max_message_size is the peer's protocol error,
  raised as the error class the scanner was built with (Client/ServerProtocolError),
  before any byte of the oversized body is buffered beyond what arrived.
- The startup phase has no type byte; next_startup_packet() frames it with
  PostgreSQL's own 10,000-byte cap.

Speed: in the relay, the client messages that need no policy decision
(Bind, Execute, Sync, CopyData: told to the statement tracker, Syncs
counted; Describe, Flush, CopyDone, CopyFail; and a Query, or a Parse of the
unnamed statement, whose verdict the judge has cached, allowed and without
effects) are stepped over before each
next_frame() by ``walk_client``: the compiled ``proxy.wire._scan.walk_client``
when the optional C extension was built, else ``walk_client_noop``, which
walks nothing and leaves every message to the relay's own dispatch (the
reference).  ``WALK_IMPL`` says which ("c" or "python").
"""

import struct

from .constants import MAX_STARTUP_PACKET
from .errors import ClientProtocolError, ProtocolError


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()

_HDR = struct.Struct("!Bi")
_I32 = struct.Struct("!i")

HARD_MAX_MESSAGE_SIZE = 1 << 30   # PostgreSQL's own MaxAllocSize-based limit for a message


class FrameScanner:
    __slots__ = ("buf", "pos", "max_message_size", "error_class", "_pending_len")

    def __init__(self, max_message_size: int = HARD_MAX_MESSAGE_SIZE,
                 error_class: type[ProtocolError] = ClientProtocolError) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.max_message_size = min(max_message_size, HARD_MAX_MESSAGE_SIZE)
        self.error_class = error_class
        self._pending_len = 0

    def feed(self, data: bytes) -> None:
        self.buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self.buf) - self.pos

    def next_frame(self):
        """Return (type, body_start, body_end) for the next whole message, or NEED_DATA."""
        buf = self.buf
        pos = self.pos
        if len(buf) - pos < 5:
            return NEED_DATA
        mtype, length = _HDR.unpack_from(buf, pos)
        if length < 4:
            raise self.error_class(f"invalid message length {length} for message type {_show(mtype)}")
        if length > self.max_message_size:
            raise self.error_class(
                f"message of type {_show(mtype)} is {length} bytes, over the limit of {self.max_message_size}",
                sqlstate="54000")
        end = pos + 1 + length
        if len(buf) < end:
            return NEED_DATA
        self.pos = end
        return mtype, pos + 5, end

    def next_startup_packet(self):
        """Return (start, end) of a whole untyped startup packet body, or NEED_DATA."""
        buf = self.buf
        pos = self.pos
        if len(buf) - pos < 4:
            return NEED_DATA
        (length,) = _I32.unpack_from(buf, pos)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise self.error_class(f"invalid startup packet length {length}")
        end = pos + length
        if len(buf) < end:
            return NEED_DATA
        self.pos = end
        return pos + 4, end

    def take_rest(self) -> bytes:
        """Hand out everything not yet framed (e.g. to replay into a new scanner)."""
        rest = bytes(self.buf[self.pos:])
        self.buf.clear()
        self.pos = 0
        return rest

    def compact(self) -> None:
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0


def walk_client_noop(buf, pos: int, stop: bytes, max_size: int, tracker, query=None) -> tuple[int, int]:
    """Walk nothing: ``(pos, 0)``.  The fallback of the compiled ``walk_client``: the relay's
    per-message dispatch (ClientConn._relay), which is the reference, then does its work."""
    return pos, 0


try:
    from ._scan import walk_client as walk_client_c
except ImportError:        # built without a C compiler (or an older build): the relay does it all
    walk_client_c = None

#: What ClientConn._relay runs before each next_frame() (looked up on each _relay call, so tests
#: can swap it): ``walk_client(buf, pos, stop, max_size, tracker, query) -> (pos, syncs)``; ``query`` is
#: None or ``proxy.net.gate.query_walk_context``'s tuple (Query and unnamed Parse, verdict cached).
walk_client = walk_client_c or walk_client_noop
WALK_IMPL = "c" if walk_client_c is not None else "python"


def _show(mtype: int) -> str:
    ch = chr(mtype)
    return repr(ch) if ch.isprintable() else f"0x{mtype:02x}"

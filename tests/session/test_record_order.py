"""When the relay records a statement: after the server's answer has gone to the client.

The recording's write(2) is not on the path from the server's answer to the
client: ClientConn.on_server_data hands the bytes to the client's transport
first and records the statements they finished just after, in the order the
tracker finished them.  What users rely on: every finished statement is in
the recording, in order -- also when the same chunk of server bytes then
breaks the session (a protocol violation), and when the session ends before
the server answered (those are recorded as interrupted).

Driven through a real ClientConn (tests.wire.test_walk_client's fakes) with
the real statement tracker and a recorder that notes, at each record, what
the client had been sent by then.
"""

from __future__ import annotations

import struct

import pytest

from proxy.net.client_conn import CLOSED
from proxy.session import track
from tests.wire.test_walk_client import ALLOWED, make_conn


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


class Recorder:
    """Logs each record with the client's writes so far (SessionRecorder's relay-facing API)."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.records: list = []

    def statement(self, text, **kw):
        self.records.append(("statement", text, kw["tag"], kw["message"], len(self.conn.transport.writes)))
        return True

    def copy(self, direction, nbytes, rows=None):
        self.records.append(("copy", direction, nbytes, len(self.conn.transport.writes)))
        return True

    def end(self, reason, **extra):
        self.records.append(("end", reason))
        return True


@pytest.fixture(params=["c", "python"])
def conn(request):
    if request.param == "c" and track.TRACKER_IMPL != "c":
        pytest.skip("the C statement tracker was not built")
    cls = track.StatementTracker if request.param == "c" else track.StatementTrackerPy
    c = make_conn(None)
    c.finished = []
    c.tracker = cls(c.finished.append, capture_params=True)
    c.stream.on_message = c.tracker.on_server
    c.recorder = Recorder(c)
    c.end_reason = "client closed"
    c.cut_lag = None
    return c


def send_queries(c, *texts: str) -> None:
    for text in texts:
        c.tracker.query(text, ALLOWED)


def test_recorded_after_the_answer_went_to_the_client(conn):
    send_queries(conn, "select 1", "select 2")
    answer = (msg(b"T", b"\x00\x00") + msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I")
              + msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I"))
    conn.on_server_data(answer)
    assert conn.transport.writes == [answer]
    assert conn.recorder.records == [("statement", "select 1", "SELECT 1", None, 1),
                                     ("statement", "select 2", "SELECT 1", None, 1)]
    assert conn.finished == []


def test_statements_finished_by_bytes_that_then_break_the_session_are_recorded(conn):
    send_queries(conn, "select 1", "select 2")
    rec = conn.recorder
    bad = msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I") + b"C" + struct.pack("!i", 2)   # length 2: invalid
    conn.on_server_data(bad)
    assert conn.phase == CLOSED and conn.recorder is None
    records = rec.records
    assert [r[:2] for r in records] == [("statement", "select 1"), ("statement", "select 2"), ("end", "client closed")]
    assert records[0][2] == "SELECT 1"
    assert records[1][2] is None and records[1][3].startswith("interrupted")
    assert conn.transport.writes[-1] == "close"
    assert b"upstream protocol error" in conn.transport.writes[0]


def test_a_chunk_that_finishes_nothing_records_nothing(conn):
    send_queries(conn, "select 1")
    conn.on_server_data(msg(b"T", b"\x00\x00") + msg(b"D", b"\x00\x00"))
    assert conn.recorder.records == []
    conn.on_server_data(msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I"))
    assert [r[:3] for r in conn.recorder.records] == [("statement", "select 1", "SELECT 1")]
    assert conn.recorder.records[0][4] == 2              # both chunks were sent before the record

"""StatementTracker: pairing what the client sent with what the server answered.

What auditors rely on: one statement record per Query / Execute, in order,
with its own command tags, rows, error and COPY bytes; after an error in a
pipeline the statements the server skipped say so; nothing is attributed to
the wrong statement, whatever the pipelining.

Every test runs with both trackers, the Python reference and the compiled
one (conftest's ``tracker_impl``); tests/session/test_track_c.py compares
them directly.
"""

import struct

import pytest

from proxy.session import track
from proxy.session.enforce import Verdict
from proxy.session.track import MAX_PARAM_CHARS, render_params
from proxy.wire import encode

pytestmark = pytest.mark.usefixtures("tracker_impl")

ALLOW = Verdict(True, "", "read.select", "read")
DENY = Verdict(False, "pgwarden: denied", "ddl.drop", "ddl")

C = ord("C")
E = ord("E")
Z = ord("Z")
I_ = ord("I")
G = ord("G")
H = ord("H")


def err(sqlstate: str, msg: str) -> bytes:
    return encode.error_response(sqlstate, msg)[5:]


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        self.t += 1.0
        return self.t


def make(copy_out=lambda: 0):
    out = []
    return out, track.StatementTracker(out.append, copy_out_bytes=copy_out, clock=Clock())


def test_simple_query_with_several_statements_is_one_record_with_every_tag():
    out, t = make()
    t.query("BEGIN; INSERT INTO t VALUES (1); COMMIT", ALLOW)
    for tag in (b"BEGIN", b"INSERT 0 1", b"COMMIT"):
        t.on_server(C, tag + b"\x00")
        assert out == []                      # emitted at ReadyForQuery, not before
    t.on_server(Z, b"I")
    [s] = out
    assert s.tags == ["BEGIN", "INSERT 0 1", "COMMIT"] and s.rows == 1 and s.sqlstate is None
    assert s.via == "query" and s.ended > s.started


def test_simple_query_error_and_denial():
    out, t = make()
    t.query("DROP TABLE t", DENY)
    t.on_server(E, err("42501", "pgwarden: denied"))
    t.on_server(Z, b"I")
    t.query("SELECT 1/0", ALLOW)
    t.on_server(E, err("22012", "division by zero"))
    t.on_server(Z, b"I")
    t.query("", ALLOW)
    t.on_server(I_, b"")
    t.on_server(Z, b"I")
    assert [(s.text, s.verdict, s.sqlstate, s.tags) for s in out] == [
        ("DROP TABLE t", DENY, "42501", []), ("SELECT 1/0", ALLOW, "22012", []), ("", ALLOW, None, [])]


def test_pipeline_error_belongs_to_the_first_unanswered_execute_and_the_rest_are_skipped():
    out, t = make()
    t.parse("", "SELECT $1::int", ALLOW, (23,))
    t.bind("", "", [(struct.pack("!i", 7), True)])
    t.execute("")
    t.parse("s2", "SELECT 1/$1", ALLOW)
    t.bind("", "s2", [(b"0", False)])
    t.execute("")
    t.parse("", "SELECT 3", ALLOW)
    t.bind("", "", [])
    t.execute("")
    t.sync()
    t.query("SELECT 4", ALLOW)
    t.on_server(C, b"SELECT 1\x00")
    assert [s.text for s in out] == ["SELECT $1::int"]   # an Execute is recorded when answered
    t.on_server(E, err("22012", "division by zero"))
    t.on_server(Z, b"E")
    t.on_server(C, b"SELECT 1\x00")
    t.on_server(Z, b"I")
    assert [(s.text, s.params, s.tag, s.sqlstate, s.skipped) for s in out] == [
        ("SELECT $1::int", ["7"], "SELECT 1", None, False),
        ("SELECT 1/$1", ["0"], None, "22012", False),
        ("SELECT 3", [], None, None, True),
        ("SELECT 4", None, "SELECT 1", None, False),
    ]


def test_failed_parse_alone_is_recorded_with_its_text():
    out, t = make()
    t.parse("bad", "SELEC 1", ALLOW)
    t.sync()
    t.on_server(E, err("42601", "syntax error"))
    t.on_server(Z, b"I")
    [s] = out
    assert (s.text, s.via, s.sqlstate) == ("SELEC 1", "parse", "42601")


def test_copy_in_and_out_bytes():
    server_bytes = [0]
    out, t = make(copy_out=lambda: server_bytes[0])
    t.query("COPY t FROM STDIN", ALLOW)
    t.on_server(G, b"\x00\x00\x00")
    t.copy_data(10)
    t.copy_data(5)
    t.on_server(C, b"COPY 2\x00")
    t.on_server(Z, b"I")
    t.query("COPY t TO STDOUT", ALLOW)
    server_bytes[0] += 100                     # CopyData before the statement: not counted
    t.on_server(H, b"\x00\x00\x00")
    server_bytes[0] += 42
    t.on_server(C, b"COPY 3\x00")
    t.on_server(Z, b"I")
    assert [(s.copy_direction, s.copy_bytes, s.rows) for s in out] == [("in", 15, 2), ("out", 42, 3)]


def test_pending_lists_what_the_server_never_answered():
    out, t = make()
    t.query("SELECT pg_sleep(60)", ALLOW)
    assert [s.text for s in t.pending()] == ["SELECT pg_sleep(60)"] and out == []


def test_closed_statement_and_unknown_portal():
    out, t = make()
    t.parse("s", "SELECT 1", ALLOW)
    t.close("S", "s")
    t.bind("", "s", [])
    t.execute("")
    t.sync()
    t.on_server(E, err("26000", "prepared statement \"s\" does not exist"))
    t.on_server(Z, b"I")
    assert out[0].text.startswith("<unknown prepared statement") and out[0].sqlstate == "26000"


def test_render_params():
    assert render_params([(None, False), (b"abc", False), (b"\x00\x01", True)]) == [None, "abc", "\\x0001"]
    assert render_params([(struct.pack("!q", -5), True), (b"\x01", True), (struct.pack("!d", 1.5), True)],
                         (20, 16, 701)) == ["-5", "true", "1.5"]
    assert render_params([(b"\x01\x02", True)], (23,)) == ["258"]
    assert render_params([(b"\x01", True)], (2950,)) == ["\\x01"]          # not 16 bytes: hex, no crash
    long = render_params([(b"x" * (MAX_PARAM_CHARS + 10), False)])[0]
    assert long.startswith("x" * MAX_PARAM_CHARS) and long.endswith(f"({MAX_PARAM_CHARS + 10} bytes)")


def data_row(*values) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return body


def test_first_rows_captured_and_the_stream_told_when_to_stop_showing_rows():
    out = []
    watching = []
    t = track.StatementTracker(out.append, clock=Clock(), capture_rows=2, watch_rows=watching.append)
    assert watching == [True]
    D = ord("D")
    t.query("SELECT ...", ALLOW)
    t.on_server(D, data_row(b"1", b"a"))
    assert watching[-1] is True
    t.on_server(D, data_row(b"2", None))
    assert watching[-1] is False                  # has its two rows: the rest go by in bulk
    t.on_server(D, data_row(b"3", b"c"))          # shown anyway (same chunk): ignored
    t.on_server(C, b"SELECT 3\x00")
    assert watching[-1] is True                   # the next statement's rows are wanted
    t.on_server(Z, b"I")
    t.query("SELECT '\\xff'::bytea", ALLOW)
    t.on_server(D, data_row(b"\xff"))
    t.on_server(C, b"SELECT 1\x00")
    t.on_server(Z, b"I")
    assert out[0].sample == [["1", "a"], ["2", None]] and out[0].rows == 3
    assert out[1].sample == [["\\xff"]]


def test_rows_not_captured_when_off():
    out, t = make()
    t.query("SELECT 1", ALLOW)
    t.on_server(ord("D"), data_row(b"1"))
    t.on_server(C, b"SELECT 1\x00")
    t.on_server(Z, b"I")
    assert out[0].sample is None


def test_the_statements_are_the_implementations_own(tracker_impl):
    out, t = make()
    t.query("SELECT 1", ALLOW)
    t.on_server(C, b"SELECT 1\x00")
    t.on_server(Z, b"I")
    assert type(t).__module__ == ("proxy.session.track" if tracker_impl == "python" else "proxy.session._track")
    assert type(out[0]) is track.Statement

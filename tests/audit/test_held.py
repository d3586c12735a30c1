"""Records held while the relay walks one chunk of server bytes, written together before it is forwarded.

``SessionRecorder.hold()`` / ``release()``: what is recorded in between is chained at once and
written by ``release()`` in one ``write(2)`` (one fsync under the "statement" policy).  The relay
(``ClientConn.on_server_data``) holds around ``ServerStream.feed``, so a pipeline's statements cost
one write per read, and a client still never sees an answer whose record is not yet written.
"""

from __future__ import annotations

import os
import stat
import struct
from types import SimpleNamespace

import pytest

from proxy.audit import writer
from proxy.audit.config import AuditConfig
from proxy.audit.verify import verify
from proxy.audit.writer import RecorderFactory
from proxy.net.client_conn import ClientConn
from tests.wire.test_walk_client import make_conn

pytestmark = pytest.mark.usefixtures("line_impl")


@pytest.fixture
def writes(monkeypatch):
    """Every os.write to a regular file, as (fd, bytes)."""
    seen: list[tuple[int, bytes]] = []
    real = os.write

    def counting(fd, data):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append((fd, bytes(data)))
        return real(fd, data)

    monkeypatch.setattr(writer.os, "write", counting)
    return seen


def lines(path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_held_records_go_in_one_write_in_order(factory, keys, writes):
    rec = factory.open()
    rec.start(user="a")
    rec.hold()
    assert rec.statement("select 1", tag="SELECT 1") is True
    rec.hold()                                    # holding twice is holding once: nothing held is dropped
    assert rec.copy("out", 10, rows=1) is True
    assert rec.statement("select 2", tag="SELECT 1") is True
    assert len(lines(rec.path)) == 1 and rec.records == 4     # chained, not yet written
    n = len(writes)
    assert rec.release() is True
    assert len(writes) == n + 1 and writes[-1][1].count(b"\n") == 3
    assert rec.release() is True and len(writes) == n + 1     # nothing held: nothing written
    rec.notice("expiry_warning", "soon")                      # not held: written at once
    assert len(writes) == n + 2
    rec.end("client_closed")
    report = verify(rec.path, keys)
    assert report.ok and report.statements == 2
    assert [b'"select 1"' in x or b'"select 2"' in x for x in lines(rec.path)] == \
        [False, True, False, True, False, False]


def test_end_writes_what_is_held_first(factory, keys, writes):
    rec = factory.open()
    rec.start(user="a")
    rec.hold()
    rec.statement("select 1", tag="SELECT 1")
    assert rec.end("client_closed") is True
    assert rec._held is None
    report = verify(rec.path, keys)
    assert report.ok and report.statements == 1 and report.records == 3


def test_a_failed_release_fails_the_recorder_once(factory, keys, writes):
    errors = []
    rec = factory.open(on_failure=errors.append)
    rec.start(user="a")
    rec.statement("select 1", tag="SELECT 1")
    rec.hold()
    assert rec.statement("select 2", tag="SELECT 1") is True
    ro = os.open(rec.path, os.O_RDONLY)           # the disk goes away before the release
    os.dup2(ro, rec._fd)
    os.close(ro)
    assert rec.release() is False
    assert rec.failed and len(errors) == 1 and "Bad file descriptor" in errors[0]
    assert rec._held is None
    assert rec.statement("select 3") is False and rec.release() is False and rec.end("x") is False
    assert len(errors) == 1
    report = verify(rec.path, keys)               # what was written before the hold stands
    assert report.status == "unterminated" and report.statements == 1


# ------------------------------------------------------------------ the relay


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def pipeline(n: int) -> bytes:
    """n unnamed Parse/Bind/Execute groups and one Sync, as psycopg's pipeline mode sends them."""
    out = b""
    for i in range(n):
        out += msg(b"P", cstr("") + cstr(f"select {i}") + b"\x00\x00")
        out += msg(b"B", cstr("") + cstr("") + b"\x00\x00" + b"\x00\x00" + b"\x00\x00")
        out += msg(b"E", cstr("") + b"\x00\x00\x00\x00")
    return out + msg(b"S")


def answers(n: int) -> list[bytes]:
    row = msg(b"D", b"\x00\x01" + struct.pack("!I", 1) + b"1")
    return [msg(b"1") + msg(b"2") + row + msg(b"C", cstr("SELECT 1")) for _ in range(n)] + [msg(b"Z", b"I")]


def recording_conn(tmp_path, key):
    c = make_conn(None)
    c.cfg = SimpleNamespace(audit=AuditConfig(dir=tmp_path))
    c.server.recorders = RecorderFactory(c.cfg.audit, key)
    c.claims = SimpleNamespace(jti="g-1", scope="read", reason="r", ticket=None, approver=None)
    c.scope = SimpleNamespace(role="pgwarden_read")
    c.session_id, c.peer, c.user, c.database, c.up_pid = "20260101T000000-a1b2c3d4e5f6", "p", "u", "d", 7
    c.cut_lag, c.end_reason = None, "client closed"
    ClientConn._start_recording(c)
    return c


RELEASES = [pytest.param("python", id="release in python"),
            pytest.param("c", id="release in C",
                         marks=pytest.mark.skipif(writer.release_c is None, reason="proxy.audit._recline not built"))]


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("cuts", [[], [2], [1, 3]], ids=["one read", "two reads", "three reads"])
def test_the_relay_writes_a_reads_records_at_once_before_forwarding_it(tmp_path, key, keys, writes, monkeypatch,
                                                                         cuts, release):
    if release == "python":
        monkeypatch.setattr(writer, "release", writer.SessionRecorder.release)
    c = recording_conn(tmp_path, key)
    rec = c.recorder
    c.data_received(pipeline(4))
    parts = answers(4)
    chunks = [b"".join(parts[a:b]) for a, b in zip([0] + cuts, cuts + [len(parts)])]
    on_disk_when_forwarded = []
    forward = c.transport.write

    def write(data):
        on_disk_when_forwarded.append(rec.path.read_bytes().count(b"\n"))
        forward(data)
    c.transport.write = write
    before = len(writes)
    for chunk in chunks:
        c.on_server_data(chunk)
    # each read's records are on disk before that read goes to the client, not before
    ended = [chunk.count(b"C\x00\x00\x00\x0dSELECT 1\x00") for chunk in chunks]
    assert on_disk_when_forwarded == [1 + sum(ended[:i + 1]) for i in range(len(chunks))]
    assert b"".join(c.transport.writes) == b"".join(chunks)
    if release == "python":             # one write(2) per read that ended statements, all of them in it
        assert [w[1].count(b"\n") for w in writes[before:]] == [e for e in ended if e]
    assert rec._held is None and rec.records == 5
    ClientConn._end_recording(c)
    report = verify(rec.path, keys)
    assert report.ok and report.statements == 4


def test_a_protocol_error_mid_read_still_writes_what_the_read_ended(tmp_path, key, keys):
    c = recording_conn(tmp_path, key)
    rec = c.recorder
    c.data_received(pipeline(2))
    first = answers(2)[0]
    c.on_server_data(first + b"D" + struct.pack("!I", 2))     # a length under 4: the server's stream is broken
    assert rec._held is None
    assert rec.ended and c.phase == "CLOSED"
    report = verify(rec.path, keys)
    assert report.ok and report.statements == 2           # the answered one, and the one cut short


# ------------------------------------------------------------------ the compiled release


def _full(rec):
    fd = os.open("/dev/full", os.O_WRONLY)
    os.dup2(fd, rec._fd)
    os.close(fd)


RELEASE_CASES = {
    "nothing held": lambda rec: None,
    "nothing held, failed": lambda rec: setattr(rec, "failed", True),
    "empty hold": lambda rec: rec.hold(),
    "one line": lambda rec: (rec.hold(), rec.statement("select 1", tag="SELECT 1")),
    "three lines": lambda rec: (rec.hold(), [rec.statement(f"select {i}", tag="SELECT 1") for i in range(3)]),
    "held, then failed": lambda rec: (rec.hold(), rec.statement("select 1"), setattr(rec, "failed", True)),
    "a bytearray held": lambda rec: (rec.hold(), rec.statement("select 1"), rec._held.append(bytearray(b"{}\n"))),
    "only a bytearray held": lambda rec: (rec.hold(), rec._held.append(bytearray(b"{}\n"))),
    "a tuple held": lambda rec: (rec.hold(), rec.statement("select 1"), setattr(rec, "_held", tuple(rec._held))),
    "failed is not a bool": lambda rec: (rec.hold(), rec.statement("select 1"), setattr(rec, "failed", 0)),
    "the file not open yet": lambda rec: (os.close(rec._fd), setattr(rec, "_fd", -1),
                                          setattr(rec, "path", rec.path.with_name("later.jsonl")), rec.hold(),
                                          rec.statement("select 1")),
    "fsync per statement": lambda rec: (setattr(rec, "_fsync", "statement"), rec.hold(), rec.statement("select 1")),
    "a full disk": lambda rec: (rec.hold(), rec.statement("select 1"), rec.statement("select 2"), _full(rec)),
}


@pytest.mark.skipif(writer.release_c is None, reason="proxy.audit._recline not built")
@pytest.mark.parametrize("case", list(RELEASE_CASES))
def test_the_compiled_release_does_what_release_does(tmp_path, key, clock, case):
    out = []
    for n, impl in enumerate((writer.SessionRecorder.release, writer.release_c)):
        errors: list[str] = []
        d = tmp_path / str(n)
        rec = RecorderFactory(AuditConfig(dir=d), key, clock=clock).open(
            session_id="20260101T000000-a1b2c3d4e5f6", on_failure=errors.append)
        rec.start(user="a")
        RELEASE_CASES[case](rec)
        result = impl(rec)
        data = rec.path.read_bytes() if rec.path.exists() else None
        out.append((result, data, rec._held, rec.failed, rec.error, errors, rec._fd >= 0, rec.records))
    assert out[0] == out[1]
    assert writer.release is writer.release_c


def test_the_compiled_release_keeps_no_reference(tmp_path, key):
    import tracemalloc
    rec = RecorderFactory(AuditConfig(dir=tmp_path), key).open()
    rec.start(user="a")

    def once():
        rec.hold()
        rec.statement("select 1")
        rec.statement("select 2")
        writer.release(rec)
    for _ in range(200):
        once()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for _ in range(2000):
        once()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    assert grown < 64 * 1024

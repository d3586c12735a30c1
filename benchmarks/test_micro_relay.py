"""Micro-benchmarks of the relay's codec (pytest-benchmark).

    python -m pytest benchmarks/test_micro_relay.py --benchmark-only

Not collected by ``./dev test``; CI runs it once untimed (tests/test_bench_layout.py),
never measures it.

- client->server framing: ``FrameScanner`` over what pgbench -M prepared sends
  per transaction (Bind, Execute, Sync) and -M simple (one Query);
- server->client header walk: ``ServerStream.feed`` over a 256 KiB chunk of
  DataRows (a large result), with the compiled walk and the pure-Python
  reference, and over one select-only answer (the per-transaction cost);
- decoding what policy needs: a Query's text, a Parse;
- one select-only transaction through the whole relay, as pgbench sends it
  with -M prepared (Bind/Execute/Sync), -M extended (Parse of the unnamed
  statement, Bind, Describe, Execute, Sync) and -M simple (one Query, a new
  literal each time): ``ClientConn``'s ``data_received`` with what the client
  sends, ``on_server_data`` with the answer, recording off and on, with the
  server's own gate and judge (the compiled statement walk included) and
  transports that drop what they are given: the Python (and compiled) path
  pgwarden runs per statement, without the event loop and the sockets.  Its
  session comes from the tests' helpers (tests/wire/test_walk_client.py,
  tests/audit/test_held.py).
"""

from __future__ import annotations

import itertools
import struct
from types import SimpleNamespace

import pytest

from benchmarks import median_s
from proxy.wire import encode, server_stream
from proxy.wire.decode import decode_parse, decode_query
from proxy.wire.framing import NEED_DATA, FrameScanner
from proxy.wire.server_stream import ServerStream, skip_messages_c, skip_messages_py

WALKS = [pytest.param(skip_messages_py, id="python")]
if skip_messages_c is not None:
    WALKS.append(pytest.param(skip_messages_c, id="c"))


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


BIND = _msg(b"B", b"\x00P0_1\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0512345\x00\x01\x00\x01")
EXECUTE = _msg(b"E", b"\x00\x00\x00\x00\x00")
SYNC = _msg(b"S", b"")
PREPARED_TX = BIND + EXECUTE + SYNC
QUERY = _msg(b"Q", b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\x00")
PARSE = _msg(b"P", b"P0_1\x00SELECT abalance FROM pgbench_accounts WHERE aid = $1;\x00\x00\x01\x00\x00\x00\x17")

ROW = encode.message(b"D", b"\x00\x04" + b"\x00\x00\x00\x0512345" * 3 + b"\x00\x00\x00\x54" + b"x" * 84)
BIG_CHUNK = ROW * (262144 // len(ROW))
SELECT_ANSWER = (encode.message(b"T", b"\x00\x01abalance\x00\x00\x00\x40\x00\x00\x03\x00\x00\x00\x17\x00\x04"
                                b"\xff\xff\xff\xff\x00\x00")
                 + encode.message(b"D", b"\x00\x01\x00\x00\x00\x041234")
                 + encode.message(b"C", b"SELECT 1\x00") + encode.ready_for_query(b"I"))


@pytest.mark.parametrize("data", [PREPARED_TX, QUERY], ids=["bind-execute-sync", "query"])
def test_frame_client_messages(benchmark, data):
    scanner = FrameScanner()

    def one():
        scanner.feed(data)
        while scanner.next_frame() is not NEED_DATA:
            pass
        scanner.compact()

    benchmark(one)


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("hooks", [False, True], ids=["relay", "recording"])
def test_server_stream_large_result_chunk(benchmark, walk, hooks, monkeypatch):
    monkeypatch.setattr(server_stream, "skip_messages", walk)
    stream = ServerStream(lambda body: None, (lambda t, b: None) if hooks else None)
    out = benchmark(stream.feed, BIG_CHUNK)
    assert out is BIG_CHUNK
    median = median_s(benchmark)
    if median is not None:
        benchmark.extra_info["MB/s"] = round(len(BIG_CHUNK) / median / 1e6)


@pytest.mark.parametrize("walk", WALKS)
def test_server_stream_select_answer(benchmark, walk, monkeypatch):
    monkeypatch.setattr(server_stream, "skip_messages", walk)
    stream = ServerStream(lambda body: None)
    assert benchmark(stream.feed, SELECT_ANSWER) is SELECT_ANSWER


class _Dropped:
    """A transport that takes every write and keeps nothing."""

    def write(self, data) -> None:
        pass

    def is_closing(self) -> bool:
        return False


PREPARE_TX = (_msg(b"P", b"P0_1\x00SELECT abalance FROM pgbench_accounts WHERE aid = $1;\x00\x00\x01\x00\x00\x00\x17")
              + PREPARED_TX)
PREPARE_ANSWER = b"".join(encode.message(t, b) for t, b in (
    (b"1", b""), (b"2", b""), (b"T", b"\x00\x00"), (b"C", b"SELECT 1\x00"), (b"Z", b"I")))
PREPARED_ANSWER = b"".join(encode.message(t, b) for t, b in (
    (b"2", b""), (b"D", b"\x00\x01\x00\x00\x00\x041234"), (b"C", b"SELECT 1\x00"), (b"Z", b"I")))


ROW_DESCRIPTION = b"\x00\x01abalance\x00\x00\x00\x40\x00\x00\x03\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
EXTENDED_TX = (_msg(b"P", b"\x00SELECT abalance FROM pgbench_accounts WHERE aid = $1;\x00\x00\x00")
               + _msg(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0512345\x00\x00")
               + _msg(b"D", b"P\x00") + EXECUTE + SYNC)
EXTENDED_ANSWER = b"".join(encode.message(t, b) for t, b in (
    (b"1", b""), (b"2", b""), (b"T", ROW_DESCRIPTION), (b"D", b"\x00\x01\x00\x00\x00\x041234"),
    (b"C", b"SELECT 1\x00"), (b"Z", b"I")))
SIMPLE_ANSWER = b"".join(encode.message(t, b) for t, b in (
    (b"T", ROW_DESCRIPTION), (b"D", b"\x00\x01\x00\x00\x00\x041234"), (b"C", b"SELECT 1\x00"),
    (b"Z", b"I")))


def _simple_queries():
    """pgbench -M simple: the same statement with a new literal every time (no exact-text repeat)."""
    text = b"SELECT abalance FROM pgbench_accounts WHERE aid = %d;\x00"
    return (_msg(b"Q", text % aid) for aid in itertools.count(1))


@pytest.mark.parametrize("recording", [False, True], ids=["recording-off", "recording-on"])
@pytest.mark.parametrize("mode", ["prepared", "extended", "simple"])
def test_relay_one_transaction(benchmark, mode, recording, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from proxy.net.gate import PolicyGate, query_walk_context
    from proxy.session.judge import Judge
    from tests.audit.test_held import recording_conn
    from tests.wire.test_walk_client import make_conn

    conn = recording_conn(tmp_path, Ed25519PrivateKey.generate()) if recording else make_conn(None)
    if not recording:                                     # recording_conn's claims are in the read scope too
        conn.claims = SimpleNamespace(scope="read")
    conn.server.gate = PolicyGate(None, Judge())          # the server's gate and judge, as serve builds them
    conn.query_walk = query_walk_context(conn.server.gate, "read")
    conn.transport = conn.up_transport = _Dropped()
    if mode == "prepared":
        conn.data_received(PREPARE_TX)
        conn.on_server_data(PREPARE_ANSWER)
        sends, answer = itertools.repeat(PREPARED_TX), PREPARED_ANSWER
    elif mode == "extended":
        sends, answer = itertools.repeat(EXTENDED_TX), EXTENDED_ANSWER
    else:
        sends, answer = _simple_queries(), SIMPLE_ANSWER
    before = conn.stream.ready_count

    def one():
        conn.data_received(next(sends))
        conn.on_server_data(answer)

    benchmark(one)
    # every transaction relayed both ways (one Sync each, one ReadyForQuery each), none denied ...
    assert conn.phase == "RELAY" and not conn.errors and conn.stream.ready_count > before
    assert conn.sync_points == conn.stream.ready_count and not conn.enforcer.denied_statements
    if recording:                 # ... and recorded: session_start, then one record per statement
        assert not conn.recorder.failed and conn.recorder.records == conn.stream.ready_count + 1


def test_decode_query(benchmark):
    assert benchmark(decode_query, QUERY, 5, len(QUERY)).startswith("SELECT")


def test_decode_parse(benchmark):
    assert benchmark(decode_parse, PARSE, 5, len(PARSE)).name == "P0_1"

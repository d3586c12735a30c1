"""Switch one part of the session recording off (or reorder it, or compile the relay's glue) in one pgwarden process.

Used only by ``benchmarks/parts.py``: it starts extra ``pgwarden serve``
processes with ``PYTHONPATH`` pointing at ``benchmarks/parts_site`` (whose
``sitecustomize`` calls ``apply``) and ``PGWARDEN_BENCH_PART`` naming the part:

- ``no-tracker``: the recorder is opened and writes its ``session_start``
  (and its signed end), but no statement tracker runs: nothing is decoded
  or paired per statement, nothing is recorded per statement;
- ``no-records``: the tracker runs as shipped (every Bind decoded, every
  statement paired with its outcome) and hands each statement to the
  recorder, which builds and writes nothing (the compiled statement sink,
  which would write without calling ``SessionRecorder.statement``, is
  switched off: the tracker's emit is the Python ``_write_statement``);
- ``forward-first``: everything recorded as shipped, but a read of server
  bytes is forwarded to the client *before* the records of the statements
  it ends are written (one ``write(2)`` right after), where pgwarden writes
  them before.  What that order would buy; pgwarden does not ship it: a
  client would see answers whose records are not yet written, and, if that
  write fails, answers to statements that were never recorded (DESIGN.md's
  "nothing runs unrecorded", docs/security.md).  A protocol error from the
  server propagates out of ``data_received`` here (the benchmark's server
  sends none), where pgwarden ends the session with a FATAL.
- ``compiled-glue``: ``ClientConn.data_received``, ``ClientConn.on_server_data``
  and ``UpstreamProtocol.data_received`` replaced by benchmarks/glue_proto.c's
  (built by ``benchmarks.env.build_glue_proto``): what compiling the relay's
  per-read glue would buy.  Its limits are in that file's header.

Never use these in production: a recording made under them is incomplete
by design.  ``apply`` returns a function that undoes the patch (for tests).
"""

from __future__ import annotations

from collections.abc import Callable

PARTS = ("no-tracker", "no-records", "forward-first", "compiled-glue")
ENV = "PGWARDEN_BENCH_PART"


def apply(part: str) -> Callable[[], None]:
    """Patch this process for ``part`` (one of PARTS); returns the undo."""
    if part == "no-tracker":
        from proxy.net.client_conn import ClientConn
        original = ClientConn._start_recording

        def start_recording_without_tracker(self) -> None:
            original(self)
            self.tracker = None
            self.stream.on_message = None
        ClientConn._start_recording = start_recording_without_tracker

        def undo() -> None:
            ClientConn._start_recording = original
        return undo
    if part == "no-records":
        from proxy.audit import writer
        from proxy.audit.writer import SessionRecorder
        original_statement = SessionRecorder.statement
        original_sink = writer.statement_sink

        def statement_not_written(self, text, **fields) -> bool:
            return not (self.ended or self.failed)
        SessionRecorder.statement = statement_not_written
        writer.statement_sink = None      # the compiled sink would write without calling statement()

        def undo_records() -> None:
            SessionRecorder.statement = original_statement
            writer.statement_sink = original_sink
        return undo_records
    if part == "forward-first":
        from proxy.audit import writer
        from proxy.net.client_conn import ClientConn
        original_on_server_data = ClientConn.on_server_data

        def forward_then_record(self, data: bytes) -> None:
            rec = self.recorder
            if rec is None or self.phase == "CLOSED":
                return original_on_server_data(self, data)
            rec.hold()
            try:
                data = self.stream.feed(data)
                if data:
                    self.transport_write(data)
            finally:
                writer.release(rec)
            if self.pending_notices:
                _flush_notices(self)
        ClientConn.on_server_data = forward_then_record

        def undo_order() -> None:
            ClientConn.on_server_data = original_on_server_data
        return undo_order
    if part == "compiled-glue":
        return _compiled_glue()
    raise ValueError(f"unknown part {part!r}: one of {', '.join(PARTS)}")


def _flush_notices(conn) -> None:
    """ClientConn.on_server_data's last lines, for a session with notices waiting."""
    if conn.stream.at_boundary:
        conn.transport_write(b"".join(conn.pending_notices))
        conn.pending_notices.clear()


def _compiled_glue() -> Callable[[], None]:
    """ClientConn's and UpstreamProtocol's per-read methods replaced by benchmarks/glue_proto.c's."""
    import _glue_proto  # built by benchmarks.env.build_glue_proto, on PYTHONPATH

    from proxy.audit import writer
    from proxy.net import client_conn
    from proxy.net.upstream import UpstreamProtocol
    from proxy.wire import framing, server_stream

    ClientConn = client_conn.ClientConn
    if framing.walk_client_c is None or server_stream.walk_server is None or writer.release_c is None:
        raise RuntimeError("compiled-glue needs pgwarden's compiled walks and release")
    originals = (ClientConn.data_received, ClientConn.on_server_data, UpstreamProtocol.data_received)
    _glue_proto.configure(framing.walk_client, server_stream.walk_server, writer.release, client_conn._WALK_STOP,
                          client_conn._WALK_STOP_BIND, originals[0], originals[1], _flush_notices)
    ClientConn.data_received = _glue_proto.client_data_received
    ClientConn.on_server_data = _glue_proto.on_server_data
    UpstreamProtocol.data_received = _glue_proto.upstream_data_received

    def undo() -> None:
        ClientConn.data_received, ClientConn.on_server_data, UpstreamProtocol.data_received = originals
    return undo

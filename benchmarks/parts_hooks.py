"""Switch one part of the session recording off inside a pgwarden process, to measure it apart.

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
  switched off: the tracker's emit is the Python ``_write_statement``).

Never use these in production: a recording made under them is incomplete
by design.  ``apply`` returns a function that undoes the patch (for tests).
"""

from __future__ import annotations

from collections.abc import Callable

PARTS = ("no-tracker", "no-records")
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
    raise ValueError(f"unknown part {part!r}: one of {', '.join(PARTS)}")

"""The one structlog configuration: JSON lines in production, console on a TTY."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure(level: str = "info", *, json: bool | None = None, stream=None) -> None:
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    lvl = getattr(logging, level.upper(), logging.INFO)
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [structlog.processors.dict_tracebacks,
                       structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        factory = structlog.BytesLoggerFactory(file=stream.buffer if hasattr(stream, "buffer") else stream)
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
        factory = structlog.PrintLoggerFactory(file=stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )

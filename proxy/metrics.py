"""Prometheus metrics: what the relay counts, and the endpoint that serves them.

Job: hold pgwarden's metrics in a dedicated ``CollectorRegistry`` (nothing
from other libraries or the default process collectors leaks in, and tests
can read it directly), give the relay plain functions to call, and serve the
registry over HTTP (``server.metrics_listen = "host:port"``).

The relay's calls (each a dict lookup plus a locked add, or for
``statement`` a plain dict count read at scrape time; well under a
microsecond or two -- no label string formatting on the hot path)::

    metrics.session_started()                 # a client authenticated; a session began
    metrics.session_ended()                   # ... and ended (any reason)
    metrics.set_grants_active(n)              # grants currently active (from the grant store)
    metrics.statement("allowed", StatementClass.READ)   # decision ("allowed"/"denied" or bool), class
    metrics.auth_failure("bad_signature")     # why a login was refused
    metrics.cut("expired")                    # why pgwarden ended a session itself
    metrics.relay_latency(0.00012)            # seconds pgwarden added to one request
    metrics.recording_failed()                # a session recording hit a disk error

    port = metrics.start_metrics_server("127.0.0.1:9187")   # port 0: any free port; returns it
    metrics.stop_metrics_server()

Rules:

* Label values must come from small fixed sets (reasons are identifiers such
  as ``expired``, ``revoked``, ``bad_signature``; classes are
  ``StatementClass`` values), never from client input: each distinct value
  is a time series for ever.
* One registry per process.  With ``serve --workers N`` each worker has its
  own counts; give each worker its own endpoint (or aggregate elsewhere):
  two processes cannot serve one port's metrics consistently.
* ``relay_latency`` is what pgwarden adds, not the database's time: from a
  client message received to the message (or pgwarden's own answer) written
  on, classification included.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily

__all__ = [
    "REGISTRY", "SESSIONS_ACTIVE", "SESSIONS_TOTAL", "GRANTS_ACTIVE", "STATEMENTS", "AUTH_FAILURES",
    "CUTS", "RELAY_LATENCY", "RECORDING_FAILURES", "LATENCY_BUCKETS",
    "session_started", "session_ended", "set_grants_active", "statement", "auth_failure", "cut",
    "relay_latency", "recording_failed", "start_metrics_server", "stop_metrics_server", "parse_listen",
]

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds.  Relaying costs tens of microseconds; classification up to ~100 us inline, more on
# the worker for long text (STYLE.md (d)); the top buckets catch stalls.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 1.0, float("inf"))

SESSIONS_ACTIVE = Gauge("pgwarden_sessions_active", "Sessions currently open through pgwarden",
                        registry=REGISTRY)
SESSIONS_TOTAL = Counter("pgwarden_sessions", "Sessions started (authenticated) since pgwarden started",
                         registry=REGISTRY)
GRANTS_ACTIVE = Gauge("pgwarden_grants_active", "Grants currently active", registry=REGISTRY)


class _StatementCounts:
    """``pgwarden_statements_total``: counted in a plain dict on the relay's path and read when
    scraped.  A labelled Counter's ``inc()`` checks its argument and takes a lock: a tenth of the
    relay's Python for a Parse or a Query.  Counted on the event loop's thread only; read by the
    endpoint's thread (``list(dict.items())`` runs whole under the GIL)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[Any, Any], int] = {}      # (decision, class) as the relay gives them

    def collect(self):
        family = CounterMetricFamily("pgwarden_statements", "Statements judged, by decision and statement class",
                                     labels=["decision", "class"])
        totals: dict[tuple[str, str], int] = {}
        for (decision, cls), n in list(self.counts.items()):
            key = (_decision_label(decision), "none" if cls is None else str(cls))
            totals[key] = totals.get(key, 0) + n
        for labels, n in sorted(totals.items()):
            family.add_metric(labels, n)
        yield family

    def describe(self):
        yield CounterMetricFamily("pgwarden_statements", "Statements judged, by decision and statement class",
                                  labels=["decision", "class"])


STATEMENTS = _StatementCounts()
REGISTRY.register(STATEMENTS)
AUTH_FAILURES = Counter("pgwarden_auth_failures", "Logins refused, by reason", ["reason"],
                        registry=REGISTRY)
CUTS = Counter("pgwarden_cuts", "Sessions ended by pgwarden itself, by reason", ["reason"],
               registry=REGISTRY)
RELAY_LATENCY = Histogram("pgwarden_relay_latency_seconds",
                          "Time pgwarden adds to a request (message received to message written on)",
                          buckets=LATENCY_BUCKETS, registry=REGISTRY)
RECORDING_FAILURES = Counter("pgwarden_recording_failures",
                             "Session recordings that failed (disk errors)", registry=REGISTRY)

_statement_counts = STATEMENTS.counts
# Label children, cached: labels() formats and locks on every call.
_auth: dict[str, Any] = {}
_cuts: dict[str, Any] = {}
_sessions_active_inc = SESSIONS_ACTIVE.inc
_sessions_active_dec = SESSIONS_ACTIVE.dec
_sessions_total_inc = SESSIONS_TOTAL.inc
_observe = RELAY_LATENCY.observe


def session_started() -> None:
    _sessions_active_inc()
    _sessions_total_inc()


def session_ended() -> None:
    _sessions_active_dec()


def set_grants_active(n: int) -> None:
    GRANTS_ACTIVE.set(n)


def _decision_label(decision: Any) -> str:
    if decision is True or decision == "allowed":
        return "allowed"
    if decision is False or decision == "denied":
        return "denied"
    return str(decision)


def statement(decision: Any, cls: Any) -> None:
    """One statement judged: ``decision`` "allowed"/"denied" (or True/False),
    ``cls`` a StatementClass (or its name; None for the empty query)."""
    key = (decision, cls)
    _statement_counts[key] = _statement_counts.get(key, 0) + 1


def auth_failure(reason: str) -> None:
    child = _auth.get(reason)
    if child is None:
        child = _auth[reason] = AUTH_FAILURES.labels(reason)
    child.inc()


def cut(reason: str) -> None:
    child = _cuts.get(reason)
    if child is None:
        child = _cuts[reason] = CUTS.labels(reason)
    child.inc()


def relay_latency(seconds: float) -> None:
    _observe(seconds)


def recording_failed() -> None:
    RECORDING_FAILURES.inc()


# ---------------------------------------------------------------------- the endpoint

class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass                            # no access log on stderr; scrapes are routine


_server: _Server | None = None
_thread: threading.Thread | None = None
_lock = threading.Lock()


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9187"``, ``"[::1]:9187"``, ``":9187"`` (all interfaces) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics listen address: expected host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def start_metrics_server(listen: str) -> int:
    """Serve ``REGISTRY`` at ``http://<listen>/metrics`` (any path answers) from a
    daemon thread; returns the bound port (useful with port 0).  OSError if the
    address cannot be bound; RuntimeError if already serving."""
    global _server, _thread
    host, port = parse_listen(listen)
    with _lock:
        if _server is not None:
            raise RuntimeError(f"metrics already served on port {_server.server_port}")

        class Server(_Server):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        server = make_server(host, port, make_wsgi_app(REGISTRY), Server, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="pgwarden-metrics", daemon=True)
        thread.start()
        _server, _thread = server, thread
        return server.server_port


def stop_metrics_server() -> None:
    """Stop the endpoint (no-op when not serving)."""
    global _server, _thread
    with _lock:
        server, thread, _server, _thread = _server, _thread, None, None
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(timeout=5)

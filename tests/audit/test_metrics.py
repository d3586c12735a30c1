"""The Prometheus endpoint: a real HTTP scrape sees pgwarden's metrics."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import metrics


@pytest.fixture
def endpoint():
    port = metrics.start_metrics_server("127.0.0.1:0")
    yield f"http://127.0.0.1:{port}/metrics"
    metrics.stop_metrics_server()


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples, name, **labels):
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_scrape_shows_every_metric(endpoint):
    before = scrape(endpoint)
    for name in ("pgwarden_sessions_active", "pgwarden_sessions_total", "pgwarden_grants_active",
                 "pgwarden_relay_latency_seconds_count", "pgwarden_relay_latency_seconds_bucket",
                 "pgwarden_recording_failures_total"):
        assert name in before, name

    from policy.sql.classes import StatementClass

    metrics.session_started()
    metrics.session_started()
    metrics.session_ended()
    metrics.set_grants_active(3)
    metrics.statement("allowed", StatementClass.READ)
    metrics.statement(True, "read")
    metrics.statement("denied", StatementClass.WRITE)
    metrics.statement(False, None)
    metrics.auth_failure("bad_signature")
    metrics.cut("expired")
    metrics.cut("revoked")
    metrics.relay_latency(0.0002)
    metrics.recording_failed()
    after = scrape(endpoint)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pgwarden_sessions_total") == 2
    assert delta("pgwarden_sessions_active") == 1
    assert value(after, "pgwarden_grants_active") == 3
    assert delta("pgwarden_statements_total", decision="allowed", **{"class": "read"}) == 2
    assert delta("pgwarden_statements_total", decision="denied", **{"class": "write"}) == 1
    assert delta("pgwarden_statements_total", decision="denied", **{"class": "none"}) == 1
    assert delta("pgwarden_auth_failures_total", reason="bad_signature") == 1
    assert delta("pgwarden_cuts_total", reason="expired") == 1
    assert delta("pgwarden_cuts_total", reason="revoked") == 1
    assert delta("pgwarden_relay_latency_seconds_count") == 1
    assert delta("pgwarden_relay_latency_seconds_bucket", le="0.00025") == 1
    assert delta("pgwarden_relay_latency_seconds_bucket", le="0.0001") == 0
    assert delta("pgwarden_recording_failures_total") == 1
    # nothing but pgwarden's own metrics: a dedicated registry
    assert all(n.startswith("pgwarden_") for n in after)


def test_start_twice_and_stop(endpoint):
    with pytest.raises(RuntimeError, match="already"):
        metrics.start_metrics_server("127.0.0.1:0")
    metrics.stop_metrics_server()
    with pytest.raises(OSError):
        urllib.request.urlopen(endpoint, timeout=2)
    metrics.stop_metrics_server()                     # idempotent
    port = metrics.start_metrics_server("127.0.0.1:0")  # and startable again (the fixture stops it)
    assert port > 0


def test_port_in_use():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(OSError):
            metrics.start_metrics_server(f"127.0.0.1:{s.getsockname()[1]}")
    finally:
        s.close()
    metrics.stop_metrics_server()


def test_ipv6_listen():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        port = metrics.start_metrics_server("[::1]:0")
    except OSError as e:
        pytest.skip(f"IPv6 loopback unavailable: {e}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as r:
            assert b"pgwarden_sessions_active" in r.read()
    finally:
        metrics.stop_metrics_server()


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:9187", ("127.0.0.1", 9187)), ("[::1]:0", ("::1", 0)), (":9187", ("0.0.0.0", 9187)),
    ("localhost:1", ("localhost", 1)),
])
def test_parse_listen(listen, expected):
    assert metrics.parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9187", "host:", "host:x", "host:70000"])
def test_parse_listen_refuses(listen):
    with pytest.raises(ValueError):
        metrics.parse_listen(listen)

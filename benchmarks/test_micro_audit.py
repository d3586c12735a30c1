"""Micro-benchmarks of the recording's write path (pytest-benchmark).

    python -m pytest benchmarks/test_micro_audit.py --benchmark-only

Not collected by ``./dev test`` (pyproject's testpaths is ``tests``); CI runs it
once untimed (tests/test_bench_layout.py), never measures it.  Target (issue
6): one ``statement()`` record written, flushed to the kernel, in well under
50 us, so the recorder never slows the relay.  What
``statement()`` costs is: building the record, ``iso_ts``, the introspection
pre-check, ``orjson.dumps`` with sorted keys, one SHA-256, one buffered write
and one ``write(2)`` (the flush).  fsync = "statement" adds a disk round trip
per record and is excluded here (it is an operator's choice of safety over
speed; see docs/audit.md).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks import median_s
from proxy.audit import record as R
from proxy.audit.config import AuditConfig
from proxy.audit.introspection import is_introspection
from proxy.audit.writer import RecorderFactory

TARGET_S = 50e-6
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
CATALOG_SQL = ("SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c "
               "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
               "WHERE c.relname OPERATOR(pg_catalog.~) '^(accounts)$' AND pg_catalog.pg_table_is_visible(c.oid)")


@pytest.fixture
def recorder(tmp_path):
    factory = RecorderFactory(AuditConfig(dir=tmp_path, fsync="session"), Ed25519PrivateKey.generate())
    rec = factory.open(grant="g-bench")
    rec.start(client_addr="127.0.0.1:5000", tls="TLSv1.3", user="alice", database="appdb", scope="read")
    yield rec
    rec.end("client_closed")


def test_statement_record(benchmark, recorder):
    """The relay's call for an allowed, extended-protocol statement with one parameter."""
    started = recorder._clock()

    def one():
        recorder.statement(SQL, params=["42"], statement_class="read", decision="allowed",
                           rule="read.select", started=started, duration=0.0004, tag="SELECT 1",
                           via="execute")

    benchmark(one)
    assert not recorder.failed
    median = median_s(benchmark)
    assert median is None or median < TARGET_S, f"median {median * 1e6:.1f} us"


def test_statement_record_denied(benchmark, recorder):
    def one():
        recorder.statement("delete from accounts", statement_class="write", decision="denied",
                           rule="write.delete", duration=0.0, sqlstate="42501",
                           message="pgwarden: DELETE is write class; this grant's scope is read")

    benchmark(one)
    median = median_s(benchmark)
    assert median is None or median < TARGET_S


def test_statement_record_catalog_query(benchmark, recorder):
    """psql's \\d: the introspection check runs on every catalog query (cached by exact text)."""
    benchmark(lambda: recorder.statement(CATALOG_SQL, statement_class="read", tag="SELECT 1"))
    median = median_s(benchmark)
    assert median is None or median < TARGET_S


def test_chain_line_only(benchmark):
    """Serialise and chain one record, no I/O: the pure part of statement()."""
    chain = R.Chain()

    def one():
        chain.line(R.STATEMENT, 1_767_225_600.123456, {
            "text": SQL, "class": "read", "decision": "allowed", "rule": "read.select",
            "started": "2026-01-01T00:00:00.123000Z", "duration_ms": 0.4, "via": "execute",
            "params": ["42"], "tag": "SELECT 1", "rows": 1})

    benchmark(one)


def test_introspection_uncached(benchmark):
    """A catalog query seen for the first time (tokenised and checked)."""
    from proxy.audit import introspection

    benchmark(introspection._check, CATALOG_SQL)


def test_introspection_fast_path(benchmark):
    """The common case: no pg_ / information_schema in the text at all."""
    benchmark(is_introspection, SQL)

"""Micro-benchmarks of the policy path (pytest-benchmark).

    python -m pytest benchmarks/test_micro_policy.py --benchmark-only

Not collected by ``./dev test`` (pyproject's testpaths is ``tests``); CI runs it
once untimed (tests/test_bench_layout.py), never measures it.  What a
statement costs pgwarden before it is forwarded:

- classification cold (pglast parse + rules), per statement shape;
- cached by exact text (extended protocol re-sends the same Parse text);
- cached by masked literals (``-M simple``, psycopg2, ORMs: the same statement
  with other literals), through the ``ClassificationCache`` and through the
  proxy's ``Judge`` (cache + scope decision + verdict memo).  Target (issue
  7): under 10 us;
- the masked key alone (libpg_query's scanner via ctypes, and pglast.scan);
- token verification (Ed25519 signature + claims), paid once per connection.
"""

from __future__ import annotations

import itertools
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks import median_s
from policy import tokens
from policy.cache import ClassificationCache
from policy.sql.classify import classify
from policy.sql.masked import masked_key_c, masked_key_ctypes, masked_key_portable
from proxy.session.judge import Judge

MASKED_TARGET_S = 10e-6

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = 77120;"
INSERT = "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, {}, 231, CURRENT_TIMESTAMP);"
CATALOG = ("SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n "
           "ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(accounts{})$' "
           "AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;")
SHAPES = {"select": SELECT, "update": UPDATE, "insert": INSERT, "catalog": CATALOG}


def _fresh_texts(shape: str):
    """An endless supply of the statement with a literal never seen before."""
    template = SHAPES[shape]
    return (template.format(i) for i in itertools.count(1_000_000))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_classify_cold(benchmark, shape):
    texts = _fresh_texts(shape)
    benchmark(lambda: classify(next(texts)))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_cache_exact_hit(benchmark, shape):
    cache = ClassificationCache()
    sql = SHAPES[shape].format(1)
    cache.put(sql, classify(sql))
    result = benchmark(cache.get, sql)
    assert result is not None


@pytest.mark.parametrize("shape", list(SHAPES))
def test_cache_masked_hit(benchmark, shape):
    """A statement seen before with different literals: ClassificationCache.get."""
    cache = ClassificationCache()
    sql = SHAPES[shape].format(1)
    cache.put(sql, classify(sql))
    texts = _fresh_texts(shape)
    result = benchmark(lambda: cache.get(next(texts)))
    assert result is not None and cache.masked_hits > 0
    median = median_s(benchmark)
    assert median is None or median < MASKED_TARGET_S, f"median {median * 1e6:.1f} us"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_judge_masked_hit(benchmark, shape):
    """What the relay calls for a -M simple statement: Judge (cache, decision, verdict memo)."""
    judge = Judge()
    judge(SHAPES[shape].format(1), "write", {})
    texts = _fresh_texts(shape)
    verdict = benchmark(lambda: judge(next(texts), "write", {}))
    assert verdict.allowed
    median = median_s(benchmark)
    assert median is None or median < MASKED_TARGET_S, f"median {median * 1e6:.1f} us"


def test_judge_exact_hit(benchmark):
    judge = Judge()
    sql = SELECT.format(1)
    judge(sql, "write", {})
    assert benchmark(judge, sql, "write", {}).allowed


KEYS = [pytest.param(f, id=name) for name, f in (("c", masked_key_c), ("ctypes", masked_key_ctypes),
                                                 ("pglast.scan", masked_key_portable)) if f is not None]


@pytest.mark.parametrize("impl", KEYS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_masked_key(benchmark, impl, shape):
    sql = SHAPES[shape].format(12345)
    assert benchmark(impl, sql) is not None


@pytest.fixture(scope="module")
def signed():
    key = Ed25519PrivateKey.generate()
    now = time.time()
    token = tokens.mint(key, kid="k1", sub="alice", db="appdb", scope="read", audience="pgwarden", now=now,
                        ttl=3600, reason="benchmark", ticket="T-1", approver="bob")
    return token, {"k1": key.public_key()}, now


def test_token_verify(benchmark, signed):
    token, keys, now = signed
    claims = benchmark(tokens.verify, token, keys, now=now, audience="pgwarden", user="alice", database="appdb")
    assert claims.scope == "read"

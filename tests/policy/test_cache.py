"""The classification cache: exact text, masked literals, bounds, and what it must never conflate."""

from __future__ import annotations

import pytest
from pglast import fingerprint

from policy.cache import ClassificationCache, masked_key
from policy.sql.classify import StatementClass, classify

C = StatementClass


def _through(cache: ClassificationCache, sql: str, **kw):
    """What the proxy does: cache hit, or classify and remember."""
    found = cache.get(sql)
    if found is None:
        found = classify(sql, **kw)
        cache.put(sql, found)
    return found


def test_exact_text_hit():
    cache = ClassificationCache()
    first = _through(cache, "SELECT * FROM t WHERE a = 1")
    assert cache.get("SELECT * FROM t WHERE a = 1") is first
    assert (cache.hits, cache.misses) == (1, 1)


def test_masked_literals_hit_for_literal_independent_statements():
    cache = ClassificationCache()
    first = _through(cache, "SELECT * FROM t WHERE a = 1 AND b = 'x'")
    assert cache.get("SELECT * FROM t WHERE a = 42 AND b = 'something else'") is first
    assert cache.get("SELECT * FROM t WHERE a = 7 AND b = $$y$$") is first
    assert cache.masked_hits == 2
    # the key keeps the text between tokens byte for byte: other whitespace is another key
    assert cache.get("SELECT  *  FROM t  WHERE a = 7 AND b = 'y'") is None
    commented = _through(cache, "SELECT * FROM t WHERE a = 1 /* trace=1 */")
    assert cache.get("SELECT * FROM t WHERE a = 2 /* trace=2, other comment */") is commented
    ins = _through(cache, "INSERT INTO t VALUES (1, 'a')")
    assert cache.get("INSERT INTO t VALUES (2, 'b')") is ins


def test_masked_key_keeps_token_kinds_and_identifiers():
    assert masked_key("SELECT 1") == masked_key("SELECT 2")
    assert masked_key("SELECT 1") != masked_key("SELECT '1'")
    assert masked_key("SELECT 1") != masked_key("SELECT 1.5")
    assert masked_key("SELECT a FROM t") != masked_key("SELECT a FROM u")
    assert masked_key("SELECT lower(x)") != masked_key("SELECT pg_read_file(x)")
    assert masked_key("SELECT \"A\"") != masked_key("SELECT \"B\"")


@pytest.mark.parametrize("first,second", [
    ("SET ROLE 'none'", "SET ROLE 'admin'"),
    ("SET search_path = 'pg_catalog, public'", "SET search_path = 'public, pg_catalog'"),
    ("SELECT set_config('application_name', 'x', false)", "SELECT set_config('role', 'x', false)"),
    ("SET application_name = 'a'", "SET default_transaction_read_only = 'off'"),
    ("SET standard_conforming_strings = on", "SET standard_conforming_strings = off"),
])
def test_never_conflates_literal_dependent_statements(first, second):
    # pglast's fingerprint does conflate (some of) them: that is why it is never a key
    if "SET ROLE" in first or "search_path" in first:
        assert fingerprint(first) == fingerprint(second)
    cache = ClassificationCache()
    a = _through(cache, first)
    b = _through(cache, second)
    assert a.statements[0].statement_class is not b.statements[0].statement_class
    assert cache.get(second) is b


def test_mixed_statements_are_not_masked():
    cache = ClassificationCache()
    _through(cache, "SELECT 1; SET application_name = 'x'")
    assert cache.get("SELECT 2; SET application_name = 'y'") is None


def test_execute_is_never_cached():
    cache = ClassificationCache()
    _through(cache, "EXECUTE p", prepared={"p": C.READ})
    assert cache.get("EXECUTE p") is None
    assert len(cache) == 0


def test_nul_and_surrogates_never_get_masked_hits():
    cache = ClassificationCache()
    _through(cache, "SELECT 1;")
    assert cache.get("SELECT 2;\x00 DROP TABLE t") is None
    assert cache.get("SELECT '\ud800';") is None
    assert masked_key("SELECT 'unterminated") is None


def test_denials_are_cached_by_exact_text_only():
    cache = ClassificationCache()
    bad = _through(cache, "SELEC 1")
    assert cache.get("SELEC 1") is bad
    assert cache.get("SELEC 2") is None


def test_long_text_is_not_cached():
    cache = ClassificationCache(max_text_length=100)
    sql = "SELECT " + "1, " * 50 + "1"
    _through(cache, sql)
    assert len(cache) == 0 and cache.get(sql) is None


def test_lru_bound_by_entries():
    cache = ClassificationCache(max_entries=4)
    for i in range(3):
        _through(cache, f"CREATE TABLE t{i} (a int)")  # not literal independent: one key each
    cache.get("CREATE TABLE t0 (a int)")  # t0 becomes most recent
    _through(cache, "CREATE TABLE t3 (a int)")
    _through(cache, "CREATE TABLE t4 (a int)")
    assert len(cache) == 4
    assert cache.get("CREATE TABLE t0 (a int)") is not None
    assert cache.get("CREATE TABLE t1 (a int)") is None


def test_lru_bound_by_characters():
    cache = ClassificationCache(max_chars=200)
    for i in range(20):
        _through(cache, f"CREATE TABLE table_number_{i} (a int)")
    assert cache._chars <= 200  # noqa: SLF001
    assert cache.get("CREATE TABLE table_number_19 (a int)") is not None
    assert cache.get("CREATE TABLE table_number_0 (a int)") is None


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        ClassificationCache(max_entries=0)


def test_clear():
    cache = ClassificationCache()
    _through(cache, "SELECT 1")
    cache.clear()
    assert len(cache) == 0 and cache.get("SELECT 1") is None

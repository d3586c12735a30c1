"""The masked-literal cache: a masked hit always gives what classifying the text would give.

The classifier says, per statement, whether a literal's value could change
its class (``Statement.literal_independent``); the cache answers by masked
key only for such statements.  These tests take the policy corpus (every
statement the classifier tests and the client captures use), put each one in
a cache, then look up the same statement with other literal values and check
that any hit equals an uncached classification of the new text, in every
scope.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast.parser import scan

from policy.cache import ClassificationCache
from policy.decision import decide
from policy.scopes import DEFAULT_SCOPES
from policy.sql import masked
from policy.sql.classify import StatementClass, classify
from policy.sql.masked import masked_key, masked_key_c, masked_key_ctypes, masked_key_portable

FAST_KEYS = [pytest.param(f, id=name) for name, f in (("c", masked_key_c), ("ctypes", masked_key_ctypes))
             if f is not None]
from tests.policy.test_classify import MULTI, ROWS
from tests.policy.test_classify_clients import CLIENTS

C = StatementClass
SCOPES = sorted(DEFAULT_SCOPES)

# Statements where a literal decides (or could decide) the class: the corpus must hold them.
LITERAL_DEPENDENT = [
    "SELECT set_config('application_name', 'x', false)",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT pg_catalog.set_config('search_path', 'public', false)",
    "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'application_name'",
    "SELECT 'pg_read_file'::regproc",
    "SELECT regproc 'pg_read_file'",
    "SELECT 'pg_class'::pg_catalog.regclass::oid",
    "SELECT to_regproc('pg_read_file')",
    "SELECT CAST('x' AS varchar(10))",
    "SELECT interval '1' day",
    "SET application_name = 'x'",
    "SET default_transaction_read_only = 'off'",
    "SET ROLE 'none'",
    "SET search_path = 'public'",
    "SET client_encoding = 'UTF8'",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "BEGIN READ ONLY",
    "EXPLAIN (ANALYZE 'off') DELETE FROM t",
    "EXPLAIN (ANALYZE 0) DELETE FROM t",
    "COPY t FROM '/etc/passwd'",
    "COPY t TO PROGRAM 'true'",
    "SELECT U&\"pg_read_fil!0065\" UESCAPE '!' ('x')",
    "ALTER SYSTEM SET work_mem = '1MB'",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
]

# Statements clients send with interpolated literals: these must be maskable.
LITERAL_INDEPENDENT = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4021 WHERE aid = 77120;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 5543, 231, CURRENT_TIMESTAMP);",
    "DELETE FROM t WHERE name = 'x' RETURNING id",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 'x'",
    "SELECT * FROM t WHERE a = 1 AND b = 'x' AND c = 1.5 AND d = B'101' AND e = X'1F' AND f = $$y$$",
    "SELECT lower('ABC'), now() - interval '1 day'",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x WHERE a > 0",
    'DECLARE "c" CURSOR FOR SELECT * FROM t WHERE a = 1',
    "COPY (SELECT * FROM t WHERE a = 'x') TO STDOUT",
    "EXPLAIN SELECT * FROM t WHERE a = 1",
    "SELECT nextval('s')",
    "SELECT pg_read_file('/etc/passwd')",  # admin whatever the file: the name decides, not the literal
    "SELECT 1.5::float(24), 2::float8",
]


def _corpus() -> list[str]:
    seen: dict[str, None] = {}
    for sql in [r[0] for r in ROWS] + [m[0] for m in MULTI] + LITERAL_DEPENDENT + LITERAL_INDEPENDENT:
        seen[sql] = None
    for statements, _ in CLIENTS.values():
        for sql in statements:
            seen[sql] = None
    return list(seen)


_KINDS = {"SCONST", "ICONST", "FCONST", "BCONST", "XCONST"}


def _literals(sql: str) -> list[tuple[int, int, str]]:
    """(start, end exclusive, kind) of each maskable literal token, by character offset."""
    try:
        return [(t.start, t.end + 1, t.name) for t in scan(sql) if t.name in _KINDS]
    except Exception:  # noqa: BLE001 - text the scanner rejects has no literal to vary
        return []


CORPUS = _corpus()
WITH_LITERALS = [sql for sql in CORPUS if _literals(sql) and masked_key(sql) is not None]

# Values that change classes when a rule reads them: setting names, guarded values, file names.
INTERESTING = [
    "default_transaction_read_only", "transaction_read_only", "session_replication_role", "role",
    "session_authorization", "application_name", "search_path", "client_encoding",
    "standard_conforming_strings", "jit", "off", "on", "false", "true", "0", "1", "none", "admin",
    "replica", "pg_catalog, public", "public, pg_catalog", "SQL_ASCII", "UTF8", "pg_read_file",
    "pg_class", "/etc/passwd", "read write", "", "x",
]


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _literal_of(kind: str, draw_value) -> str:
    if kind == "SCONST":
        return _sql_string(draw_value("s"))
    if kind == "ICONST":
        return str(draw_value("i"))
    if kind == "FCONST":
        return f"{draw_value('i')}.{draw_value('i') % 1000}"
    if kind == "BCONST":
        return "B'" + format(draw_value("i"), "b") + "'"
    return "X'" + format(draw_value("i"), "X") + "'"


def _vary(sql: str, literal_for) -> str:
    out, pos = [], 0
    for start, end, kind in _literals(sql):
        out.append(sql[pos:start])
        out.append(literal_for(kind))
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def _view(classified):
    return [(s.statement_class, s.rule_id, s.tag, s.reason) for s in classified.statements]


def _check_masked_hit_equals_uncached(original: str, varied: str) -> bool:
    """Prime a cache with ``original``; a lookup of ``varied`` may hit only with the right answer."""
    if masked_key(varied) != masked_key(original):
        return False  # the variation changed token kinds (rare): not a masked lookup
    cache = ClassificationCache()
    first = classify(original)
    cache.put(original, first)
    hit = cache.get(varied)
    if varied == original:
        return True
    if not first.literal_independent:
        assert hit is None, (original, varied)
        return True
    if hit is None:
        return True
    fresh = classify(varied)
    assert _view(hit) == _view(fresh), (original, varied)
    for name in SCOPES:
        scope = DEFAULT_SCOPES[name]
        a, b = decide(scope, hit), decide(scope, fresh)
        assert (a.allowed, a.rule_id, a.message) == (b.allowed, b.rule_id, b.message), (name, original, varied)
    return True


# --------------------------------------------------------------------------- the required scenario


def test_set_config_of_a_guarded_setting_after_a_harmless_one_is_still_denied():
    cache = ClassificationCache()
    scope = DEFAULT_SCOPES["write"]
    verdicts = []
    for sql in ("SELECT set_config('application_name', 'x', false)",
                "SELECT set_config('default_transaction_read_only', 'off', false)"):
        classified = cache.get(sql)
        if classified is None:
            classified = classify(sql)
            cache.put(sql, classified)
        verdicts.append(decide(scope, classified))
    assert verdicts[0].allowed
    assert not verdicts[1].allowed
    assert verdicts[1].statement_class is C.ADMIN
    assert cache.masked_hits == 0


# --------------------------------------------------------------------------- per-statement flags


@pytest.mark.parametrize("sql", LITERAL_DEPENDENT)
def test_literal_dependent_statements_are_not_maskable(sql):
    classified = classify(sql)
    assert not classified.literal_independent
    assert not any(s.literal_independent for s in classified.statements)


@pytest.mark.parametrize("sql", LITERAL_INDEPENDENT)
def test_interpolated_client_statements_are_maskable(sql):
    classified = classify(sql)
    assert classified.literal_independent
    assert all(s.literal_independent for s in classified.statements)


def test_flags_are_per_statement():
    classified = classify("SELECT 1; SET application_name = 'x'; UPDATE t SET a = 2")
    assert [s.literal_independent for s in classified.statements] == [True, False, True]
    assert not classified.literal_independent


def test_unparseable_and_unknown_are_not_maskable():
    assert not classify("SELEC 1").literal_independent
    assert not classify("EXECUTE nope(1)").literal_independent


# --------------------------------------------------------------------------- the key


def test_key_keeps_kinds_identifiers_and_parameters():
    k = masked_key
    assert k("SELECT 1") == k("SELECT 2") == k("SELECT 2147483647")
    assert len({k("SELECT 1"), k("SELECT '1'"), k("SELECT 1.5"), k("SELECT $1"), k("SELECT B'1'"),
                k("SELECT X'1'"), k("SELECT x"), k("SELECT \"1\"")}) == 8
    assert k("SELECT 1") != k("SELECT 5000000000")  # past int4 the scanner says FCONST
    assert k("SET ROLE admin") != k("SET ROLE readonly")
    assert k("SELECT $1") != k("SELECT $2")
    assert k("SELECT 'a'") == k("SELECT $$a$$") == k("SELECT E'\\n'") == k("SELECT 'a'\n'b'")
    assert k("SELECT 1 -- one\n") == k("SELECT 2 -- two\n")
    assert k("SELECT a/**/b") != k("SELECT ab")
    assert k("SELECT U&'\\0041'") != k("SELECT U&'\\0042'")  # Unicode strings stay as written
    # the grammar reads float(p): real up to 24, double precision up to 53, an error past that
    assert k("SELECT 1::float(24)") != k("SELECT 1::float(25)")
    assert k("SELECT 1::FLOAT /* c */ (24)") != k("SELECT 1::FLOAT /* c */ (54)")
    assert k("SELECT 1::float(24)") == k("SELECT 2::float(24)")


@pytest.mark.parametrize("sql", [
    "SELECT 1\x00",
    "SELECT '\ud800'",
    "SELECT 'unterminated",
    "SELECT U&\"pg_read_fil!0065\" UESCAPE '!' ('x')",
    "SELECT U&'d!0061t!+000061' UESCAPE '!'",
])
def test_no_key(sql):
    assert masked_key(sql) is None
    assert masked_key_portable(sql) is None
    for fast in (masked_key_c, masked_key_ctypes):
        assert fast is None or fast(sql) is None


def test_uescape_cannot_smuggle_a_function_name():
    # '#' leaves the name alone (an unvouched function, allowed under write); '!' turns it into pg_read_file
    harmless = "SELECT U&\"pg_read_fil!0065\" UESCAPE '#' ('/etc/passwd')"
    hostile = "SELECT U&\"pg_read_fil!0065\" UESCAPE '!' ('/etc/passwd')"
    cache = ClassificationCache()
    cache.put(harmless, classify(harmless))
    assert cache.get(hostile) is None
    assert classify(hostile).statements[0].statement_class is C.ADMIN


@pytest.mark.parametrize("fast", FAST_KEYS or [pytest.param(None, marks=pytest.mark.skip(
    reason="pglast does not export libpg_query's scanner here"))])
def test_fast_key_equals_portable_key_over_the_corpus(fast):
    for sql in CORPUS + [s + " /* c */ 'é'" for s in CORPUS[:50]] + [s + " float(3) 1" for s in CORPUS[:20]]:
        assert fast(sql) == masked_key_portable(sql), sql


@pytest.mark.parametrize("fast", FAST_KEYS or [pytest.param(None, marks=pytest.mark.skip(
    reason="pglast does not export libpg_query's scanner here"))])
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["SELECT", "float", "FLOAT", "(", ")", "1", "2.5", "'x'", "$$y$$", "E'\\n'",
                                 "B'1'", "X'F'", "-- c\n", "/* d */", "U&'a'", "UESCAPE", "$1", "a", "\"q\"",
                                 ",", "é", "'", "\n", " "]), max_size=30).map(" ".join))
def test_fast_key_equals_portable_key_on_token_soup(fast, sql):
    assert fast(sql) == masked_key_portable(sql)


def test_the_fastest_available_key_is_used():
    assert masked.KEY_IMPL == ("c" if masked_key_c else "ctypes" if masked_key_ctypes else "pglast.scan")
    assert masked_key is (masked_key_c or masked_key_ctypes or masked_key_portable)


# --------------------------------------------------------------------------- masked hit == uncached


def test_corpus_is_large_and_has_both_kinds():
    assert len(WITH_LITERALS) >= 150
    flags = [classify(sql).literal_independent for sql in WITH_LITERALS]
    assert sum(flags) >= 50 and len(flags) - sum(flags) >= 30


@pytest.mark.parametrize("value", INTERESTING)
def test_every_string_literal_replaced_by_an_interesting_value(value):
    for sql in WITH_LITERALS:
        varied = _vary(sql, lambda kind: _sql_string(value) if kind == "SCONST" else _literal_of(kind, lambda _: 7))
        _check_masked_hit_equals_uncached(sql, varied)


_VALUES = {"s": st.one_of(st.sampled_from(INTERESTING), st.text(max_size=12).filter(lambda s: "\x00" not in s)),
           "i": st.integers(min_value=0, max_value=2**31 - 1)}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(WITH_LITERALS), st.data())
def test_masked_hit_equals_uncached_classification(sql, data):
    varied = _vary(sql, lambda kind: _literal_of(kind, lambda v: data.draw(_VALUES[v])))
    try:
        varied.encode("utf-8")
    except UnicodeEncodeError:
        return
    _check_masked_hit_equals_uncached(sql, varied)


def test_rules_read_literal_values_only_through_the_context():
    """A rule that read a literal with const_text() directly would escape Context.literals_read."""
    import ast as pyast
    from pathlib import Path

    import importlib

    classify_mod = importlib.import_module("policy.sql.classify")
    rules_mod = importlib.import_module("policy.sql.rules")
    allowed = {("rules.py", "literal"), ("rules.py", "_explain_analyzes")}   # both mark the context first
    found = set()
    for mod in (rules_mod, classify_mod):
        path = Path(mod.__file__)
        tree = pyast.parse(path.read_text())
        for fn in pyast.walk(tree):
            if isinstance(fn, pyast.FunctionDef):
                for node in pyast.walk(fn):
                    if isinstance(node, pyast.Call) and getattr(node.func, "id", None) == "const_text":
                        found.add((path.name, fn.name))
    assert found <= allowed, found - allowed

"""Hostile input: classify never raises, never allows what it cannot parse, and stays up.

Deep expressions are parsed only on a worker thread with a 64 MiB stack, as
the proxy does: on the main thread pglast's recursive tree conversion can
kill the whole test process with SIGSEGV (STYLE.md §5).
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.decision import decide
from policy.scopes import DEFAULT_SCOPES
from policy.sql.classify import StatementClass, classify
from policy.sql.parse import DEFAULT_MAX_LENGTH, Unparseable, parse
from policy.sql.walk import iter_nodes

U = StatementClass.UNKNOWN
SCOPES = [DEFAULT_SCOPES[name] for name in ("read", "write", "ddl")]


def _denied_everywhere(classified) -> bool:
    return all(not decide(scope, classified).allowed for scope in SCOPES)


def _on_big_stack(fn, *args, **kwargs):
    """Run fn on a thread with a 64 MiB stack (what proxy/net/classify_pool does)."""
    result: list = []
    old = threading.stack_size(64 * 1024 * 1024)
    try:
        t = threading.Thread(target=lambda: result.append(fn(*args, **kwargs)))
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    return result[0]


# --------------------------------------------------------------------------- empty queries


@pytest.mark.parametrize("sql", ["", " ", "\n\t ", ";", ";;  ;", "-- only a comment", "/* c */", "/* a */ ; -- b\n"])
def test_empty_query_is_allowed_everywhere(sql):
    classified = classify(sql)
    assert classified.empty
    for scope in SCOPES:
        d = decide(scope, classified)
        assert d.allowed and d.rule_id == "empty.query" and d.statement_class is None


# --------------------------------------------------------------------------- refused before parsing


@pytest.mark.parametrize("sql,rule", [
    ("SELECT 1;\x00 DROP TABLE x", "parse.nul"),
    ("\x00", "parse.nul"),
    ("SELECT 1\x00", "parse.nul"),
    ("SELECT '\ud800'", "parse.encoding"),
    ("SELECT 1 -- \udfff", "parse.encoding"),
    ("SELECT 'a" + "\udc80" + "'", "parse.encoding"),
])
def test_nul_and_lone_surrogates_are_denied(sql, rule):
    classified = classify(sql)
    stmt = classified.statements[0]
    assert (stmt.statement_class, stmt.rule_id) == (U, rule)
    assert _denied_everywhere(classified)


def test_over_length_text_is_denied_with_the_limit_named():
    sql = "SELECT " + "1, " * 40000 + "1"
    classified = classify(sql)
    stmt = classified.statements[0]
    assert (stmt.statement_class, stmt.rule_id) == (U, "parse.too_long")
    assert str(DEFAULT_MAX_LENGTH) in stmt.reason and str(len(sql)) in stmt.reason
    assert not classified.cacheable
    d = decide(DEFAULT_SCOPES["ddl"], classified)
    assert not d.allowed and "65536" in d.message and "[rule parse.too_long]" in d.message


def test_max_length_is_configurable():
    assert classify("SELECT 1", max_length=8).statements[0].statement_class is StatementClass.READ
    assert classify("SELECT 12", max_length=8).statements[0].rule_id == "parse.too_long"


def test_parse_refuses_non_str():
    with pytest.raises(Unparseable) as e:
        parse(b"SELECT 1", max_length=100)  # type: ignore[arg-type]
    assert e.value.rule_id == "parse.type"
    assert classify(None).statements[0].statement_class is U  # type: ignore[arg-type]


@pytest.mark.parametrize("sql", [
    "SELEC 1", "SELECT (", "SELECT $$unterminated", "SELECT \"unterminated", "DROP", "INSERT INTO",
    "SELECT 1 FROM", ")", "'", "E'\\", "BEGIN; SELECT (; COMMIT", "COPY t FROM",
])
def test_parse_errors_are_denied_everywhere(sql):
    classified = classify(sql)
    assert classified.statements[0].statement_class is U
    assert classified.statements[0].rule_id == "parse.syntax"
    assert _denied_everywhere(classified)


def test_deep_parentheses_fail_cleanly():
    sql = "SELECT " + "(" * 10000 + "1" + ")" * 10000
    classified = _on_big_stack(classify, sql)
    assert classified.statements[0].statement_class is U
    assert _denied_everywhere(classified)


def test_deep_expression_on_a_big_stack_is_classified():
    # 10 000 terms: far past Python's recursion limit, so the walk must be iterative.
    classified = _on_big_stack(classify, "SELECT " + "+".join(["1"] * 10000))
    assert classified.statements[0].statement_class is StatementClass.READ
    classified = _on_big_stack(classify, "SELECT " + "+".join(["1"] * 5000) + " + pg_read_file('x')")
    assert classified.statements[0].statement_class is StatementClass.ADMIN


def test_iter_nodes_is_iterative():
    raw = _on_big_stack(parse, "SELECT " + "+".join(["1"] * 5000), max_length=DEFAULT_MAX_LENGTH)
    assert sum(1 for _ in iter_nodes(raw)) > 10000


def test_a_bug_in_a_rule_fails_closed(monkeypatch):
    from policy.sql import rules

    def boom(node, facts, ctx):
        raise RuntimeError("bug")

    monkeypatch.setitem(rules.HANDLERS, rules.ast.SelectStmt, boom)
    stmt = classify("SELECT 1").statements[0]
    assert (stmt.statement_class, stmt.rule_id) == (U, "unknown.error")


def test_unknown_node_type_is_denied(monkeypatch):
    from policy.sql import rules

    monkeypatch.delitem(rules.HANDLERS, rules.ast.SelectStmt)
    classified = classify("SELECT 1")
    assert classified.statements[0].rule_id == "unknown.node"
    assert _denied_everywhere(classified)


# --------------------------------------------------------------------------- properties

SQL_WORDS = st.sampled_from([
    "SELECT", "INSERT", "INTO", "UPDATE", "DELETE", "FROM", "WHERE", "WITH", "AS", "(", ")", ",", ";",
    "t", "1", "'x'", "$$y$$", "pg_read_file", "set_config", "'role'", "SET", "ROLE", "COPY", "TO",
    "STDOUT", "PROGRAM", "EXPLAIN", "ANALYZE", "DO", "BEGIN", "READ", "WRITE", "FOR", "UPDATE",
    "=", "+", "RETURNING", "*", "nextval", "PREPARE", "EXECUTE", "p", "LOCK", "TABLE", "--", "/*", "*/",
    "\x00", "\ud800", "E'\\''", "U&'\\0041'", "DROP", "GRANT", "CALL", "VALUES", "::", "text",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_text_never_raises_and_unparseable_is_denied(sql):
    classified = classify(sql)
    try:
        raws = parse(sql, max_length=DEFAULT_MAX_LENGTH)
    except Unparseable:
        assert _denied_everywhere(classified)
    else:
        assert len(raws) == len(classified.statements)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SQL_WORDS, max_size=25).map(" ".join))
def test_sql_like_soup_never_raises_and_never_allows_unparseable(sql):
    classified = classify(sql)
    for stmt in classified.statements:
        assert stmt.rule_id and stmt.tag
    try:
        raws = parse(sql, max_length=DEFAULT_MAX_LENGTH)
    except Unparseable:
        assert _denied_everywhere(classified)
        return
    # a statement that calls pg_read_file anywhere is admin (or worse), whatever surrounds it
    for raw, stmt in zip(raws, classified.statements, strict=True):
        calls = {n.funcname[-1].sval for n in iter_nodes(raw) if type(n).__name__ == "FuncCall"}
        if "pg_read_file" in calls:
            assert stmt.statement_class in (StatementClass.ADMIN, U)

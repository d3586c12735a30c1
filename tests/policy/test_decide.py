"""Scopes and decisions: what a denied user reads, and how scopes are configured."""

from __future__ import annotations

import pytest

from policy.decision import Decision, decide, decide_each
from policy.scopes import DEFAULT_SCOPES, Scope, build_scopes, get_scope, scope_allowing
from policy.sql.classify import Classified, Statement, StatementClass, classify

C = StatementClass
READ, WRITE, DDL = (DEFAULT_SCOPES[n] for n in ("read", "write", "ddl"))


def test_denial_message_names_class_scope_hint_and_rule():
    d = decide(READ, classify("INSERT INTO t VALUES (1)"))
    assert d == Decision(
        False, C.WRITE, "write.insert",
        "pgwarden: INSERT is write class; this grant's scope is read (write would allow it) [rule write.insert]",
        "42501", 0,
    )


@pytest.mark.parametrize("scope,sql,message", [
    (WRITE, "DROP TABLE t",
     "pgwarden: DROP TABLE is ddl class; this grant's scope is write (ddl would allow it) [rule ddl.drop_table]"),
    (READ, "PREPARE TRANSACTION 'x'",
     "pgwarden: PREPARE TRANSACTION is two-phase class; this grant's scope is read "
     "(write would allow it) [rule two_phase.prepare_transaction]"),
    (DDL, "DO $$ BEGIN END $$",
     "pgwarden: DO is admin class (DO runs code pgwarden cannot classify); this grant's scope is ddl "
     "(no scope allows it) [rule admin.do]"),
    (READ, "SELECT pg_read_file('/etc/passwd')",
     "pgwarden: SELECT is admin class (pg_read_file() reads or writes files on the database server); "
     "this grant's scope is read (no scope allows it) [rule function.admin]"),
    (READ, "EXPLAIN ANALYZE DELETE FROM t",
     "pgwarden: EXPLAIN ANALYZE is write class (runs DELETE); this grant's scope is read "
     "(write would allow it) [rule write.delete]"),
    (READ, "SELECT my_func()",
     "pgwarden: SELECT is write class (my_func() is not a function pgwarden can vouch for as read-only); "
     "this grant's scope is read (write would allow it) [rule function.unvouched]"),
    (READ, "BEGIN READ WRITE",
     "pgwarden: BEGIN is write class (READ WRITE lifts a read-only session); this grant's scope is read "
     "(write would allow it) [rule write.begin_read_write]"),
    (WRITE, "SELEC 1",
     "pgwarden: cannot classify query (cannot parse query: syntax error at or near \"SELEC\", at index 0), "
     "so it is denied; this grant's scope is write (no scope allows it) [rule parse.syntax]"),
    (READ, "EXECUTE nope",
     "pgwarden: cannot classify EXECUTE (prepared statement 'nope' is not one pgwarden classified), "
     "so it is denied; this grant's scope is read (no scope allows it) [rule execute.unknown]"),
])
def test_denial_messages(scope, sql, message):
    d = decide(scope, classify(sql))
    assert not d.allowed and d.sqlstate == "42501"
    assert d.message == message


def test_multi_statement_denial_names_the_statement():
    d = decide(READ, classify("SELECT 1; SET ROLE admin"))
    assert not d.allowed and d.statement_index == 1 and d.statement_class is C.ADMIN
    assert d.message.startswith("pgwarden: statement 2 of 2: SET is admin class")
    assert d.message.endswith("[rule set.identity]")


def test_first_denied_statement_decides():
    d = decide(READ, classify("DELETE FROM t; DROP TABLE t"))
    assert (d.statement_index, d.rule_id) == (0, "write.delete")


def test_allowed_reports_strongest_statement():
    d = decide(WRITE, classify("SELECT 1; UPDATE t SET a = 1; COMMIT"))
    assert d.allowed and d.statement_class is C.WRITE and d.rule_id == "write.update"
    assert d.sqlstate == "00000" and d.statement_index == 1


def test_decide_each():
    ds = decide_each(READ, classify("SELECT 1; INSERT INTO t VALUES (1)"))
    assert [d.allowed for d in ds] == [True, False]
    assert decide_each(READ, classify("")) == ()


def test_empty_query_allowed():
    d = decide(READ, Classified(()))
    assert d.allowed and d.rule_id == "empty.query" and d.statement_class is None


def test_every_default_scope_allows_transactions_and_reads():
    for scope in DEFAULT_SCOPES.values():
        assert scope.allows(C.READ) and scope.allows(C.TRANSACTION)
        assert not scope.allows(C.ADMIN) and not scope.allows(C.UNKNOWN)
    assert READ.read_only and not WRITE.read_only and not DDL.read_only
    assert not READ.allows(C.TWO_PHASE) and WRITE.allows(C.TWO_PHASE) and DDL.allows(C.TWO_PHASE)


@pytest.mark.parametrize("cls,name", [
    (C.READ, "read"), (C.TRANSACTION, "read"), (C.WRITE, "write"), (C.TWO_PHASE, "write"),
    (C.DDL, "ddl"), (C.ADMIN, None), (C.UNKNOWN, None),
])
def test_scope_allowing(cls, name):
    assert scope_allowing(cls) == name


def test_build_scopes_from_config():
    scopes = build_scopes({"analyst": ["read", "transaction"], "etl": ["read", "transaction", "write"],
                           "owner": ["READ", "transaction", "write", "two-phase", "ddl"]})
    assert scopes["analyst"].read_only and not scopes["etl"].read_only
    assert scope_allowing(C.WRITE, scopes) == "etl"
    assert scope_allowing(C.TWO_PHASE, scopes) == "owner"
    d = decide(scopes["analyst"], classify("UPDATE t SET a = 1"), scopes=scopes)
    assert "(etl would allow it)" in d.message and "this grant's scope is analyst" in d.message


@pytest.mark.parametrize("config,words", [
    ({"x": ["read", "admin"]}, ["'x'", "admin", "never"]),
    ({"x": ["read", "unknown"]}, ["unknown", "never"]),
    ({"x": ["read", "writes"]}, ["'x'", "'writes'", "one of"]),
    ({"x": "read"}, ["must be a list"]),
    ({}, ["no scopes"]),
])
def test_build_scopes_refuses_bad_config(config, words):
    with pytest.raises(ValueError) as e:
        build_scopes(config)
    for w in words:
        assert w in str(e.value)


def test_scope_cannot_allow_admin_directly():
    with pytest.raises(ValueError):
        Scope("root", frozenset({C.ADMIN}))


def test_get_scope():
    assert get_scope("write") is WRITE
    with pytest.raises(KeyError, match="known: read, write, ddl"):
        get_scope("superuser")


def test_decision_for_hand_built_statement():
    c = Classified((Statement(C.DDL, "ddl.x", "CREATE THING"),))
    assert decide(DDL, c).allowed
    assert decide(WRITE, c).message == (
        "pgwarden: CREATE THING is ddl class; this grant's scope is write (ddl would allow it) [rule ddl.x]")

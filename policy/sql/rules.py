"""Per-statement-type rules: what a statement is by its type and structure.

Job: ``by_type(node, facts, ctx)`` returns the ``Verdict`` for one pglast
statement node from its type and its shape alone (functions and operators are
judged by ``policy.sql.classify`` over the whole tree).  Also: ``Facts`` (one
iterative walk collecting what the whole-tree rules need), ``tag_of`` (a
PostgreSQL-style command tag for messages) and literal helpers.

Rules:

* ``HANDLERS`` maps every pglast statement class pgwarden knows to a
  handler; a class not in it is UNKNOWN (fail closed).  Adding a statement
  type means adding it here, with its rule id.
* Rule ids are ``<class>.<what>``: ``read.select``, ``write.insert``,
  ``ddl.create_table``, ``admin.grant``, ``transaction.begin``.
* Wrappers (EXPLAIN ANALYZE, DECLARE, PREPARE, COPY (query), CREATE TABLE AS,
  CREATE SCHEMA's elements) take the class and rule of what they would run
  when that is stronger than their own.
* Table of DESIGN.md decisions kept here: SELECT INTO is ddl; FOR
  UPDATE/SHARE and data-modifying WITH are write; LOCK ... ACCESS SHARE is
  read, other modes write; COPY to/from a file or PROGRAM is admin; EXPLAIN
  without ANALYZE is read; BEGIN/SET TRANSACTION/SET SESSION
  CHARACTERISTICS ... READ WRITE are write (a read scope must not lift its
  read-only session); two-phase commit is its own class; CALL is write (a
  procedure is never vouched for); DO is admin; NOTIFY is write; LISTEN,
  UNLISTEN, DEALLOCATE, DISCARD are transaction; DROP/ALTER/COMMENT of
  server-level objects (roles, databases, extensions, tablespaces, foreign
  servers, publications, subscriptions, languages, event triggers) is admin.
* Literals.  A rule reads a literal's value only through ``ctx.literal(node)``
  (or marks ``ctx.literals_read`` itself, as ``_explain_analyzes`` does for
  option arguments): the masked-literal cache (``policy.cache``) trusts a
  statement's class for other literal values only when no rule read one.
  ``Facts.literal_sensitive`` flags what no rule reads today but where a
  literal names something or shapes the tree: casts to ``reg*`` types
  (``'pg_read_file'::regproc``) and type modifiers (``float(53)`` is a
  different type from ``float(24)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from pglast import ast
from pglast.enums.parsenodes import (
    A_Expr_Kind,
    ObjectType,
    TransactionStmtKind,
    VariableSetKind,
)

from policy.sql.catalog import Catalog
from policy.sql.classes import RANK, StatementClass, Verdict
from policy.sql.walk import iter_nodes

__all__ = ["Facts", "Context", "HANDLERS", "by_type", "tag_of", "names_of", "const_text", "variable_set"]

C = StatementClass

# --------------------------------------------------------------------------- whole-tree facts

_MODIFYING = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_OP_KINDS = frozenset({A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL})


class Facts:
    """What one walk over a statement's tree found."""

    __slots__ = ("calls", "operators", "modifying", "into", "locking", "sets", "executes", "syntax_calls",
                 "literal_sensitive")

    def __init__(self, root: ast.Node) -> None:
        self.calls: list[ast.FuncCall] = []
        self.operators: list[tuple[str, ...]] = []
        self.modifying: list[ast.Node] = []
        self.into = self.locking = self.executes = self.literal_sensitive = False
        self.sets: list[ast.VariableSetStmt] = []
        self.syntax_calls: list[tuple[str, int]] = []
        for n in iter_nodes(root):
            t = type(n)
            if t is ast.FuncCall:
                self.calls.append(n)
            elif t in SQL_JSON_SYNTAX:
                self.syntax_calls.append(_syntax_name(n))
            elif t is ast.A_Expr:
                names = names_of(n.name)
                if names and (n.kind in _OP_KINDS or len(names) > 1):
                    self.operators.append(names)
            elif t is ast.SubLink:
                names = names_of(n.operName)
                if names:
                    self.operators.append(names)
            elif t is ast.SelectStmt:
                if n.intoClause is not None:
                    self.into = True
                if n.lockingClause:
                    self.locking = True
            elif t in _MODIFYING:
                self.modifying.append(n)
            elif t is ast.VariableSetStmt and n is not root:
                self.sets.append(n)
            elif t is ast.ExecuteStmt:
                self.executes = True
            elif t is ast.TypeName:
                if n.typmods or _names_reg_type(n.names):
                    self.literal_sensitive = True


#: SQL/JSON syntax node -> (the function name it reads as on older servers, first version with the syntax).
SQL_JSON_SYNTAX: dict[type, tuple[str, int]] = {
    ast.JsonObjectConstructor: ("json_object", 160000),
    ast.JsonArrayConstructor: ("json_array", 160000),
    ast.JsonArrayQueryConstructor: ("json_array", 160000),
    ast.JsonObjectAgg: ("json_objectagg", 160000),
    ast.JsonArrayAgg: ("json_arrayagg", 160000),
    ast.JsonParseExpr: ("json", 170000),
    ast.JsonScalarExpr: ("json_scalar", 170000),
    ast.JsonSerializeExpr: ("json_serialize", 170000),
    ast.JsonFuncExpr: ("json_query", 170000),
    ast.JsonTable: ("json_table", 170000),
    ast.MergeSupportFunc: ("merge_action", 170000),
}


def _syntax_name(node: ast.Node) -> tuple[str, int]:
    name, since = SQL_JSON_SYNTAX[type(node)]
    if type(node) is ast.JsonFuncExpr:  # JSON_EXISTS_OP -> json_exists ...
        op = getattr(getattr(node, "op", None), "name", "")
        name = "json_" + op.removeprefix("JSON_").removesuffix("_OP").lower() if op else name
    return name, since


#: Object identifier types whose input is a name: a literal cast to one names a function, a relation ...
REG_TYPES = frozenset({
    "regclass", "regcollation", "regconfig", "regdictionary", "regnamespace", "regoper", "regoperator",
    "regproc", "regprocedure", "regrole", "regtype",
})


def _names_reg_type(strings: object) -> bool:
    names = names_of(strings)
    return bool(names) and names[-1].lower() in REG_TYPES


def names_of(strings: object) -> tuple[str, ...]:
    """('pg_catalog', 'lower') from a tuple of ast.String."""
    if not strings:
        return ()
    return tuple(getattr(s, "sval", "") or "" for s in strings)  # type: ignore[union-attr]


def const_text(node: object) -> str | None:
    """A literal's value as text (``TypeCast`` of a literal included), else None."""
    while type(node) is ast.TypeCast:
        node = node.arg
    if type(node) is not ast.A_Const or node.isnull:
        return None
    val = node.val
    t = type(val)
    if t is ast.String:
        return val.sval
    if t is ast.Integer:
        return str(val.ival)
    if t is ast.Float:
        return val.fval
    if t is ast.Boolean:
        return "on" if val.boolval else "off"
    if t is ast.BitString:
        return val.bsval
    return None


# --------------------------------------------------------------------------- context


class Context:
    __slots__ = ("catalog", "prepared", "cacheable", "pinned", "literals_read")

    def __init__(self, catalog: Catalog, prepared: Mapping[str, StatementClass] | None) -> None:
        self.catalog = catalog
        self.prepared: dict[str, StatementClass] = dict(prepared or {})
        self.cacheable = True
        self.pinned: dict[int, str] = {}  # id(FuncCall) -> setting name, see _pinned_setting_names
        # True once a rule looked at a literal's value (or at whether a node is a literal) while
        # classifying the current statement: its class may then differ for other literal values.
        self.literals_read = False

    def literal(self, node: object) -> str | None:
        """``const_text(node)``, remembering that the verdict now depends on a literal."""
        self.literals_read = True
        return const_text(node)


Handler = Callable[[ast.Node, Facts, Context], Verdict]

# --------------------------------------------------------------------------- tags

_TAGS: dict[type, str] = {
    ast.SelectStmt: "SELECT", ast.InsertStmt: "INSERT", ast.UpdateStmt: "UPDATE",
    ast.DeleteStmt: "DELETE", ast.MergeStmt: "MERGE", ast.CopyStmt: "COPY",
    ast.ExplainStmt: "EXPLAIN", ast.DeclareCursorStmt: "DECLARE CURSOR", ast.FetchStmt: "FETCH",
    ast.ClosePortalStmt: "CLOSE", ast.PrepareStmt: "PREPARE", ast.ExecuteStmt: "EXECUTE",
    ast.DeallocateStmt: "DEALLOCATE", ast.CallStmt: "CALL", ast.DoStmt: "DO", ast.LockStmt: "LOCK",
    ast.NotifyStmt: "NOTIFY", ast.ListenStmt: "LISTEN", ast.UnlistenStmt: "UNLISTEN",
    ast.VariableSetStmt: "SET", ast.VariableShowStmt: "SHOW", ast.DiscardStmt: "DISCARD",
    ast.ConstraintsSetStmt: "SET CONSTRAINTS", ast.CreateStmt: "CREATE TABLE",
    ast.CreateTableAsStmt: "CREATE TABLE AS", ast.ViewStmt: "CREATE VIEW", ast.IndexStmt: "CREATE INDEX",
    ast.CreateSeqStmt: "CREATE SEQUENCE", ast.CreateFunctionStmt: "CREATE FUNCTION",
    ast.CreateSchemaStmt: "CREATE SCHEMA", ast.CreatedbStmt: "CREATE DATABASE",
    ast.DropdbStmt: "DROP DATABASE", ast.CreateTrigStmt: "CREATE TRIGGER", ast.RuleStmt: "CREATE RULE",
    ast.DefineStmt: "CREATE", ast.TruncateStmt: "TRUNCATE", ast.CommentStmt: "COMMENT",
    ast.VacuumStmt: "VACUUM", ast.GrantStmt: "GRANT", ast.GrantRoleStmt: "GRANT",
    ast.CheckPointStmt: "CHECKPOINT", ast.LoadStmt: "LOAD", ast.SecLabelStmt: "SECURITY LABEL",
    ast.RefreshMatViewStmt: "REFRESH MATERIALIZED VIEW", ast.CreatePLangStmt: "CREATE LANGUAGE",
    ast.CreateFdwStmt: "CREATE FOREIGN DATA WRAPPER", ast.CreateAmStmt: "CREATE ACCESS METHOD",
    ast.CompositeTypeStmt: "CREATE TYPE", ast.CreateEnumStmt: "CREATE TYPE", ast.CreateRangeStmt: "CREATE TYPE",
    ast.AlterEnumStmt: "ALTER TYPE", ast.AlterSeqStmt: "ALTER SEQUENCE", ast.CreateStatsStmt: "CREATE STATISTICS",
    ast.AlterStatsStmt: "ALTER STATISTICS", ast.CreateEventTrigStmt: "CREATE EVENT TRIGGER",
    ast.AlterEventTrigStmt: "ALTER EVENT TRIGGER", ast.CreateTableSpaceStmt: "CREATE TABLESPACE",
    ast.DropTableSpaceStmt: "DROP TABLESPACE", ast.AlterTableSpaceOptionsStmt: "ALTER TABLESPACE",
    ast.AlterTableMoveAllStmt: "ALTER TABLE ALL IN TABLESPACE", ast.CreateForeignServerStmt: "CREATE SERVER",
    ast.AlterForeignServerStmt: "ALTER SERVER", ast.AlterFdwStmt: "ALTER FOREIGN DATA WRAPPER",
    ast.AlterDatabaseSetStmt: "ALTER DATABASE", ast.AlterDatabaseRefreshCollStmt: "ALTER DATABASE",
    ast.AlterRoleSetStmt: "ALTER ROLE", ast.CreateOpClassStmt: "CREATE OPERATOR CLASS",
    ast.CreateOpFamilyStmt: "CREATE OPERATOR FAMILY", ast.AlterOpFamilyStmt: "ALTER OPERATOR FAMILY",
    ast.AlterTSConfigurationStmt: "ALTER TEXT SEARCH CONFIGURATION",
    ast.AlterTSDictionaryStmt: "ALTER TEXT SEARCH DICTIONARY", ast.ReindexStmt: "REINDEX",
    ast.ClusterStmt: "CLUSTER", ast.AlterDefaultPrivilegesStmt: "ALTER DEFAULT PRIVILEGES",
    ast.AlterSystemStmt: "ALTER SYSTEM", ast.ReassignOwnedStmt: "REASSIGN OWNED", ast.DropOwnedStmt: "DROP OWNED",
}

_TXN_TAGS = {
    TransactionStmtKind.TRANS_STMT_BEGIN: "BEGIN", TransactionStmtKind.TRANS_STMT_START: "START TRANSACTION",
    TransactionStmtKind.TRANS_STMT_COMMIT: "COMMIT", TransactionStmtKind.TRANS_STMT_ROLLBACK: "ROLLBACK",
    TransactionStmtKind.TRANS_STMT_SAVEPOINT: "SAVEPOINT", TransactionStmtKind.TRANS_STMT_RELEASE: "RELEASE",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO SAVEPOINT",
    TransactionStmtKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
    TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
}


_OBJECT_WORDS = {
    "TSCONFIGURATION": "TEXT SEARCH CONFIGURATION", "TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "TSPARSER": "TEXT SEARCH PARSER", "TSTEMPLATE": "TEXT SEARCH TEMPLATE", "MATVIEW": "MATERIALIZED VIEW",
    "FDW": "FOREIGN DATA WRAPPER", "FOREIGN_SERVER": "SERVER", "STATISTIC_EXT": "STATISTICS",
    "OPCLASS": "OPERATOR CLASS", "OPFAMILY": "OPERATOR FAMILY", "TABCONSTRAINT": "CONSTRAINT",
    "DOMCONSTRAINT": "CONSTRAINT", "LARGEOBJECT": "LARGE OBJECT", "PARAMETER_ACL": "PARAMETER",
}


def _object_words(objtype: object) -> str:
    """ObjectType.OBJECT_MATVIEW -> 'MATERIALIZED VIEW'."""
    name = getattr(objtype, "name", "")
    if not name:
        return ""
    name = name.removeprefix("OBJECT_")
    return _OBJECT_WORDS.get(name, name.replace("_", " "))


def _slug(tag: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", tag.lower()).strip("_")


def tag_of(node: ast.Node) -> str:
    """PostgreSQL-style command tag of a statement node (best effort, for messages)."""
    t = type(node)
    if t is ast.TransactionStmt:
        return _TXN_TAGS.get(node.kind, "TRANSACTION")
    if t is ast.DropStmt:
        return f"DROP {_object_words(node.removeType)}".strip()
    if t is ast.FetchStmt:
        return "MOVE" if node.ismove else "FETCH"
    if t is ast.VariableSetStmt:
        return "RESET" if node.kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_RESET_ALL) else "SET"
    if t is ast.CreateTableAsStmt and node.objtype == ObjectType.OBJECT_MATVIEW:
        return "CREATE MATERIALIZED VIEW"
    if t is ast.ExplainStmt and _explain_analyzes(node):
        return "EXPLAIN ANALYZE"
    if t is ast.VacuumStmt and not node.is_vacuumcmd:
        return "ANALYZE"
    if t is ast.RenameStmt:
        return f"ALTER {_object_words(node.renameType)}".strip()
    if t in (ast.AlterOwnerStmt, ast.AlterObjectSchemaStmt):
        return f"ALTER {_object_words(node.objectType)}".strip()
    if t is ast.CommentStmt:
        return f"COMMENT ON {_object_words(node.objtype)}".strip()
    if t is ast.DefineStmt:
        return f"CREATE {_object_words(node.kind)}".strip()
    if t is ast.GrantStmt and not node.is_grant:
        return "REVOKE"
    if t is ast.GrantRoleStmt and not node.is_grant:
        return "REVOKE"
    tag = _TAGS.get(t)
    if tag is None:  # AlterTableStmt -> ALTER TABLE
        tag = " ".join(re.findall(r"[A-Z][a-z]*", t.__name__.removesuffix("Stmt"))).upper()
    return tag


# --------------------------------------------------------------------------- per-type rules


def _inner(node: ast.Node | None, ctx: Context) -> tuple[Verdict, str]:
    """Verdict and tag of a wrapped statement, by type and structure only."""
    if node is None:
        return Verdict(C.UNKNOWN, "unknown.empty_wrapper", "nothing to classify"), "?"
    return by_type(node, Facts(node), ctx), tag_of(node)


def _wrapper(own: Verdict, node: ast.Node | None, ctx: Context) -> Verdict:
    """``own`` unless the wrapped statement is stronger; then its class and rule."""
    inner, tag = _inner(node, ctx)
    if RANK[inner.statement_class] > RANK[own.statement_class]:
        why = f"runs {tag}" + (f": {inner.reason}" if inner.reason else "")
        return Verdict(inner.statement_class, inner.rule_id, why)
    return own


def _select(node, facts, ctx) -> Verdict:
    if facts.into:
        return Verdict(C.DDL, "ddl.select_into", "SELECT INTO creates a table")
    if facts.modifying:
        return Verdict(C.WRITE, "write.modifying_cte",
                       f"it contains a data-modifying {tag_of(facts.modifying[0])}")
    if facts.locking:
        return Verdict(C.WRITE, "write.select_locking", "FOR UPDATE/SHARE locks rows")
    return Verdict(C.READ, "read.select", "")


def _modify(node, facts, ctx) -> Verdict:
    tag = tag_of(node)
    return Verdict(C.WRITE, f"write.{tag.lower()}", "")


def _copy(node, facts, ctx) -> Verdict:
    if node.is_program or node.filename is not None:
        ctx.literals_read = True  # a file name or a command: never judged by its shape alone
    if node.is_program:
        return Verdict(C.ADMIN, "admin.copy_program", "COPY ... PROGRAM runs a command on the server")
    if node.filename is not None:
        return Verdict(C.ADMIN, "admin.copy_file", "COPY to or from a file reads or writes server files")
    if node.is_from:
        return Verdict(C.WRITE, "write.copy_from", "")
    own = Verdict(C.READ, "read.copy_to", "")
    return _wrapper(own, node.query, ctx) if node.query is not None else own


_FALSE = frozenset({"false", "off", "no", "0", "f", "n", "of", "fa", "fal", "fals"})


def _explain_analyzes(node: ast.ExplainStmt, ctx: Context | None = None) -> bool:
    for opt in node.options or ():
        if type(opt) is ast.DefElem and opt.defname == "analyze":
            if opt.arg is None:
                return True
            if ctx is not None:
                ctx.literals_read = True  # ANALYZE 'off', ANALYZE 0: the value decides
            arg = opt.arg
            text = (arg.sval if type(arg) is ast.String else str(arg.ival) if type(arg) is ast.Integer
                    else ("on" if arg.boolval else "off") if type(arg) is ast.Boolean else const_text(arg))
            return text is None or text.strip().lower() not in _FALSE  # unknown spelling: assume it runs
    return False


def _explain(node, facts, ctx) -> Verdict:
    if _explain_analyzes(node, ctx):
        return _wrapper(Verdict(C.READ, "read.explain_analyze", ""), node.query, ctx)
    return Verdict(C.READ, "read.explain", "EXPLAIN without ANALYZE does not run the statement")


def _declare(node, facts, ctx) -> Verdict:
    return _wrapper(Verdict(C.READ, "read.declare", ""), node.query, ctx)


def _prepare(node, facts, ctx) -> Verdict:
    return _wrapper(Verdict(C.READ, "read.prepare", ""), node.query, ctx)


def _execute(node, facts, ctx) -> Verdict:
    ctx.cacheable = False
    cls = ctx.prepared.get(node.name)
    if cls is None:
        return Verdict(C.UNKNOWN, "execute.unknown",
                       f"prepared statement {node.name!r} is not one pgwarden classified")
    return Verdict(StatementClass(cls), "execute.prepared",
                   f"prepared statement {node.name!r} is {StatementClass(cls)} class")


def _lock(node, facts, ctx) -> Verdict:
    if node.mode == 1:  # AccessShareLock: the lock SELECT takes (DESIGN.md, Decisions)
        return Verdict(C.READ, "read.lock_access_share", "")
    return Verdict(C.WRITE, "write.lock", "LOCK in a mode stronger than ACCESS SHARE")


def _lifts_read_only(defelems: object, ctx: Context) -> bool:
    """BEGIN READ WRITE, SET TRANSACTION READ WRITE, SET SESSION CHARACTERISTICS ... READ WRITE."""
    for d in defelems or ():  # type: ignore[union-attr]
        if type(d) is ast.DefElem and d.defname == "transaction_read_only":
            text = ctx.literal(d.arg)
            if text is None or text.strip().lower() in _FALSE:
                return True
    return False


def _transaction(node, facts, ctx) -> Verdict:
    kind = node.kind
    K = TransactionStmtKind
    if kind in (K.TRANS_STMT_PREPARE, K.TRANS_STMT_COMMIT_PREPARED, K.TRANS_STMT_ROLLBACK_PREPARED):
        return Verdict(C.TWO_PHASE, "two_phase." + _TXN_TAGS[kind].lower().replace(" ", "_"), "")
    if kind in (K.TRANS_STMT_BEGIN, K.TRANS_STMT_START) and _lifts_read_only(node.options, ctx):
        return Verdict(C.WRITE, "write.begin_read_write", "READ WRITE lifts a read-only session")
    return Verdict(C.TRANSACTION, "transaction." + _TXN_TAGS.get(kind, "other").lower().replace(" ", "_"), "")


def _set_values(args: object, ctx: Context) -> tuple[str, ...] | None:
    values = []
    for a in args or ():  # type: ignore[union-attr]
        text = ctx.literal(a)
        if text is None:
            return None
        values.append(text)
    return tuple(values)


def variable_set(node, facts, ctx) -> Verdict:
    K = VariableSetKind
    kind = node.kind
    if kind == K.VAR_SET_MULTI:
        name = (node.name or "").upper()
        if name in ("TRANSACTION", "SESSION CHARACTERISTICS"):
            if _lifts_read_only(node.args, ctx):
                return Verdict(C.WRITE, "write.read_write", "READ WRITE lifts a read-only session")
            return Verdict(C.TRANSACTION, "transaction.set_transaction", "")
        if name == "TRANSACTION SNAPSHOT":
            return Verdict(C.TRANSACTION, "transaction.snapshot", "")
        return Verdict(C.UNKNOWN, "unknown.set", f"SET {name} is not a form pgwarden knows")
    if kind == K.VAR_RESET_ALL:
        return Verdict(C.TRANSACTION, "set.reset_all", "")
    if node.name is None:
        return Verdict(C.UNKNOWN, "unknown.set", "SET without a setting name")
    if kind in (K.VAR_RESET, K.VAR_SET_DEFAULT, K.VAR_SET_CURRENT):
        return ctx.catalog.setting_verdict(node.name, None, reset=True)
    if kind == K.VAR_SET_VALUE:
        return ctx.catalog.setting_verdict(node.name, _set_values(node.args, ctx))
    return Verdict(C.UNKNOWN, "unknown.set", f"SET form {kind!r} is not one pgwarden knows")


_ADMIN_OBJECTS = frozenset({
    ObjectType.OBJECT_ACCESS_METHOD, ObjectType.OBJECT_DATABASE, ObjectType.OBJECT_EVENT_TRIGGER,
    ObjectType.OBJECT_EXTENSION, ObjectType.OBJECT_FDW, ObjectType.OBJECT_FOREIGN_SERVER,
    ObjectType.OBJECT_LANGUAGE, ObjectType.OBJECT_PARAMETER_ACL, ObjectType.OBJECT_PUBLICATION,
    ObjectType.OBJECT_PUBLICATION_NAMESPACE, ObjectType.OBJECT_PUBLICATION_REL, ObjectType.OBJECT_ROLE,
    ObjectType.OBJECT_SUBSCRIPTION, ObjectType.OBJECT_TABLESPACE, ObjectType.OBJECT_USER_MAPPING,
})


def _by_object(attr: str) -> Handler:
    """DDL, unless the object is server-level (a role, a database, an extension ...): ADMIN."""
    def handler(node, facts, ctx) -> Verdict:
        objtype = getattr(node, attr, None)
        if objtype in _ADMIN_OBJECTS:
            return Verdict(C.ADMIN, f"admin.{_slug(tag_of(node))}",
                           f"{_object_words(objtype).lower()} objects are server-level")
        return Verdict(C.DDL, f"ddl.{_slug(tag_of(node))}", "")
    return handler


def _create_schema(node, facts, ctx) -> Verdict:
    v = Verdict(C.DDL, "ddl.create_schema", "")
    for element in node.schemaElts or ():
        v = _wrapper(v, element, ctx)  # CREATE SCHEMA s GRANT ... is a GRANT
    return v


def _create_table_as(node, facts, ctx) -> Verdict:
    return _wrapper(Verdict(C.DDL, f"ddl.{_slug(tag_of(node))}", ""), node.query, ctx)


def _fixed(cls: StatementClass, rule: str, reason: str = "") -> Handler:
    verdict = Verdict(cls, rule, reason)
    return lambda node, facts, ctx: verdict


def _tagged(cls: StatementClass) -> Handler:
    """A fixed class with the rule named after the command: ddl.create_table, admin.grant."""
    return lambda node, facts, ctx: Verdict(cls, f"{cls.value}.{_slug(tag_of(node))}", "")


_NOT_RUN = "runs code pgwarden cannot classify"
HANDLERS: dict[type, Handler] = {
    ast.SelectStmt: _select, ast.InsertStmt: _modify, ast.UpdateStmt: _modify,
    ast.DeleteStmt: _modify, ast.MergeStmt: _modify, ast.CopyStmt: _copy,
    ast.ExplainStmt: _explain, ast.DeclareCursorStmt: _declare, ast.PrepareStmt: _prepare,
    ast.ExecuteStmt: _execute, ast.LockStmt: _lock, ast.TransactionStmt: _transaction,
    ast.VariableSetStmt: variable_set, ast.CreateSchemaStmt: _create_schema,
    ast.CreateTableAsStmt: _create_table_as,
    ast.DropStmt: _by_object("removeType"), ast.RenameStmt: _by_object("renameType"),
    ast.AlterOwnerStmt: _by_object("objectType"), ast.AlterObjectSchemaStmt: _by_object("objectType"),
    ast.CommentStmt: _by_object("objtype"),
    ast.FetchStmt: _fixed(C.READ, "read.fetch"), ast.ClosePortalStmt: _fixed(C.READ, "read.close"),
    ast.VariableShowStmt: _fixed(C.READ, "read.show"),
    ast.DeallocateStmt: _fixed(C.TRANSACTION, "transaction.deallocate"),
    ast.DiscardStmt: _fixed(C.TRANSACTION, "transaction.discard"),
    ast.ListenStmt: _fixed(C.TRANSACTION, "transaction.listen"),
    ast.UnlistenStmt: _fixed(C.TRANSACTION, "transaction.unlisten"),
    ast.ConstraintsSetStmt: _fixed(C.TRANSACTION, "transaction.set_constraints"),
    ast.NotifyStmt: _fixed(C.WRITE, "write.notify", "NOTIFY is seen by other sessions"),
    ast.CallStmt: _fixed(C.WRITE, "write.call", "a procedure can change data"),
    ast.DoStmt: _fixed(C.ADMIN, "admin.do", f"DO {_NOT_RUN}"),
}

_DDL_TYPES = (
    ast.AlterCollationStmt, ast.AlterDomainStmt, ast.AlterEnumStmt, ast.AlterFunctionStmt,
    ast.AlterObjectDependsStmt, ast.AlterOpFamilyStmt, ast.AlterOperatorStmt, ast.AlterPolicyStmt,
    ast.AlterSeqStmt, ast.AlterStatsStmt, ast.AlterTSConfigurationStmt, ast.AlterTSDictionaryStmt,
    ast.AlterTableStmt, ast.AlterTypeStmt, ast.ClusterStmt, ast.CompositeTypeStmt,
    ast.CreateCastStmt, ast.CreateConversionStmt, ast.CreateDomainStmt, ast.CreateEnumStmt,
    ast.CreateForeignTableStmt, ast.CreateFunctionStmt, ast.CreateOpClassStmt,
    ast.CreateOpFamilyStmt, ast.CreatePolicyStmt, ast.CreateRangeStmt, ast.CreateSeqStmt,
    ast.CreateStatsStmt, ast.CreateStmt, ast.CreateTransformStmt, ast.CreateTrigStmt,
    ast.DefineStmt, ast.ImportForeignSchemaStmt, ast.IndexStmt, ast.RefreshMatViewStmt,
    ast.ReindexStmt, ast.RuleStmt, ast.TruncateStmt, ast.VacuumStmt, ast.ViewStmt,
)
_ADMIN_TYPES = (
    ast.GrantStmt, ast.GrantRoleStmt, ast.AlterDefaultPrivilegesStmt, ast.CreateRoleStmt,
    ast.AlterRoleStmt, ast.AlterRoleSetStmt, ast.DropRoleStmt, ast.ReassignOwnedStmt,
    ast.DropOwnedStmt, ast.AlterSystemStmt, ast.LoadStmt, ast.CreateExtensionStmt,
    ast.AlterExtensionStmt, ast.AlterExtensionContentsStmt, ast.CheckPointStmt, ast.CreatedbStmt,
    ast.DropdbStmt, ast.AlterDatabaseStmt, ast.AlterDatabaseSetStmt,
    ast.AlterDatabaseRefreshCollStmt, ast.CreateSubscriptionStmt, ast.AlterSubscriptionStmt,
    ast.DropSubscriptionStmt, ast.CreatePublicationStmt, ast.AlterPublicationStmt,
    ast.CreateEventTrigStmt, ast.AlterEventTrigStmt, ast.SecLabelStmt, ast.CreateTableSpaceStmt,
    ast.DropTableSpaceStmt, ast.AlterTableSpaceOptionsStmt, ast.AlterTableMoveAllStmt,
    ast.CreatePLangStmt, ast.CreateFdwStmt, ast.AlterFdwStmt, ast.CreateForeignServerStmt,
    ast.AlterForeignServerStmt, ast.CreateUserMappingStmt, ast.AlterUserMappingStmt,
    ast.DropUserMappingStmt, ast.CreateAmStmt,
)
HANDLERS.update(dict.fromkeys(_DDL_TYPES, _tagged(C.DDL)))
HANDLERS.update(dict.fromkeys(_ADMIN_TYPES, _tagged(C.ADMIN)))


def by_type(node: ast.Node, facts: Facts, ctx: Context) -> Verdict:
    handler = HANDLERS.get(type(node))
    if handler is None:
        return Verdict(C.UNKNOWN, "unknown.node", f"pgwarden does not know {type(node).__name__}")
    return handler(node, facts, ctx)

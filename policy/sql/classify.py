"""Classify SQL text: one ``StatementClass`` and one rule per statement.

Job: ``classify(sql, ...)`` parses a query string (``policy.sql.parse``) and
returns a ``Classified``: for each statement its class, the id of the rule
that decided it, a tag (``INSERT``, ``EXPLAIN ANALYZE``) and a reason.

Rules (DESIGN.md "Scopes and statements"; its "Decisions" section wins):

* Fail closed.  Text that cannot be parsed, a statement type this module
  does not list, ``EXECUTE`` of a name nobody prepared: class UNKNOWN,
  which no scope allows.  ``classify`` never raises.
* Whole tree first.  Every function call, operator, data-modifying statement
  and nested ``SET`` anywhere in the statement (CTEs, subqueries, VALUES,
  defaults, ``EXECUTE`` parameters, function bodies written as SQL) is looked
  up in the catalog, and the strongest finding wins over the per-type rule
  (``classes.RANK``).  On a tie the per-type rule is reported.
* Per type: ``policy.sql.rules`` (``HANDLERS``: one handler per pglast
  statement class, with its rule id).
* SQL-level prepared statements: ``PREPARE`` reports the name and the class
  it prepared (``Statement.prepares``); ``EXECUTE`` takes the class the caller
  remembered (``prepared=``), or one prepared earlier in the same text.  The
  proxy must record protocol-level Parse names in the same mapping: the
  server has one namespace for both.
* Literals (DESIGN.md: the masked-literal key is used "only for statements
  whose class does not depend on any literal's value").  Each
  ``Statement.literal_independent`` is True only when all of these hold,
  else False (fail closed: the statement is cached by exact text only):
  its type is one of ``_LITERAL_SAFE_TYPES`` (SELECT, INSERT, UPDATE,
  DELETE, MERGE, DECLARE, EXPLAIN, COPY: the statements clients send with
  interpolated literals); it is not UNKNOWN; no rule read a literal while
  classifying it (``Context.literal``: set_config's setting name, SET values,
  READ WRITE, EXPLAIN options, COPY file names and programs ...); it calls
  no ``set_config`` and no ``to_reg*`` function; and it casts nothing to a
  ``reg*`` type and has no type modifier (``Facts.literal_sensitive``); and
  the text has no ``UESCAPE`` (the parser folds that literal into the
  identifier or string before it, so no rule could see it).
  ``Classified.literal_independent`` is True when every statement is.
  ``Classified.cacheable`` is False when the result depends on session
  state (``EXECUTE``).

What this cannot see: what views, rules, triggers, defaults and functions do
when they run, or a function called through attribute notation (``t.f``).
Scope roles and ``default_transaction_read_only`` on the server cover those
(defense in depth).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

from pglast import ast
from pglast.enums.parsenodes import A_Expr_Kind, DiscardMode, SetOperation

from policy.sql.catalog import DEFAULT_CATALOG, Catalog
from policy.sql.classes import RANK, StatementClass, Verdict
from policy.sql.parse import DEFAULT_MAX_LENGTH, Unparseable, parse
from policy.sql.rules import REG_TYPES, Context, Facts, by_type, names_of, tag_of, variable_set

__all__ = ["Statement", "Classified", "StatementClass", "classify", "classify_statements"]

C = StatementClass


@dataclass(frozen=True, slots=True)
class Statement:
    """One classified statement."""

    statement_class: StatementClass
    rule_id: str
    tag: str                      # what it is, in PostgreSQL's words: "INSERT", "DROP TABLE"
    reason: str = ""              # why, when the tag alone does not say: "pg_read_file() reads ..."
    prepares: str | None = None   # PREPARE: the name it defines, with class statement_class
    deallocates: str | None = None  # DEALLOCATE name
    deallocates_all: bool = False   # DEALLOCATE ALL, DISCARD ALL
    literal_independent: bool = False  # no literal's value can change this result (see module doc)


@dataclass(frozen=True, slots=True)
class Classified:
    """The statements of one query string, in order.  ``()`` is the empty query."""

    statements: tuple[Statement, ...]
    literal_independent: bool = False
    cacheable: bool = True

    @property
    def empty(self) -> bool:
        return not self.statements

    @property
    def strongest(self) -> Statement | None:
        """The statement of the highest class (the first one on a tie)."""
        best: Statement | None = None
        for s in self.statements:
            if best is None or RANK[s.statement_class] > RANK[best.statement_class]:
                best = s
        return best


# --------------------------------------------------------------------------- whole-tree rules


def _is_set_config(names: tuple[str, ...]) -> bool:
    return names[-1] == "set_config" and (len(names) == 1 or names[-2] == "pg_catalog")


def _pinned_setting_names(root: ast.Node, ctx: Context) -> dict[int, str]:
    """set_config(name, ...) calls whose ``name`` a WHERE clause pins to one literal.

    pg_dump (15.8+) sends ``SELECT set_config(name, 'view, foreign-table', false)
    FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'``.  Only
    this exact shape is recognised: a call directly in the target list of a
    top-level SELECT whose only FROM item is pg_settings and whose WHERE is
    ``name = '<literal>'`` (a call in a subquery could see another ``name``).
    Returns id(call) -> the pinned setting name.
    """
    if type(root) is not ast.SelectStmt or root.op != SetOperation.SETOP_NONE or root.withClause is not None:
        return {}
    rels = root.fromClause or ()
    if len(rels) != 1 or type(rels[0]) is not ast.RangeVar or rels[0].relname != "pg_settings" \
            or rels[0].schemaname not in (None, "pg_catalog"):
        return {}
    where = root.whereClause
    if type(where) is not ast.A_Expr or where.kind != A_Expr_Kind.AEXPR_OP or names_of(where.name) != ("=",):
        return {}
    pinned = ctx.literal(where.rexpr) if _is_name_column(where.lexpr) else None
    if pinned is None:
        return {}
    out: dict[int, str] = {}
    for target in root.targetList or ():
        call = getattr(target, "val", None)
        if type(call) is ast.FuncCall and _is_set_config(names_of(call.funcname)) \
                and call.args and _is_name_column(call.args[0]):
            out[id(call)] = pinned
    return out


def _is_name_column(node: object) -> bool:
    return type(node) is ast.ColumnRef and names_of(node.fields) in (("name",), ("pg_settings", "name"))


def _call_verdict(call: ast.FuncCall, ctx: Context) -> Verdict:
    names = names_of(call.funcname)
    if not names:
        return Verdict(C.UNKNOWN, "unknown.function", "a function call without a name")
    if _is_set_config(names):
        args = call.args or ()
        setting = ctx.literal(args[0]) if args else None
        if setting is None:
            setting = ctx.pinned.get(id(call))
        if setting is None:
            return Verdict(C.UNKNOWN, "function.set_config_nonliteral",
                           "set_config() with a setting name that is not a literal")
        value = ctx.literal(args[1]) if len(args) > 1 else None
        v = ctx.catalog.setting_verdict(setting, (value,) if value is not None else None)
        return Verdict(v.statement_class, v.rule_id, f"set_config(): {v.reason}")
    return ctx.catalog.function_verdict(names)


def _targets_pg_settings(node: ast.Node) -> bool:
    rel = getattr(node, "relation", None)
    return (type(rel) is ast.RangeVar and rel.relname == "pg_settings"
            and rel.schemaname in (None, "pg_catalog"))


def _tree_verdicts(facts: Facts, ctx: Context) -> Iterator[Verdict]:
    for call in facts.calls:
        yield _call_verdict(call, ctx)
    for name, since in facts.syntax_calls:
        found = ctx.catalog.syntax_verdict(name, since)
        if found is not None:
            yield found
    for names in facts.operators:
        yield ctx.catalog.operator_verdict(names)
    for m in facts.modifying:
        if _targets_pg_settings(m):
            yield Verdict(C.ADMIN, "admin.pg_settings", "writing pg_settings changes settings (set_config)")
    for s in facts.sets:
        yield variable_set(s, facts, ctx)


_LITERAL_SAFE_TYPES = frozenset({
    ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt,
    ast.DeclareCursorStmt, ast.ExplainStmt, ast.CopyStmt,
})


def _names_a_literal(call: ast.FuncCall) -> bool:
    """set_config(), to_regclass('...'), regproc('...'): a literal argument is a name or a setting."""
    name = (names_of(call.funcname) or ("",))[-1].lower()
    return name == "set_config" or name.startswith("to_reg") or name in REG_TYPES


def _classify_node(node: ast.Node, ctx: Context) -> tuple[Statement, bool]:
    """One statement, and whether its class is independent of literal values."""
    facts = Facts(node)
    if facts.executes:
        ctx.cacheable = False
    ctx.literals_read = False
    ctx.pinned = _pinned_setting_names(node, ctx) if facts.calls else {}
    v = by_type(node, facts, ctx)
    for found in _tree_verdicts(facts, ctx):
        if RANK[found.statement_class] > RANK[v.statement_class]:
            v = found
    t = type(node)
    literal_safe = (t in _LITERAL_SAFE_TYPES and v.statement_class is not C.UNKNOWN
                    and not ctx.literals_read and not facts.literal_sensitive
                    and not any(_names_a_literal(c) for c in facts.calls))
    stmt = Statement(v.statement_class, v.rule_id, tag_of(node), v.reason, literal_independent=literal_safe)
    if t is ast.PrepareStmt:
        stmt = Statement(v.statement_class, v.rule_id, stmt.tag, v.reason, prepares=node.name)
        ctx.prepared[node.name] = v.statement_class
    elif t is ast.DeallocateStmt:
        every = bool(node.isall) or node.name is None
        stmt = Statement(v.statement_class, v.rule_id, stmt.tag, v.reason,
                         deallocates=None if every else node.name, deallocates_all=every)
        if every:
            ctx.prepared.clear()
        else:
            ctx.prepared.pop(node.name, None)
    elif t is ast.DiscardStmt and node.target == DiscardMode.DISCARD_ALL:
        stmt = Statement(v.statement_class, v.rule_id, "DISCARD ALL", v.reason, deallocates_all=True)
        ctx.prepared.clear()
    return stmt, literal_safe


# --------------------------------------------------------------------------- public API


def classify_statements(
    raws: tuple[ast.RawStmt, ...],
    *,
    prepared: Mapping[str, StatementClass] | None = None,
    catalog: Catalog | None = None,
) -> Classified:
    """Classify statements already parsed by ``policy.sql.parse.parse``."""
    ctx = Context(catalog or DEFAULT_CATALOG, prepared)
    out: list[Statement] = []
    literal_safe = True
    for raw in raws:
        try:
            stmt, safe = _classify_node(raw.stmt, ctx)
        except Exception as e:  # a bug or a tree we did not expect: fail closed, never raise
            stmt, safe = Statement(C.UNKNOWN, "unknown.error", "statement",
                                   f"pgwarden could not classify it ({type(e).__name__})"), False
        out.append(stmt)
        literal_safe = literal_safe and safe
    return Classified(tuple(out), literal_independent=literal_safe and bool(out), cacheable=ctx.cacheable)


def classify(
    sql: str,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    prepared: Mapping[str, StatementClass] | None = None,
    catalog: Catalog | None = None,
) -> Classified:
    """Classify every statement of ``sql``.  Never raises.

    ``prepared``: name -> class of the session's prepared statements (SQL
    PREPARE and protocol Parse alike), for ``EXECUTE``.  ``catalog``: the
    function/setting lists (default: ``DEFAULT_CATALOG``).
    Run long text on a big-stack thread (see ``policy.sql.parse``).
    """
    try:
        raws = parse(sql, max_length=max_length)
    except Unparseable as e:
        stmt = Statement(C.UNKNOWN, e.rule_id, "query", e.reason)
        return Classified((stmt,), literal_independent=False, cacheable=e.rule_id != "parse.too_long")
    classified = classify_statements(raws, prepared=prepared, catalog=catalog)
    if classified.literal_independent and "uescape" in sql.lower():
        return Classified(tuple(replace(s, literal_independent=False) for s in classified.statements),
                          literal_independent=False, cacheable=classified.cacheable)
    return classified

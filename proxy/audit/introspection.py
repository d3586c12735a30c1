"""Is this statement only a look at the system catalogs?

Job: ``is_introspection(sql)`` marks the statements that psql's ``\\d``
commands, drivers' type lookups (asyncpg, pgjdbc, psycopg's TypeInfo) and
ORMs' reflection send on their own, so that replay and reports can fold them
away from what the person typed.  The mark never changes what is recorded or
decided; it only decides what ``pgwarden replay`` shows by default.

Rules:

* Pure, cheap and pglast-free: one regular-expression pre-check (``pg_`` or
  ``information_schema`` must appear), then a single tokenising pass.  Results
  are cached by exact text (drivers repeat the same lookups).
* Fail towards showing: anything this module does not understand is *not*
  introspection.  A statement is introspection only when

  - it starts with SELECT or WITH and names no writing or locking keyword
    (INSERT, UPDATE, DELETE, MERGE, INTO, FOR SHARE, ...);
  - every relation in every FROM list (items after FROM, after each comma at
    the same depth, after each JOIN) is a system catalog:
    ``pg_catalog.x``, ``information_schema.x``, a known unqualified
    ``pg_catalog`` relation (``pg_type``), a CTE name of the same text, a
    sub-SELECT, or a function call;
  - every function it calls is catalog-qualified (``pg_catalog.f``) or a
    known read-only built-in (``array_agg``, ``generate_series``,
    ``pg_get_expr``, ...), and none is on the list of functions with side
    effects (``set_config``, ``pg_sleep``, ``pg_read_file``, ``lo_*``, ...);
  - it reads at least one catalog relation or calls a ``pg_catalog.``
    function.

  ``SELECT * FROM pg_class, users`` and ``SELECT (SELECT secret FROM users)
  FROM pg_class`` are therefore not introspection.
"""

from __future__ import annotations

import functools
import re

__all__ = ["is_introspection"]

# Comments, string literals and dollar-quoted bodies go (a literal becomes 0); quoted
# identifiers stay (a quote or "--" inside one must not start a string or comment).
_STRIP = re.compile(
    r"""(?P<q>"(?:[^"]|"")*")
    | (?P<c>--[^\n]*|/\*.*?\*/)
    | (?<![\w$])[EeBbXxNn]'(?:[^'\\]|\\.|'')*'
    | (?:[Uu]&)?'(?:[^']|'')*'
    | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$.*?\$(?P=tag)\$""",
    re.VERBOSE | re.DOTALL,
)
_TOKEN = re.compile(
    r"""(?:[Uu]&)?"(?:[^"]|"")*"
    | [A-Za-z_\u0080-\uffff][\w$\u0080-\uffff]*
    | \$\d+
    | (?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?
    | ::
    | [(),;\[\].]
    | [^\s\w(),;\[\].'"]+""",
    re.VERBOSE,
)

# Unqualified relations that are pg_catalog's own (PostgreSQL 15, plus later additions).
_CATALOG_RELATIONS = frozenset("""
pg_aggregate pg_am pg_amop pg_amproc pg_attrdef pg_attribute pg_auth_members pg_authid
pg_available_extension_versions pg_available_extensions pg_backend_memory_contexts pg_cast pg_class
pg_collation pg_config pg_constraint pg_conversion pg_cursors pg_database pg_db_role_setting
pg_default_acl pg_depend pg_description pg_enum pg_event_trigger pg_extension pg_file_settings
pg_foreign_data_wrapper pg_foreign_server pg_foreign_table pg_group pg_hba_file_rules
pg_ident_file_mappings pg_index pg_indexes pg_inherits pg_init_privs pg_language pg_largeobject
pg_largeobject_metadata pg_locks pg_matviews pg_namespace pg_opclass pg_operator pg_opfamily
pg_parameter_acl pg_partitioned_table pg_policies pg_policy pg_prepared_statements pg_prepared_xacts
pg_proc pg_publication pg_publication_namespace pg_publication_rel pg_publication_tables pg_range
pg_replication_origin pg_replication_origin_status pg_replication_slots pg_rewrite pg_roles pg_rules
pg_seclabel pg_seclabels pg_sequence pg_sequences pg_settings pg_shadow pg_shdepend pg_shdescription
pg_shmem_allocations pg_shseclabel pg_statistic pg_statistic_ext pg_statistic_ext_data pg_stats
pg_stats_ext pg_stats_ext_exprs pg_subscription pg_subscription_rel pg_tables pg_tablespace
pg_timezone_abbrevs pg_timezone_names pg_transform pg_trigger pg_ts_config pg_ts_config_map
pg_ts_dict pg_ts_parser pg_ts_template pg_type pg_user pg_user_mapping pg_user_mappings pg_views
pg_wait_events pg_aios pg_shmem_allocations_numa
""".split())
_CATALOG_RELATION_PREFIXES = ("pg_stat_", "pg_statio_")

# Words that take parentheses without being function calls.
_NOT_FUNCTIONS = frozenset("""
in any all some exists array row values over filter using on and or not when then else select from
join where by as cast coalesce nullif greatest least extract substring position trim overlay case is
lateral with recursive union intersect except distinct between like ilike similar within group order
partition collate operator grouping rows range groups
varchar char character varying numeric decimal float double precision time timestamp interval bit
""".split())

# Unqualified built-ins that only read (what drivers and psql use without pg_catalog.).
_SAFE_FUNCTIONS = frozenset("""
array_agg array_upper array_lower array_length array_to_string array_position array_positions
string_to_array string_agg unnest generate_series generate_subscripts cardinality current_schemas
current_schema current_database format_type obj_description col_description shobj_description
to_regtype to_regclass to_regproc to_regprocedure to_regnamespace to_regrole to_regoper
to_regoperator to_regcollation quote_ident quote_literal count min max sum avg bool_and bool_or every
lower upper length char_length left right concat concat_ws format replace regexp_replace
regexp_match split_part strpos row_number rank dense_rank json_agg jsonb_agg json_build_object
jsonb_build_object array_remove array_cat array_append version textin int2 int4 int8 oid now
statement_timestamp clock_timestamp transaction_timestamp
""".split())

# Functions with side effects (or that leave the catalogs): never introspection.
_SIDE_EFFECTS = re.compile(
    r"""(?:set_config|pg_sleep(?:_for|_until)?|pg_read_(?:binary_)?file|pg_ls_\w+|pg_stat_file
    |pg_(?:terminate|cancel)_backend|pg_reload_conf|pg_rotate_logfile\w*|pg_(?:try_)?advisory_\w+
    |pg_notify|pg_create_\w+|pg_drop_\w+|pg_replication_\w+|pg_logical_\w+|pg_switch_w\w+|pg_promote
    |pg_file_\w+|pg_import_\w+|pg_(?:start|stop)_backup|pg_backup_\w+|pg_wal_replay_\w+
    |pg_log_backend_memory_contexts|pg_current_xact_id\w*|pg_copy_\w+|pg_stat_reset\w*
    |pg_export_snapshot|pg_nextoid|pg_sequence_\w+|lo_\w+|dblink\w*|txid_current\w*
    |nextval|setval|currval|pg_catalog_\w+)""",
    re.VERBOSE,
)

_WRITE_WORDS = frozenset("""
insert update delete merge into truncate copy lock grant revoke create alter drop call do listen
notify vacuum analyze cluster reindex refresh returning execute prepare deallocate discard reset set
""".split())
_LOCK_AFTER_FOR = frozenset(("update", "share", "no", "key"))
_FROM_IN_FUNCTION = frozenset(("extract", "substring", "trim", "overlay", "position"))
_FROM_END = frozenset("""
where group having window order limit offset fetch for union intersect except returning
""".split())
_JOIN = "join"
_CATALOG_SCHEMAS = ("pg_catalog", "information_schema")


class _Unsupported(Exception):
    """Text this module does not understand: not introspection."""


def is_introspection(sql: str) -> bool:
    """True when ``sql`` only reads the system catalogs (see the module rules)."""
    if not sql or not ("pg_" in sql or "PG_" in sql or "information_schema" in sql
                       or "INFORMATION_SCHEMA" in sql):
        return False
    if len(sql) > 32768:
        return _check(sql)
    return _cached(sql)


@functools.lru_cache(maxsize=512)
def _cached(sql: str) -> bool:
    return _check(sql)


def _check(sql: str) -> bool:
    try:
        return _analyse(_tokens(sql))
    except _Unsupported:
        return False


def _strip(m: re.Match) -> str:
    if m.group("q") is not None:
        return m.group()
    return " " if m.group("c") is not None else " 0 "


def _tokens(sql: str) -> list:
    """Tokens: names as tuples of parts (lower-cased unless quoted), the rest as strings."""
    skeleton = _STRIP.sub(_strip, sql)
    if "'" in skeleton or "/*" in skeleton or "*/" in skeleton or "$$" in skeleton:
        raise _Unsupported                      # unterminated literal, nested comment, ...
    out: list = []
    for t in _TOKEN.findall(skeleton):
        c = t[0]
        if c == '"' or (c in "Uu" and t[1:2] == "&"):
            part = t[t.index('"') + 1:-1].replace('""', '"')
        elif c.isalpha() or c == "_" or c >= "\x80":
            part = t.lower()
        else:
            out.append(t)
            continue
        if len(out) > 1 and out[-1] == "." and type(out[-2]) is tuple:
            out.pop()
            out.append(out.pop() + (part,))
        else:
            out.append((part,))
    if skeleton.count('"') % 2:
        raise _Unsupported
    return out


def _analyse(toks: list) -> bool:
    n = len(toks)
    words = [t[0] if type(t) is tuple and len(t) == 1 else None for t in toks]
    i = 0
    while i < n and toks[i] == "(":
        i += 1
    if i >= n or words[i] not in ("select", "with"):
        return False
    for k, w in enumerate(words):
        if w in _WRITE_WORDS:
            return False
        if w == "for" and k + 1 < n and words[k + 1] in _LOCK_AFTER_FOR:
            return False
    match = _match_parens(toks)
    ctes = _cte_names(toks, words, match)
    catalog_hit = False
    # Function calls: name followed by "(".
    for k in range(n - 1):
        tok = toks[k]
        if type(tok) is not tuple or toks[k + 1] != "(":
            continue
        if k and (toks[k - 1] == ")" or toks[k - 1] == "::" or words[k - 1] == "as"):
            continue                                   # alias column list, or a type modifier
        name = tok[-1]
        if len(tok) == 1:
            if name in _NOT_FUNCTIONS or name in ctes:
                continue
            if _SIDE_EFFECTS.fullmatch(name):
                return False
            if not (name in _SAFE_FUNCTIONS or name.startswith(("pg_", "has_", "_pg_"))):
                return False
        else:
            if len(tok) != 2 or tok[0] not in _CATALOG_SCHEMAS or _SIDE_EFFECTS.fullmatch(name):
                return False
            catalog_hit = True
    # Relations: every item of every FROM list.
    context: list = []                  # for each open paren: the word before it
    for k in range(n):
        tok = toks[k]
        if tok == "(":
            context.append(words[k - 1] if k else None)
        elif tok == ")":
            if context:
                context.pop()
        elif words[k] == "from":
            if context and context[-1] in _FROM_IN_FUNCTION:
                continue                                # EXTRACT(x FROM y), SUBSTRING(x FROM 2) ...
            if k and words[k - 1] == "distinct":
                continue                                # IS [NOT] DISTINCT FROM
            if _from_list(toks, words, match, k + 1, ctes):
                catalog_hit = True
    return catalog_hit


def _match_parens(toks: list) -> dict[int, int]:
    """Index of each "(" -> index of its ")"."""
    match: dict[int, int] = {}
    stack: list[int] = []
    for k, t in enumerate(toks):
        if t == "(":
            stack.append(k)
        elif t == ")":
            if not stack:
                raise _Unsupported
            match[stack.pop()] = k
    if stack:
        raise _Unsupported
    return match


def _cte_names(toks: list, words: list, match: dict[int, int]) -> set[str]:
    """Names defined as ``name [(cols)] AS [NOT] [MATERIALIZED] (``."""
    names: set[str] = set()
    n = len(toks)
    for k in range(n - 2):
        w = words[k]
        if w is None or w in _NOT_FUNCTIONS:
            continue
        j = k + 1
        if toks[j] == "(":
            j = match[j] + 1
        if j < n and words[j] == "as":
            j += 1
            while j < n and words[j] in ("not", "materialized"):
                j += 1
            if j < n and toks[j] == "(":
                names.add(w)
    return names


def _from_list(toks: list, words: list, match: dict[int, int], k: int, ctes: set[str]) -> bool:
    """Check every item of the FROM list starting at token k; True if one is a catalog."""
    n = len(toks)
    hit = False
    expect_item = True
    while k < n:
        tok, w = toks[k], words[k]
        if tok == ")" or tok == ";" or w in _FROM_END:
            break
        if tok == "," or w == _JOIN:
            expect_item = True
            k += 1
            continue
        if expect_item:
            expect_item = False
            while k < n and words[k] in ("only", "lateral"):
                k += 1
            if k >= n:
                raise _Unsupported
            tok = toks[k]
            if tok == "(":
                if k + 1 >= n or words[k + 1] not in ("select", "with", "values"):
                    raise _Unsupported                  # a parenthesised join: not worth the risk
            elif type(tok) is tuple:
                if k + 1 < n and toks[k + 1] == "(":
                    k = match[k + 1] + 1                # a function in FROM (checked as a call)
                    continue
                if _is_catalog_relation(tok):
                    hit = True
                elif not (len(tok) == 1 and tok[0] in ctes):
                    raise _Unsupported
                k += 1
                continue
            else:
                raise _Unsupported
        if tok == "(":
            k = match[k] + 1                            # sub-SELECTs and ON (...) are skipped whole
            continue
        k += 1
    return hit


def _is_catalog_relation(parts: tuple) -> bool:
    if len(parts) == 2:
        return parts[0] in _CATALOG_SCHEMAS
    if len(parts) == 1:
        name = parts[0]
        return name in _CATALOG_RELATIONS or name.startswith(_CATALOG_RELATION_PREFIXES)
    return False

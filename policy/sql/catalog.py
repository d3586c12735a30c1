"""What pgwarden knows about PostgreSQL's functions, operators and settings.

Job: data, plus the two small lookups the classifier asks of it:
``Catalog.function_verdict(funcname)`` and ``Catalog.setting_verdict(name, values)``.

Rules:

* Functions.  Deny lists win over the allow list, in this order:
  ADMIN (never: server files, other backends, replication, SQL text pgwarden
  cannot see) > WRITE (side effects: ``nextval``, ``pg_notify``, large-object
  writes ...) > READ (vouched: every IMMUTABLE or STABLE pg_catalog built-in,
  generated from a real server into ``readsafe_functions.txt``, plus the
  hand-reviewed VOLATILE ones in ``VOLATILE_READSAFE``).  Anything else (a
  user-defined function, an extension's, a procedure) is WRITE with rule
  ``function.unvouched``: the read scope cannot vouch for it, wider scopes may
  run it (DESIGN.md: "a function it cannot vouch for under a narrow scope is
  denied").  Deny lists match the bare name in any schema, case-insensitively
  (``myschema.pg_read_file`` is still denied); the allow list matches exactly
  (names as PostgreSQL stores them: lower case unless quoted), and only
  unqualified or ``pg_catalog.``-qualified calls, unless the entry is itself
  schema-qualified (``information_schema._pg_expandarray``).
* The allow list is exact for the server version it was generated from
  (``server_version_num``).  A name that is a built-in only in a later version
  is not vouched for: on the older server it resolves to a user's function.
  SQL/JSON syntax newer than that server (``json_array(1, 2)``) is judged as
  a call of a function of that name (``syntax_verdict``).
* Operators: names defined in pg_catalog are READ; any other, or one
  qualified with another schema (``OPERATOR(app.+)``), is unvouched (WRITE).
* Advisory locks (``pg_advisory_lock`` ...) are READ: they change no data
  and session-level pools (asyncpg's reset query) call
  ``pg_advisory_unlock_all()``.  ``txid_current()`` / ``pg_current_xact_id()``
  are READ too (they assign an xid, nothing more).
* Settings.  ``role`` / ``session_authorization`` (identity), the read-only
  switches, ``session_replication_role`` and library preloading are guarded:
  ADMIN, except for the direction that cannot lift anything (``SET
  transaction_read_only = on``, ``RESET ROLE``).  Two more are guarded because
  they would make pgwarden's parser read the text differently from the server:
  ``standard_conforming_strings`` (only ``on``) and ``client_encoding`` (only
  UTF8, the encoding the proxy decodes statements in; with SJIS or BIG5 a
  backslash can be the second byte of a character).  ``search_path`` may not list ``pg_catalog`` after another
  schema.  Other settings any role may set (``context = user`` in
  pg_settings, ``settings.txt``) are TRANSACTION; settings only a superuser or
  the server's configuration may change are ADMIN; custom ``x.y`` settings are
  TRANSACTION unless the catalog says otherwise; an unknown name is UNKNOWN.
* The operator can extend every list: ``DEFAULT_CATALOG.extended(...)``.
  Extending never weakens a deny list: a function added as read-safe that is
  also on the admin or write list keeps its deny class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from types import MappingProxyType

from policy.sql.classes import StatementClass as C
from policy.sql.classes import Verdict

__all__ = [
    "Catalog", "DEFAULT_CATALOG", "ADMIN_FUNCTIONS", "ADMIN_FUNCTION_PREFIXES",
    "WRITE_FUNCTIONS", "VOLATILE_READSAFE", "GUARDED_SETTINGS", "load_list", "load_version",
]


def _read(name: str) -> str:
    return resources.files("policy.sql").joinpath(name).read_text(encoding="utf-8")


def load_list(name: str) -> tuple[str, ...]:
    """Entries of a data file next to this module: one per line; lines starting "# " are comments."""
    return tuple(line.strip() for line in _read(name).splitlines()
                 if line.strip() and not line.startswith("# "))


def load_version(name: str) -> int:
    """The ``# server_version_num: N`` a data file was generated from."""
    m = re.search(r"^# server_version_num: (\d+)$", _read(name), re.M)
    if m is None:
        raise ValueError(f"{name} has no server_version_num header; regenerate it with gen_catalog.py")
    return int(m.group(1))


# --------------------------------------------------------------------------- functions

_FILES = "reads or writes files on the database server"
_BACKENDS = "acts on other sessions"
_SERVER = "controls the server"
_REPLICATION = "controls replication"
_SQL_TEXT = "runs SQL text that pgwarden cannot classify"
_STATS = "resets server statistics"

#: Never allowed, in any scope: bare name (any schema) or schema.name -> why.
ADMIN_FUNCTIONS: Mapping[str, str] = MappingProxyType({
    **dict.fromkeys((
        "pg_read_file", "pg_read_binary_file", "pg_read_file_old", "pg_stat_file",
        "lo_import", "lo_export", "pg_file_write", "pg_file_rename", "pg_file_unlink",
        "pg_file_sync", "pg_logdir_ls", "pg_hba_file_rules", "pg_ident_file_mappings",
        "pg_show_all_file_settings",
    ), _FILES),
    **dict.fromkeys((
        "pg_terminate_backend", "pg_cancel_backend", "pg_log_backend_memory_contexts",
    ), _BACKENDS),
    **dict.fromkeys((
        "pg_reload_conf", "pg_rotate_logfile", "pg_rotate_logfile_old", "pg_promote",
        "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
        "pg_start_backup", "pg_stop_backup", "pg_wal_replay_pause", "pg_wal_replay_resume",
        "pg_wal_replay_wait", "pg_import_system_collations", "pg_nextoid",
        "pg_stop_making_pinned_objects", "pg_log_standby_snapshot",
    ), _SERVER),
    **dict.fromkeys((
        "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
        "pg_drop_replication_slot", "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot", "pg_replication_slot_advance",
        "pg_logical_slot_get_changes", "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_changes", "pg_logical_slot_peek_binary_changes",
        "pg_logical_emit_message", "pg_sync_replication_slots",
    ), _REPLICATION),
    **dict.fromkeys((
        "query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema",
        "ts_stat", "ts_rewrite", "connectby", "pg_background_launch",
        "cron.schedule", "cron.schedule_in_database", "cron.alter_job",
    ), _SQL_TEXT),
    "pg_stat_statements_reset": _STATS,
})

#: Never allowed: name prefixes (any schema) -> why.
ADMIN_FUNCTION_PREFIXES: Mapping[str, str] = MappingProxyType({
    "pg_ls_": _FILES,
    "dblink": "opens connections to other databases",
    "crosstab": _SQL_TEXT,
    "pg_replication_origin_": _REPLICATION,
    "pg_stat_reset": _STATS,
    "binary_upgrade_": "is for pg_upgrade only",
})

_WRITE = "changes data"
#: Write class wherever they appear (side effects others can see).
WRITE_FUNCTIONS: Mapping[str, str] = MappingProxyType({
    "nextval": "advances a sequence", "setval": "sets a sequence",
    "pg_notify": "sends a notification to other sessions",
    **dict.fromkeys((
        "lo_create", "lo_creat", "lo_from_bytea", "lowrite", "lo_put", "lo_truncate",
        "lo_truncate64", "lo_unlink",
    ), "changes large objects"),
    **dict.fromkeys((
        "brin_summarize_new_values", "brin_summarize_range", "brin_desummarize_range",
        "gin_clean_pending_list",
    ), "changes an index"),
    **dict.fromkeys((
        "pg_restore_relation_stats", "pg_restore_attribute_stats", "pg_clear_relation_stats",
        "pg_clear_attribute_stats", "pg_extension_config_dump",
    ), _WRITE),
})

#: VOLATILE pg_catalog built-ins reviewed by hand as safe under the read scope.
VOLATILE_READSAFE = frozenset({
    "clock_timestamp", "timeofday", "random", "setseed", "gen_random_uuid", "current_query",
    "currval", "lastval", "currtid2", "cursor_to_xml", "cursor_to_xmlschema",
    "lo_open", "lo_close", "loread", "lo_lseek", "lo_lseek64", "lo_tell", "lo_tell64", "lo_get",
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_unlock",
    "pg_advisory_unlock_all", "pg_advisory_unlock_shared", "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
    "pg_blocking_pids", "pg_safe_snapshot_blocking_pids", "pg_isolation_test_session_is_blocked",
    "pg_collation_actual_version", "pg_database_collation_actual_version",
    "pg_control_checkpoint", "pg_control_init", "pg_control_recovery", "pg_control_system",
    "pg_current_logfile", "pg_current_wal_flush_lsn", "pg_current_wal_insert_lsn",
    "pg_current_wal_lsn", "pg_database_size", "pg_tablespace_size", "pg_relation_size",
    "pg_table_size", "pg_indexes_size", "pg_total_relation_size", "pg_export_snapshot",
    "pg_get_backend_memory_contexts", "pg_get_multixact_members", "pg_get_shmem_allocations",
    "pg_get_wal_replay_pause_state", "pg_get_wal_resource_managers", "pg_is_in_recovery",
    "pg_is_wal_replay_paused", "pg_jit_available", "pg_last_committed_xact",
    "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp",
    "pg_lock_status", "pg_notification_queue_usage", "pg_partition_ancestors",
    "pg_partition_tree", "pg_prepared_xact", "pg_sequence_last_value",
    "pg_show_replication_origin_status", "pg_sleep", "pg_sleep_for", "pg_sleep_until",
    "pg_stat_clear_snapshot", "pg_stat_force_next_flush", "pg_stat_get_recovery_prefetch",
    "pg_stat_get_xact_blocks_fetched", "pg_stat_get_xact_blocks_hit",
    "pg_stat_get_xact_function_calls", "pg_stat_get_xact_function_self_time",
    "pg_stat_get_xact_function_total_time", "pg_stat_get_xact_numscans",
    "pg_stat_get_xact_tuples_deleted", "pg_stat_get_xact_tuples_fetched",
    "pg_stat_get_xact_tuples_hot_updated", "pg_stat_get_xact_tuples_inserted",
    "pg_stat_get_xact_tuples_returned", "pg_stat_get_xact_tuples_updated",
    "pg_stat_have_stats", "pg_xact_commit_timestamp", "pg_xact_commit_timestamp_origin",
    "pg_xact_status", "txid_status",
})

# --------------------------------------------------------------------------- settings

_IDENTITY = frozenset({"role", "session_authorization"})
_READ_ONLY = frozenset({"default_transaction_read_only", "transaction_read_only"})

#: Settings that are ADMIN whatever the value (beyond the special cases above).
GUARDED_SETTINGS: Mapping[str, str] = MappingProxyType({
    "session_replication_role": "would let writes bypass triggers and foreign keys",
    "local_preload_libraries": "loads server code",
    "session_preload_libraries": "loads server code",
    "is_superuser": "is reserved",
})
GUARDED_SETTING_PREFIXES: Mapping[str, str] = MappingProxyType({
    "pgaudit.": "would change what the server audits",
})

#: User-settable settings of PostgreSQL 16-18 that the PG 15 list lacks.
NEWER_USER_SETTINGS = frozenset({
    "transaction_timeout", "io_combine_limit", "debug_parallel_query", "icu_validation_level",
    "createrole_self_grant", "scram_iterations", "vacuum_buffer_usage_limit",
    "logical_replication_mode", "debug_logical_replication_streaming", "md5_password_warnings",
    "max_parallel_apply_workers_per_subscription",
})

_TRUE = frozenset({"on", "true", "yes", "1", "t", "tr", "tru", "y", "ye"})
# The proxy decodes statements as strict UTF-8 (and refuses any other client_encoding at
# startup), so the server must read the same bytes as UTF-8 too.  Other encodings are refused:
# with SJIS, BIG5, GBK, UHC, GB18030 or JOHAB a backslash (0x5c) can be the second byte of a
# character, so E'..\' would end where pgwarden's parser does not see it end.
_SAFE_ENCODING = re.compile(r"utf8|unicode")
_SEARCH_PATH_ITEM = re.compile(r'\s*("(?:[^"]|"")*"|[^,]*)\s*(?:,|$)')


def _truthy(values: tuple[str, ...] | None) -> bool:
    return values is not None and len(values) == 1 and values[0].strip().lower() in _TRUE


def _search_path_items(values: tuple[str, ...]) -> list[str]:
    items: list[str] = []
    for value in values:
        for m in _SEARCH_PATH_ITEM.finditer(value):
            item = m.group(1).strip()
            if item:
                items.append(item[1:-1].replace('""', '"') if item.startswith('"') else item)
    return items


# --------------------------------------------------------------------------- the catalog


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, eq=False)
class Catalog:
    """Everything the classifier looks names up in.  Build variants with ``extended``."""

    readsafe_functions: frozenset[str]
    operators: frozenset[str]
    user_settings: frozenset[str]
    privileged_settings: frozenset[str]
    admin_functions: Mapping[str, str] = field(default_factory=lambda: ADMIN_FUNCTIONS)
    admin_function_prefixes: Mapping[str, str] = field(default_factory=lambda: ADMIN_FUNCTION_PREFIXES)
    write_functions: Mapping[str, str] = field(default_factory=lambda: WRITE_FUNCTIONS)
    guarded_settings: Mapping[str, str] = field(default_factory=lambda: GUARDED_SETTINGS)
    guarded_setting_prefixes: Mapping[str, str] = field(default_factory=lambda: GUARDED_SETTING_PREFIXES)
    allow_custom_settings: bool = True
    server_version_num: int = 150000  # the server the lists describe

    @classmethod
    def builtin(cls) -> Catalog:
        """The catalog generated from PostgreSQL 15 plus the hand-reviewed lists above."""
        settings = [line.split() for line in load_list("settings.txt")]
        user = {name for name, context in settings if context == "user"} | NEWER_USER_SETTINGS
        return cls(
            readsafe_functions=frozenset(load_list("readsafe_functions.txt")) | VOLATILE_READSAFE,
            operators=frozenset(load_list("builtin_operators.txt")),
            user_settings=frozenset(user),
            privileged_settings=frozenset(name for name, context in settings if context != "user"),
            server_version_num=load_version("readsafe_functions.txt"),
        )

    def extended(
        self,
        *,
        readsafe_functions: Iterable[str] = (),
        write_functions: Iterable[str] | Mapping[str, str] = (),
        admin_functions: Iterable[str] | Mapping[str, str] = (),
        operators: Iterable[str] = (),
        harmless_settings: Iterable[str] = (),
        guarded_settings: Iterable[str] | Mapping[str, str] = (),
        allow_custom_settings: bool | None = None,
    ) -> Catalog:
        """A copy with the operator's additions (names may be ``schema.name``).

        Deny lists keep winning over the allow list, so adding a function to
        ``readsafe_functions`` never lifts an ADMIN or WRITE entry.
        """
        def merged(base: Mapping[str, str], extra: Iterable[str] | Mapping[str, str], why: str):
            items = extra.items() if isinstance(extra, Mapping) else ((n, why) for n in extra)
            return _frozen({**base, **{n.lower(): w for n, w in items}})

        return replace(
            self,
            readsafe_functions=self.readsafe_functions | frozenset(readsafe_functions),
            write_functions=merged(self.write_functions, write_functions, "is listed as write by the operator"),
            admin_functions=merged(self.admin_functions, admin_functions, "is denied by the operator"),
            operators=self.operators | frozenset(operators),
            user_settings=self.user_settings | frozenset(n.lower() for n in harmless_settings),
            guarded_settings=merged(self.guarded_settings, guarded_settings, "is guarded by the operator"),
            allow_custom_settings=(self.allow_custom_settings if allow_custom_settings is None
                                   else allow_custom_settings),
        )

    # ----------------------------------------------------------------- functions

    def function_verdict(self, funcname: tuple[str, ...]) -> Verdict:
        """Class of a call of ``funcname`` (``('pg_catalog', 'lower')`` or ``('lower',)``)."""
        name = funcname[-1]
        schema = funcname[-2] if len(funcname) > 1 else None
        lname = name.lower()
        qualified = f"{schema.lower()}.{lname}" if schema else None
        shown = ".".join(funcname)
        why = self.admin_functions.get(lname) or (qualified and self.admin_functions.get(qualified))
        if not why:
            why = next((w for p, w in self.admin_function_prefixes.items() if lname.startswith(p)), None)
        if why:
            return Verdict(C.ADMIN, "function.admin", f"{shown}() {why}")
        why = self.write_functions.get(lname) or (qualified and self.write_functions.get(qualified))
        if why:
            return Verdict(C.WRITE, "function.write", f"{shown}() {why}")
        if schema is None or schema == "pg_catalog":
            vouched = name in self.readsafe_functions
        else:
            vouched = f"{schema}.{name}" in self.readsafe_functions
        if vouched:
            return Verdict(C.READ, "function.read", f"{shown}() is read-only")
        return Verdict(C.WRITE, "function.unvouched",
                       f"{shown}() is not a function pgwarden can vouch for as read-only")

    def syntax_verdict(self, name: str, since: int) -> Verdict | None:
        """SQL/JSON syntax such as ``json_array(1, 2)``: a built-in on servers from ``since``.

        On an older server the same text is a call of a function called
        ``name`` (a user's, since pg_catalog has none): judge it like one.
        """
        if self.server_version_num >= since:
            return None
        return self.function_verdict((name,))

    def operator_verdict(self, opname: tuple[str, ...]) -> Verdict:
        """Class of an operator: built-in names are read-safe, others are unvouched."""
        schema = opname[-2] if len(opname) > 1 else None
        if schema in (None, "pg_catalog") and opname[-1] in self.operators:
            return Verdict(C.READ, "operator.read", f"operator {opname[-1]} is built in")
        shown = ".".join(opname)
        return Verdict(C.WRITE, "operator.unvouched",
                       f"operator {shown} is not one pgwarden can vouch for as read-only")

    # ----------------------------------------------------------------- settings

    def setting_verdict(self, name: str, values: tuple[str, ...] | None, *, reset: bool = False) -> Verdict:
        """Class of changing setting ``name``.

        ``values``: the literal value(s) as text, or None when the value is not
        a literal.  ``reset``: RESET / SET ... TO DEFAULT (back to the value
        the session started with).
        """
        key = name.lower()
        T = C.TRANSACTION
        if key in _IDENTITY:
            if reset or (values is not None and values == ("none",) and key == "role"):
                return Verdict(T, "set.identity_reset", f"{key} goes back to the login role")
            return Verdict(C.ADMIN, "set.identity", f"setting {key} changes the session's identity")
        if key in _READ_ONLY:
            if not reset and _truthy(values):
                return Verdict(T, "set.read_only_on", f"{key} = on only narrows the session")
            return Verdict(C.ADMIN, "set.read_only", f"changing {key} could lift read-only")
        if key == "standard_conforming_strings":
            if reset or _truthy(values):
                return Verdict(T, "set.harmless", f"{key} stays on")
            return Verdict(C.ADMIN, "set.parser",
                           f"{key} = off would make the server read string literals differently from pgwarden")
        if key == "client_encoding":
            if reset or (values is not None and len(values) == 1
                         and _SAFE_ENCODING.fullmatch(re.sub(r"[^a-z0-9]", "", values[0].lower()))):
                return Verdict(T, "set.harmless", f"{key} stays UTF8")
            return Verdict(C.ADMIN, "set.parser",
                           f"client_encoding {values[0] if values else '(not a literal)'} is not supported "
                           "through pgwarden: statements are checked as UTF-8 text")
        if key == "search_path":
            if reset:
                return Verdict(T, "set.harmless", "search_path goes back to its default")
            if values is None:
                return Verdict(C.UNKNOWN, "set.nonliteral", "search_path set to a value that is not a literal")
            items = [i.lower() for i in _search_path_items(values)]
            if "pg_catalog" in items and items[0] != "pg_catalog":
                return Verdict(C.ADMIN, "set.search_path",
                               "search_path lists pg_catalog after another schema, "
                               "which would let other functions shadow built-ins")
            return Verdict(T, "set.harmless", "search_path keeps pg_catalog first")
        why = self.guarded_settings.get(key)
        if why is None:
            why = next((w for p, w in self.guarded_setting_prefixes.items() if key.startswith(p)), None)
        if why is not None:
            return Verdict(C.ADMIN, "set.guarded", f"setting {key} {why}")
        if key in self.user_settings or key.startswith("enable_"):
            return Verdict(T, "set.harmless", f"{key} is a harmless setting")
        if key in self.privileged_settings:
            return Verdict(C.ADMIN, "set.privileged",
                           f"setting {key} can only be changed by a superuser or the server's configuration")
        if "." in key and self.allow_custom_settings:
            return Verdict(T, "set.custom", f"{key} is a custom setting")
        return Verdict(C.UNKNOWN, "set.unknown", f"setting {key} is not one pgwarden knows")


DEFAULT_CATALOG = Catalog.builtin()

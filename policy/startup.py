"""Which startup parameters a client may pass to the upstream server.

Pure. The client's StartupMessage carries settings (`-c name=value` inside
`options`, or a setting sent as its own parameter). Each one passes only when
the same SET would be allowed in every scope (the classifier's catalog of
settings decides); a setting that could lift the scope (read-only, identity,
replication role) or that pgwarden does not know refuses the connection with
a message naming it (fail closed).
"""

from __future__ import annotations

import re

from policy.sql.catalog import DEFAULT_CATALOG, Catalog
from policy.sql.classes import StatementClass

# Parameters that are part of the protocol, not settings.
PROTOCOL_PARAMS = frozenset({"user", "database", "options", "replication"})

# Settings that lift read-only, change identity or bypass triggers: never.
GUARDED = frozenset({
    "default_transaction_read_only", "transaction_read_only", "session_replication_role",
    "role", "session_authorization", "is_superuser", "default_transaction_deferrable_override",
    "allow_system_table_mods", "ignore_system_indexes", "zero_damaged_pages", "log_statement",
    "log_min_duration_statement", "session_preload_libraries", "local_preload_libraries",
    "row_security", "default_tablespace", "temp_tablespaces",
})



class StartupRefused(ValueError):
    """The connection is refused; str() names the setting and why (sent as FATAL 28000/42501)."""


def split_options(options: str) -> list[str]:
    """Split `options` the way PostgreSQL's pg_split_opts does: spaces separate, backslash escapes."""
    args: list[str] = []
    cur: list[str] = []
    i, n = 0, len(options)
    in_arg = False
    while i < n:
        ch = options[i]
        if ch.isspace():
            if in_arg:
                args.append("".join(cur))
                cur, in_arg = [], False
        elif ch == "\\" and i + 1 < n:
            cur.append(options[i + 1])
            in_arg = True
            i += 1
        else:
            cur.append(ch)
            in_arg = True
        i += 1
    if in_arg:
        args.append("".join(cur))
    return args


def parse_options(options: str) -> list[tuple[str, str]]:
    """`-c a=b`, `-ca=b` and `--a=b` into (name, value); anything else is refused."""
    out = []
    args = split_options(options)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-c":
            if i + 1 >= len(args):
                raise StartupRefused("options: -c without a setting")
            a = args[i + 1]
            i += 1
        elif a.startswith("-c"):
            a = a[2:]
        elif a.startswith("--"):
            a = a[2:]
        else:
            raise StartupRefused(f"options: {a!r} is not allowed through pgwarden (only -c name=value)")
        if "=" not in a:
            raise StartupRefused(f"options: {a!r} has no value (expected name=value)")
        name, value = a.split("=", 1)
        out.append((name.replace("-", "_"), value))
        i += 1
    return out


_IDENT = re.compile(r'\s*("(?:[^"]|"")*"|[^,]*)\s*(?:,|$)')


def _search_path_ok(value: str) -> bool:
    """pg_catalog may be listed only first: after another schema, a user function could shadow a built-in."""
    items = [m.group(1).strip() for m in _IDENT.finditer(value) if m.group(1).strip()]
    names = [i[1:-1].replace('""', '"') if i.startswith('"') else i.lower() for i in items]
    return "pg_catalog" not in names or names[0] == "pg_catalog"


def is_utf8(encoding: str) -> bool:
    return encoding.strip().strip("'\"").lower().replace("-", "").replace("_", "") in ("utf8", "unicode")


def check_setting(name: str, value: str, catalog: Catalog = DEFAULT_CATALOG) -> str | None:
    """None when the setting may pass; otherwise the reason it may not.

    A startup setting passes exactly when the same SET would be allowed in every
    scope (the classifier's catalog decides), with search_path also checked as a
    whole list (a startup value is one comma-separated string).
    """
    key = name.lower()
    if key in GUARDED:
        # Refused even when the value would only narrow the session (=on): pgwarden sets
        # these itself, per scope, and a client has no business sending them.
        return f"setting {name} cannot be changed through pgwarden"
    if key == "search_path" and not _search_path_ok(value):
        return "search_path may list pg_catalog only first"
    if key == "client_encoding" and not is_utf8(value):
        return (f"client_encoding {value} is not supported through pgwarden: statements are checked as "
                "UTF-8 text, so the client must use UTF8")
    verdict = catalog.setting_verdict(key, (value,))
    if verdict.statement_class is StatementClass.TRANSACTION:
        return None
    return f"setting {name} cannot be set through pgwarden ({verdict.reason}) [rule {verdict.rule_id}]"


def filter_startup(params: dict[str, str], catalog: Catalog | None = None) -> dict[str, str]:
    """The settings (name -> value) to pass upstream, user/database excluded; raises StartupRefused.

    ``catalog``: the classifier's catalog with the operator's additions (a setting the operator
    guards is refused here too); default: the built-in one.
    """
    catalog = DEFAULT_CATALOG if catalog is None else catalog
    settings: dict[str, str] = {}
    for name, value in params.items():
        if name in ("user", "database"):
            continue
        if name == "replication":
            if value.lower() not in ("false", "off", "0", "no"):
                raise StartupRefused("replication connections are not allowed through pgwarden")
            continue
        if name.startswith("_pq_."):
            continue                      # protocol extensions: answered by NegotiateProtocolVersion
        if name == "options":
            pairs = parse_options(value)
        else:
            pairs = [(name, value)]
        for n, v in pairs:
            reason = check_setting(n, v, catalog)
            if reason:
                raise StartupRefused(reason)
            settings[n] = v
    return settings

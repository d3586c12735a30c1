"""`pgwarden doctor`: does each scope's upstream role have no more than its scope allows?

The classifier is the first line; the upstream role is the second (DESIGN.md, "Defense in
depth"). For every ``[scopes.NAME]`` in the config, doctor logs in upstream as that scope's
role, with the configured password, exactly as the proxy does, and looks for privileges beyond
the scope's statement classes:

all scopes   SUPERUSER, BYPASSRLS, CREATEROLE, CREATEDB, REPLICATION (on the role or on a role
             it is a member of: SET ROLE reaches them); membership (recursive) in
             pg_read_server_files, pg_write_server_files, pg_execute_server_program,
             pg_create_subscription; ownership of the database. Warnings: pg_signal_backend,
             pg_checkpoint.
no write     membership in pg_write_all_data; INSERT/UPDATE/DELETE/TRUNCATE/TRIGGER on any
  (read)     non-system table, view or column; USAGE/UPDATE on any sequence (nextval/setval);
             ownership of any schema, table, sequence, view or function (owners can do
             anything to them); CREATE on any schema or on the database. Warning: TEMPORARY on
             the database.
no ddl       TRUNCATE/TRIGGER on tables (TRUNCATE is ddl class), membership in pg_maintain;
  (write)    ownership of schemas and objects; CREATE on any schema or on the database.

Each finding names the privilege, why it is beyond the scope and the statement that removes
it (``REVOKE pg_write_all_data FROM pgw_read;``). Exit status: 0 nothing beyond the scopes
(warnings allowed), 1 at least one problem, 2 a scope's role could not log in (which role,
why) or the config is unusable.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from policy.scopes import DEFAULT_SCOPES, Scope, StatementClass

from .config import Config, ScopeConfig

OK, WARNING, PROBLEM = "ok", "warning", "problem"
MAX_LISTED = 10                 # object names listed per finding; the rest are counted

C = StatementClass

# predefined role -> (level when the scope lacks `needs`, needs-class or None for "always", why)
PREDEFINED = {
    "pg_read_server_files": (PROBLEM, None, "reads any file the server can read (COPY FROM a file, pg_read_file)"),
    "pg_write_server_files": (PROBLEM, None, "writes any file the server can write (COPY TO a file)"),
    "pg_execute_server_program": (PROBLEM, None, "runs programs on the database server (COPY ... PROGRAM)"),
    "pg_create_subscription": (PROBLEM, None, "creates subscriptions that connect to other servers"),
    "pg_signal_backend": (WARNING, None, "cancels and terminates other sessions (pg_terminate_backend)"),
    "pg_checkpoint": (WARNING, None, "runs CHECKPOINT"),
    "pg_write_all_data": (PROBLEM, C.WRITE, "INSERT, UPDATE and DELETE on every table"),
    "pg_maintain": (PROBLEM, C.DDL, "VACUUM, ANALYZE, REINDEX, CLUSTER, REFRESH MATERIALIZED VIEW on every table"),
}

ATTRIBUTES = [
    # column, keyword, why
    ("rolsuper", "SUPERUSER", "bypasses every permission check"),
    ("rolbypassrls", "BYPASSRLS", "row-level security policies do not apply to it"),
    ("rolcreaterole", "CREATEROLE", "creates, alters and grants roles"),
    ("rolcreatedb", "CREATEDB", "creates databases"),
    ("rolreplication", "REPLICATION", "streams the whole cluster (replication connections)"),
]

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
_USER_NS = "n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"


@dataclass
class Finding:
    level: str                  # ok | warning | problem
    check: str                  # short id: attribute.superuser, member.pg_write_all_data, table.write ...
    message: str
    fix: str | None = None
    database: str | None = None


@dataclass
class ScopeReport:
    scope: str
    role: str
    classes: list[str]
    databases: list[str]
    connected: bool = False
    error: str | None = None
    server_version: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return sum(1 for f in self.findings if f.level == PROBLEM)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.level == WARNING)


@dataclass
class Report:
    config: str | None
    upstream: str
    scopes: list[ScopeReport]

    @property
    def problems(self) -> int:
        return sum(s.problems for s in self.scopes)

    @property
    def warnings(self) -> int:
        return sum(s.warnings for s in self.scopes)

    @property
    def unreachable(self) -> list[ScopeReport]:
        """Scopes whose role could not log in, or whose checks could not finish."""
        return [s for s in self.scopes if not s.connected or s.error]

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return 2
        return 1 if self.problems else 0

    def to_json(self) -> str:
        out = {
            "config": self.config,
            "upstream": self.upstream,
            "exit": self.exit_code,
            "problems": self.problems,
            "warnings": self.warnings,
            "scopes": [],
        }
        for s in self.scopes:
            d = asdict(s)
            d["problems"] = s.problems
            d["warnings"] = s.warnings
            out["scopes"].append(d)
        return json.dumps(out, indent=2)

    def to_text(self) -> str:
        lines = [f"pgwarden doctor: {self.config or '(config)'}; upstream {self.upstream}"]
        for s in self.scopes:
            lines.append("")
            lines.append(f"scope {s.scope}: role {s.role}, classes {', '.join(s.classes)}; "
                         f"database{'s' if len(s.databases) > 1 else ''} {', '.join(s.databases)}")
            if not s.connected:
                lines.append(f"  ERROR    cannot connect as {s.role}: {s.error}")
                continue
            failed = s.error
            for f in s.findings:
                where = f" [{f.database}]" if f.database and len(s.databases) > 1 else ""
                lines.append(f"  {f.level.upper():<8} {f.message}{where}")
                if f.fix:
                    for i, fix_line in enumerate(f.fix.splitlines()):
                        lines.append(f"  {'':<8} {'fix: ' if i == 0 else '     '}{fix_line}")
            if failed:
                lines.append(f"  ERROR    {failed}")
        lines.append("")
        if self.unreachable:
            names = ", ".join(f"{s.scope} ({s.role})" for s in self.unreachable)
            lines.append(f"could not check scope(s) {names}: see ERROR above")
        lines.append(f"{self.problems} problem(s), {self.warnings} warning(s) in {len(self.scopes)} scope(s)"
                     + ("" if self.problems or self.unreachable else ": every scope's role is within its scope"))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- scopes


def scope_classes(sc: ScopeConfig, scopes=DEFAULT_SCOPES) -> Scope:
    """The statement classes a configured scope allows: its `classes` from the config (policy's
    defaults for read, write and ddl); read_only decides for a scope built without them."""
    if sc.classes:
        return Scope(sc.name, frozenset(StatementClass(c) for c in sc.classes))
    known = scopes.get(sc.name)
    if known is not None:
        return known
    return scopes["read"] if sc.read_only else scopes["write"]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _role_ident(name: str) -> str:
    plain = name.isidentifier() and name == name.lower() and name.isascii()
    return name if plain else _ident(name)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


# ----------------------------------------------------------------------------------------- checks


def check_cluster(conn, sc: ScopeConfig, scope: Scope) -> list[Finding]:
    """Role attributes and memberships: the same in every database."""
    role = _role_ident(sc.role)
    out: list[Finding] = []
    me = conn.execute(
        "select rolname, " + ", ".join(a for a, _, _ in ATTRIBUTES) + " from pg_roles where rolname = current_user"
    ).fetchone()
    attrs = dict(zip([a for a, _, _ in ATTRIBUTES], me[1:]))
    bad = False
    for col, kw, why in ATTRIBUTES:
        if attrs[col]:
            bad = True
            out.append(Finding(PROBLEM, f"attribute.{kw.lower()}", f"role {sc.role} has {kw}: it {why}",
                               f"ALTER ROLE {role} NO{kw};"))
    if not bad:
        out.append(Finding(OK, "attributes", "no SUPERUSER, BYPASSRLS, CREATEROLE, CREATEDB or REPLICATION"))

    rows = conn.execute(
        "select r.rolname, " + ", ".join("r." + a for a, _, _ in ATTRIBUTES) +
        " from pg_roles r where r.rolname <> current_user and pg_has_role(current_user, r.oid, 'MEMBER')"
        " order by r.rolname").fetchall()
    member_of = {r[0]: dict(zip([a for a, _, _ in ATTRIBUTES], r[1:])) for r in rows}
    direct = {r[0] for r in conn.execute(
        "select g.rolname from pg_auth_members m join pg_roles g on g.oid = m.roleid "
        "join pg_roles u on u.oid = m.member where u.rolname = current_user").fetchall()}

    def revoke(target: str) -> str:
        if target in direct:
            return f"REVOKE {_role_ident(target)} FROM {role};"
        via = [d for d in sorted(direct) if _member_path(conn, d, target)]
        return (f"REVOKE {_role_ident(target)} FROM {_role_ident(via[0])};  -- {sc.role} has it through {via[0]}\n"
                f"or: REVOKE {_role_ident(via[0])} FROM {role};") if via else f"REVOKE {_role_ident(target)} FROM {role};"

    flagged = False
    for name, (level, needs, why) in PREDEFINED.items():
        if name not in member_of:
            continue
        if needs is not None and scope.allows(needs):
            continue
        flagged = True
        beyond = (f"the {scope.name} scope allows no {needs.value} statements" if needs is not None
                  else "no scope allows that")
        out.append(Finding(level, f"member.{name}", f"member of {name}: {why}; {beyond}", revoke(name)))
    for name, a in member_of.items():
        if name in PREDEFINED:
            continue
        for col, kw, why in ATTRIBUTES:
            if a[col]:
                flagged = True
                out.append(Finding(PROBLEM, f"member.{kw.lower()}",
                                   f"member of role {name}, which has {kw} ({why}): SET ROLE {name} reaches it",
                                   revoke(name)))
    if not flagged:
        out.append(Finding(OK, "memberships",
                           "member of no role beyond the scope" + (f" (member of {', '.join(sorted(member_of))})"
                                                                   if member_of else "")))
    return out


def _member_path(conn, via: str, target: str) -> bool:
    return bool(conn.execute("select pg_has_role(%s, %s, 'MEMBER')", (via, target)).fetchone()[0])


def check_database(conn, sc: ScopeConfig, scope: Scope, dbname: str) -> list[Finding]:
    """Privileges that live in one database: ownership, CREATE, table and sequence privileges."""
    role = _role_ident(sc.role)
    writes = scope.allows(C.WRITE)
    ddl = scope.allows(C.DDL)
    out: list[Finding] = []

    def add(level, check, message, fix=None):
        out.append(Finding(level, check, message, fix, dbname))

    # the database itself
    owns_db, create_db, temp_db = conn.execute(
        "select pg_has_role(current_user, d.datdba, 'USAGE'), "
        "has_database_privilege(current_user, d.oid, 'CREATE'), "
        "has_database_privilege(current_user, d.oid, 'TEMPORARY') "
        "from pg_database d where d.datname = current_database()").fetchone()
    dbi = _ident(dbname)
    if owns_db:
        add(PROBLEM, "database.owner",
            f"owns database {dbname} (directly or through a role): ALTER/DROP DATABASE, and owner of its "
            "public schema; no scope allows that", f"ALTER DATABASE {dbi} OWNER TO <an admin role>;")
    if create_db and not ddl:
        add(PROBLEM, "database.create",
            f"CREATE on database {dbname}: creates schemas; the {scope.name} scope allows no ddl statements",
            f"REVOKE CREATE ON DATABASE {dbi} FROM {role};  -- and FROM PUBLIC if granted there")
    if temp_db and not writes:
        add(WARNING, "database.temporary",
            f"TEMPORARY on database {dbname}: creates temporary tables (PostgreSQL grants it to PUBLIC "
            "by default)", f"REVOKE TEMPORARY ON DATABASE {dbi} FROM PUBLIC;  -- then GRANT it to the roles "
                           "that need it")

    # schemas
    if not ddl:
        rows = conn.execute(
            "select n.nspname, pg_has_role(current_user, n.nspowner, 'USAGE'), "
            "has_schema_privilege(current_user, n.oid, 'CREATE') "
            f"from pg_namespace n where {_USER_NS} order by 1").fetchall()
        owned = [r[0] for r in rows if r[1]]
        create = [r[0] for r in rows if r[2] and not r[1]]
        if owned:
            add(PROBLEM, "schema.owner",
                f"owns schema(s) {_listing(owned)}: an owner can create, alter and drop anything in it; "
                f"the {scope.name} scope allows no ddl statements",
                "\n".join(f"ALTER SCHEMA {_ident(s)} OWNER TO <an admin role>;" for s in owned[:MAX_LISTED]))
        if create:
            add(PROBLEM, "schema.create",
                f"CREATE on schema(s) {_listing(create)}: creates tables, functions and views; "
                f"the {scope.name} scope allows no ddl statements",
                "\n".join(f"REVOKE CREATE ON SCHEMA {_ident(s)} FROM {role};  -- and FROM PUBLIC if granted there"
                          for s in create[:MAX_LISTED]))
        if not owned and not create:
            add(OK, "schemas", "owns no schema and has CREATE on none")

        # objects: relations and functions
        rels = [r[0] for r in conn.execute(
            "select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            f"where {_USER_NS} and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S') "
            "and pg_has_role(current_user, c.relowner, 'USAGE') order by 1").fetchall()]
        funcs = [r[0] for r in conn.execute(
            "select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            f"where {_USER_NS} and pg_has_role(current_user, p.proowner, 'USAGE') order by 1").fetchall()]
        if rels or funcs:
            names = rels + funcs
            fixes = [f"ALTER TABLE {r} OWNER TO <an admin role>;" for r in rels[:MAX_LISTED]]
            fixes += [f"ALTER FUNCTION {f} OWNER TO <an admin role>;" for f in funcs[:max(0, MAX_LISTED - len(rels))]]
            fixes.append(f"or: REASSIGN OWNED BY {role} TO <an admin role>;")
            add(PROBLEM, "object.owner",
                f"owns {len(names)} object(s): {_listing(names)}; an owner can alter, drop and grant them; "
                f"the {scope.name} scope allows no ddl statements", "\n".join(fixes))
        else:
            add(OK, "objects", "owns no table, view, sequence or function")

    # table privileges beyond the scope
    predefined_writers = [r[0] for r in conn.execute(
        "select rolname from pg_roles where rolname = 'pg_write_all_data' "
        "and pg_has_role(current_user, oid, 'MEMBER')").fetchall()]
    if not writes:
        kinds = ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER"]
    elif not ddl:
        kinds = ["TRUNCATE", "TRIGGER"]
    else:
        kinds = []
    if kinds:
        why = ("the read scope allows no writes" if not writes
               else "TRUNCATE is ddl class and TRIGGER creates triggers; the write scope allows no ddl")
        _privileges_finding(conn, add, role, "table", kinds, why, via_predefined=predefined_writers)

    # sequences: nextval needs USAGE or UPDATE, setval UPDATE
    if not writes:
        _privileges_finding(conn, add, role, "sequence", ["USAGE", "UPDATE"],
                            "nextval/setval change them and the read scope allows no writes "
                            "(SELECT on a sequence is enough to read it)", via_predefined=predefined_writers)
    return out


# grants that reach the role: to itself, to PUBLIC, or to a role it is a member of (SET ROLE reaches
# NOINHERIT memberships too, so MEMBER, not USAGE)
_REACHES = "(a.grantee = 0 or pg_has_role(current_user, a.grantee, 'MEMBER'))"
_GRANTEE = "case when a.grantee = 0 then 'PUBLIC' else quote_ident(pg_get_userbyid(a.grantee)) end"


def _privileges_finding(conn, add, role: str, what: str, kinds: list[str], why: str, *,
                        via_predefined: list[str]) -> None:
    """One finding for table (or sequence) privileges in `kinds`: who granted them, how to revoke.

    Explicit grants are found in the ACLs (table and column), with the grantee the privilege
    came through; privileges the role holds without any ACL entry come from a predefined role
    (pg_write_all_data), reported with the memberships."""
    relkinds = "('S')" if what == "sequence" else "('r', 'p', 'v', 'm', 'f')"
    acl_kind = "s" if what == "sequence" else "r"
    mine = f"{_USER_NS} and c.relkind in {relkinds} and not pg_has_role(current_user, c.relowner, 'USAGE')"
    grants = conn.execute(
        f"select c.oid::regclass::text, a.privilege_type, {_GRANTEE} "
        "from pg_class c join pg_namespace n on n.oid = c.relnamespace, "
        "aclexplode(coalesce(c.relacl, acldefault(%s, c.relowner))) a "
        f"where {mine} and a.privilege_type = any(%s) and {_REACHES} order by 1, 3, 2",
        (acl_kind, kinds)).fetchall()
    if what == "table":
        grants += conn.execute(
            "select c.oid::regclass::text || ' (' || quote_ident(att.attname) || ')', a.privilege_type, "
            f"{_GRANTEE} from pg_attribute att join pg_class c on c.oid = att.attrelid "
            "join pg_namespace n on n.oid = c.relnamespace, aclexplode(att.attacl) a "
            f"where {mine} and att.attacl is not null and not att.attisdropped "
            f"and a.privilege_type = any(%s) and {_REACHES} order by 1, 3, 2", (kinds,)).fetchall()
    # (object, grantee) -> privileges
    by: dict[tuple[str, str], list[str]] = {}
    for obj, priv, grantee in grants:
        lst = by.setdefault((obj, grantee), [])
        if priv not in lst:
            lst.append(priv)
    # everything the role can do, ACL or not
    fn = "has_sequence_privilege" if what == "sequence" else "has_table_privilege"
    held = {r[0] for r in conn.execute(
        "select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        f"where {mine} and {fn}(current_user, c.oid, %s)", (",".join(kinds),)).fetchall()}
    explained = {obj.split(" (", 1)[0] for obj, _ in by}
    unexplained = sorted(held - explained)
    if by:
        objs = sorted({obj.split(" (", 1)[0] for obj, _ in by})
        privs = sorted({p for ps in by.values() for p in ps})
        parts = [f"{obj}: {', '.join(sorted(ps))}" + ("" if g == role else f" (granted to {g})")
                 for (obj, g), ps in sorted(by.items())]
        fixes = []
        for (obj, grantee), ps in sorted(by.items())[:MAX_LISTED]:
            if " (" in obj:
                table, col = obj.split(" (", 1)
                fixes.append(f"REVOKE {', '.join(f'{p} ({col[:-1]})' for p in sorted(ps))} ON TABLE {table} "
                             f"FROM {grantee};")
            else:
                fixes.append(f"REVOKE {', '.join(sorted(ps))} ON {what.upper()} {obj} FROM {grantee};")
        if any(g == "PUBLIC" for _, g in by):
            fixes.append("(revoking from PUBLIC affects every role: grant back to the roles that need it)")
        add(PROBLEM, f"{what}.privileges",
            f"{'/'.join(privs)} on {len(objs)} {what}(s): {_listing(parts)}; {why}", "\n".join(fixes))
    if unexplained and not via_predefined:
        add(PROBLEM, f"{what}.privileges",
            f"{'/'.join(kinds)} on {len(unexplained)} {what}(s) without a grant doctor can trace: "
            f"{_listing(unexplained)}; {why}",
            f"REVOKE {', '.join(kinds)} ON {what.upper()} <name> FROM <the role that holds it>;")
    # held only through a predefined role (pg_write_all_data): that membership is the finding
    if not by and not held:
        add(OK, f"{what}s", f"no {'/'.join(kinds)} privilege on any {what}")


# ----------------------------------------------------------------------------------------- run


def default_databases(cfg: Config) -> list[str]:
    if cfg.upstream.databases:
        seen: list[str] = []
        for v in cfg.upstream.databases.values():
            if v not in seen:
                seen.append(v)
        return seen
    return ["postgres"]


def connect_kwargs(cfg: Config, sc: ScopeConfig, dbname: str, timeout: float) -> dict:
    up = cfg.upstream
    kw = dict(host=up.host, port=up.port, user=sc.role, dbname=dbname, connect_timeout=max(1, int(timeout)),
              application_name="pgwarden doctor", autocommit=True)
    if not up.is_unix:
        kw["sslmode"] = up.sslmode
        if up.sslrootcert is not None:
            kw["sslrootcert"] = str(up.sslrootcert)
    if sc.password is not None:
        kw["password"] = sc.password
    return kw


def _why(exc: Exception) -> str:
    text = str(exc).strip()
    # psycopg/libpq: 'connection failed: connection to server at "h" (ip), port p failed: FATAL:  password
    # authentication failed for user "r"' -- keep libpq's reason (host, port and database are named already)
    m = re.search(r"(?:port \d+|socket \S+) failed: ", text)
    if m:
        text = text[m.end():]
    text = text.replace("FATAL:  ", "").strip()
    return " ".join(text.split())


def check_scope(cfg: Config, sc: ScopeConfig, databases: list[str], *, timeout: float = 10.0) -> ScopeReport:
    import psycopg

    scope = scope_classes(sc)
    rep = ScopeReport(sc.name, sc.role, sorted(c.value for c in scope.classes), list(databases))
    for i, dbname in enumerate(databases):
        try:
            conn = psycopg.connect(**connect_kwargs(cfg, sc, dbname, timeout))
        except psycopg.Error as e:
            rep.connected = False
            rep.error = f"{cfg.upstream.host}:{cfg.upstream.port}/{dbname}: {_why(e)}"
            return rep
        with conn:
            try:
                user = conn.execute("select current_user").fetchone()[0]
                if i == 0:
                    rep.server_version = conn.execute("show server_version").fetchone()[0]
                    rep.findings.append(Finding(OK, "login", f"logged in as {user} (PostgreSQL {rep.server_version})"))
                    rep.findings.extend(check_cluster(conn, sc, scope))
                rep.findings.extend(check_database(conn, sc, scope, dbname))
            except psycopg.Error as e:
                rep.connected = True
                rep.error = f"{dbname}: a check query failed, the checks are incomplete: {_why(e)}"
                return rep
        rep.connected = True
    return rep


def run(cfg: Config, *, databases: list[str] | None = None, scopes: list[str] | None = None,
        timeout: float | None = None) -> Report:
    dbs = databases or default_databases(cfg)
    names = scopes or list(cfg.scopes)
    unknown = [n for n in names if n not in cfg.scopes]
    if unknown:
        raise ValueError(f"scope(s) {', '.join(unknown)} not in the config (known: {', '.join(cfg.scopes)})")
    t = timeout if timeout is not None else cfg.connect_timeout
    reports = [check_scope(cfg, cfg.scopes[n], dbs, timeout=t) for n in names]
    return Report(str(cfg.path) if cfg.path else None, f"{cfg.upstream.host}:{cfg.upstream.port}", reports)


__all__ = ["run", "Report", "ScopeReport", "Finding", "check_scope", "scope_classes", "OK", "WARNING", "PROBLEM"]

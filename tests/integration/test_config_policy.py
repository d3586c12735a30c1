"""Policy the operator configures, through the real proxy in front of the real PostgreSQL.

- Scopes and their classes are configurable (``[scopes.NAME] classes = [...]``); read, write and
  ddl are the defaults. A custom scope allows exactly its classes, its denials name it and the
  configured scope that would allow the statement, and a scope without a write class starts its
  upstream sessions read-only.
- The classifier's function and setting lists are extendable (``[classifier]``): a function the
  operator vouches for runs under read, one the operator denies is denied everywhere, a setting
  the operator guards is refused in SET and in the startup packet.
- Shadow mode (``[upstream] enforce = false``): a would-be denial is logged and let through.
- ``pgwarden doctor`` judges each role against its scope's configured classes.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg import errors as E

from tests.integration.conftest import _make_proxy
from tests.integration import rawpg

pytestmark = pytest.mark.integration

DB = "appdb"


def _proxy_with(pg, scope_roles, proxy_assets, *, upstream: str = "", extra: str = "", edit=None):
    """A proxy whose config gets `upstream` appended to [upstream], `extra` at the end and
    `edit(text) -> text` applied. {read_pw}, {write_pw}, {ddl_pw} in `extra` are the scope roles'
    password files."""
    p = _make_proxy(pg, scope_roles, proxy_assets, name=f"cfgpol-{uuid.uuid4().hex[:8]}")
    pw = {f"{s}_pw": str(p.workdir / "secrets" / f"{s}.password") for s in ("read", "write", "ddl")}
    text = p.config_path.read_text()
    if upstream:
        assert text.count('sslmode = "prefer"\n') == 1
        text = text.replace('sslmode = "prefer"\n', 'sslmode = "prefer"\n' + upstream + "\n")
    text = text + "\n" + extra.format(**pw) + "\n"
    p.config_path.write_text(edit(text) if edit else text)
    return p.start()


@pytest.fixture
def make_proxy(pg, scope_roles, proxy_assets):
    started = []

    def make(**kw):
        p = _proxy_with(pg, scope_roles, proxy_assets, **kw)
        started.append(p)
        return p
    yield make
    for p in started:
        p.stop()


@pytest.fixture
def table(admin):
    name = f"cp_{uuid.uuid4().hex[:12]}"
    admin(f"create table public.{name} (id int primary key, v text)")
    admin(f"insert into public.{name} values (1, 'one'), (2, 'two')")
    yield name
    admin(f"drop table if exists public.{name} cascade")


def connect(p, scope: str, **kw):
    kw.setdefault("autocommit", True)
    return psycopg.connect(p.dsn(scope), connect_timeout=20, **kw)


# =========================================================================== configurable scopes

CUSTOM_SCOPES = """
[scopes.analyst]
role = "pgw_read"
password_file = "{read_pw}"
classes = ["read"]

[scopes.loader]
role = "pgw_write"
password_file = "{write_pw}"
classes = ["read", "write", "transaction"]
"""


def test_custom_scope_allows_exactly_its_classes(make_proxy, admin, table):
    p = make_proxy(extra=CUSTOM_SCOPES)
    with connect(p, "analyst") as conn:
        assert conn.execute("select current_user").fetchone() == ("pgw_read",)
        assert conn.execute(f"select count(*) from {table}").fetchone() == (2,)
        # no transaction class: BEGIN is denied, and the hint names the configured scope allowing it
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute("BEGIN")
        msg = ei.value.diag.message_primary
        assert "BEGIN is transaction class" in msg and "this grant's scope is analyst" in msg, msg
        assert "(read would allow it)" in msg and "[rule transaction.begin]" in msg, msg
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(f"DELETE FROM {table}")
        # loader (read, write, transaction) is narrower than write (which adds two-phase)
        assert "this grant's scope is analyst (loader would allow it)" in ei.value.diag.message_primary
        # derived read-only: the upstream session starts read-only
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
    with connect(p, "loader") as conn:
        conn.execute(f"INSERT INTO {table} VALUES (3, 'three')")
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(f"TRUNCATE {table}")
        msg = ei.value.diag.message_primary
        assert "TRUNCATE is ddl class" in msg and "this grant's scope is loader (ddl would allow it)" in msg, msg
        assert conn.execute("show default_transaction_read_only").fetchone() == ("off",)
    assert admin(f"select id from {table} order by id") == [(1,), (2,), (3,)]


def test_narrowed_default_scope(make_proxy, admin, table):
    """The defaults are only defaults: [scopes.write] classes = ["read", "transaction"] reads only."""
    def edit(text: str) -> str:
        head, _, tail = text.partition("[scopes.write]\n")
        body, sep, rest = tail.partition("[scopes.ddl]")
        body = body.replace("read_only = false\n", "")
        return head + '[scopes.write]\nclasses = ["read", "transaction"]\n' + body + sep + rest

    p = make_proxy(edit=edit)
    with connect(p, "write") as conn:
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(f"INSERT INTO {table} VALUES (9, 'x')")
        assert "this grant's scope is write (ddl would allow it)" in ei.value.diag.message_primary
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
    assert admin(f"select count(*) from {table}") == [(2,)]


def test_token_for_an_unconfigured_scope_is_refused(make_proxy):
    p = make_proxy(extra=CUSTOM_SCOPES)
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, "auditor").close()
    assert "scope 'auditor'" in str(ei.value) and "not configured" in str(ei.value), str(ei.value)


# =========================================================================== operator's classifier lists

CLASSIFIER = """
[classifier]
readsafe_functions = ["public.{fn}"]
admin_functions = ["pg_sleep"]
guarded_settings = ["app.tenant"]
"""


@pytest.fixture
def user_function(admin):
    name = f"cp_fn_{uuid.uuid4().hex[:8]}"
    admin(f"create function public.{name}() returns int language sql stable as 'select 42'")
    yield name
    admin(f"drop function if exists public.{name}()")


def test_operator_vouches_for_and_denies_functions(make_proxy, proxy, user_function):
    # built-in lists: the user's function is unvouched (denied under read), pg_sleep is allowed
    with connect(proxy, "read") as conn:
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(f"select public.{user_function}()")
        assert "function.unvouched" in ei.value.diag.message_primary
        conn.execute("select pg_sleep(0)")
    p = make_proxy(extra=CLASSIFIER.replace("{fn}", user_function))
    with connect(p, "read") as conn:
        assert conn.execute(f"select public.{user_function}()").fetchone() == (42,)
        for scope in ("read", "ddl"):
            with connect(p, scope) as c2:
                with pytest.raises(E.InsufficientPrivilege) as ei:
                    c2.execute("select pg_sleep(0)")
                msg = ei.value.diag.message_primary
                assert "admin class" in msg and "denied by the operator" in msg and "function.admin" in msg, msg


def test_operator_guarded_setting(make_proxy, proxy):
    with connect(proxy, "read", options="-c app.tenant=other") as conn:
        assert conn.execute("show app.tenant").fetchone() == ("other",)
        conn.execute("set app.tenant = 'x'")
    p = make_proxy(extra=CLASSIFIER.replace("{fn}", "nothing"))
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, "write", options="-c app.tenant=other").close()
    assert "app.tenant" in str(ei.value), str(ei.value)
    with connect(p, "write") as conn:
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute("set app.tenant = 'other'")
        assert "guarded by the operator" in ei.value.diag.message_primary
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute("select set_config('app.tenant', 'other', false)")


# =========================================================================== shadow mode


def test_shadow_mode_logs_and_lets_through(make_proxy, admin, table, user_function):
    p = make_proxy(upstream="enforce = false")
    jti = uuid.uuid4().hex
    with psycopg.connect(p.dsn("read", token=p.token("read", jti=jti)), connect_timeout=20,
                         autocommit=True) as conn:
        # denied under enforcement (unvouched function, write class): runs in shadow mode
        assert conn.execute(f"select public.{user_function}()").fetchone() == (42,)
        # the upstream's own defences still hold: the read role's session is read-only
        with pytest.raises(psycopg.Error) as ei:
            conn.execute(f"DELETE FROM {table}")
        assert ei.value.sqlstate == "25006", ei.value        # read_only_sql_transaction: the server said no
        assert conn.execute("select 1").fetchone() == (1,)
    events = p.log_events("statement_would_be_denied")
    rules = {e["rule"] for e in events}
    assert {"function.unvouched", "write.delete"} <= rules, events
    e = next(e for e in events if e["rule"] == "write.delete")
    assert e["statement_class"] == "write" and e["scope"] == "read" and e["grant"] == jti and e["shadow"] is True
    assert "DELETE is write class" in e["reason"], e
    assert not p.log_events("statement_denied"), "shadow mode denied a statement"
    assert admin(f"select count(*) from {table}") == [(2,)]


def test_shadow_mode_function_call_message(make_proxy):
    p = make_proxy(upstream="enforce = false")
    with rawpg.connect(p.port, 20) as s:
        msgs = rawpg.login(s, p.token("ddl"))
        pid = next(struct.unpack("!i", b[:4])[0] for t, b in msgs if t == b"K")
        s.sendall(rawpg.msg(b"F", struct.pack("!ihhh", 2026, 0, 0, 0)))      # pg_backend_pid(), text result
        got = rawpg.read_until_ready(s)
        assert [t for t, _ in got] == [b"V", b"Z"], got
        assert got[0][1][4:].decode() == str(pid), got
    assert any(e["rule"] == "admin.function_call" for e in p.log_events("statement_would_be_denied"))


# =========================================================================== doctor uses the configured classes


def test_doctor_judges_roles_against_configured_classes(make_proxy):
    p = make_proxy(extra=CUSTOM_SCOPES + """
[scopes.sneaky]
role = "pgw_write"
password_file = "{write_pw}"
classes = ["read", "transaction"]
""")
    proc = subprocess.run([sys.executable, "-m", "proxy", "doctor", "--config", str(p.config_path), "--json",
                           "--database", DB], capture_output=True, text=True, timeout=120)
    data = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_scope = {s["scope"]: s for s in data["scopes"]}
    assert by_scope["analyst"]["classes"] == ["read"]
    assert not [f for f in by_scope["analyst"]["findings"] if f["level"] == "problem"]
    assert not [f for f in by_scope["loader"]["findings"] if f["level"] == "problem"]
    sneaky = [f["check"] for f in by_scope["sneaky"]["findings"] if f["level"] == "problem"]
    assert "member.pg_write_all_data" in sneaky, by_scope["sneaky"]


# =========================================================================== the classification cap is configurable


def test_max_statement_length_is_configurable(make_proxy):
    p = make_proxy(edit=lambda text: text.replace("[tokens]", "max_statement_length = 1000\n\n[tokens]", 1))
    short = "SELECT " + "+".join(["1"] * 400)           # 806 characters: classified and run
    long = "SELECT " + "+".join(["1"] * 600)            # 1206 characters: denied unparsed
    with connect(p, "read") as conn:
        assert conn.execute(short.encode()).fetchone() == (400,)
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(long.encode())
        msg = ei.value.diag.message_primary
        assert f"query text is {len(long)} characters long" in msg and "at most 1000 characters" in msg, msg
        assert "[rule parse.too_long]" in msg, msg
        # the same through Parse (extended protocol)
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute(long + " + %s", (1,))
        assert conn.execute("select 1").fetchone() == (1,)

"""Introspection marking: catalog-only reads (psql's \\d, drivers' type lookups) are marked;
anything that touches user data, writes, locks or has side effects is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.audit.introspection import is_introspection

DATA = Path(__file__).parent / "data"

# Every query psql 15 sent (psql -E) for \d, \dt, \d accounts, \d+ accounts, \dv, \df, \dn, \du,
# \l, \di, \ds, \dx, \dT, \d v, \db, \dp against a PostgreSQL 15 server.
PSQL_QUERIES = json.loads((DATA / "psql15_describe_queries.json").read_text())


@pytest.mark.parametrize("item", PSQL_QUERIES, ids=lambda i: i["command"])
def test_psql_describe_queries(item):
    assert is_introspection(item["query"])


def test_psql_queries_cover_the_common_commands():
    assert {r"\d", r"\dt", r"\d accounts", r"\du", r"\l", r"\df", r"\dn"} <= {i["command"] for i in PSQL_QUERIES}


def test_asyncpg_type_introspection():
    asyncpg_introspection = pytest.importorskip("asyncpg.introspection")
    for name in ("INTRO_LOOKUP_TYPES", "INTRO_LOOKUP_TYPES_13", "TYPE_BY_NAME"):
        query = getattr(asyncpg_introspection, name, None)
        if query is not None:
            assert is_introspection(query), name


DRIVER_QUERIES = {
    "psycopg TypeInfo": """SELECT
    typname AS name, oid, typarray AS array_oid,
    oid::regtype::text AS regtype, typdelim AS delimiter
FROM pg_type t
WHERE t.oid = to_regtype($1)
ORDER BY t.oid
""",
    "pgjdbc getPGType": (
        "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid "
        "  FROM pg_catalog.pg_type   LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r "
        "          from pg_namespace as ns           join ( select s.r, (current_schemas(false))[s.r] as nspname "
        "                   from generate_series(1, array_upper(current_schemas(false), 1)) as s(r) ) as r "
        "         using ( nspname )        ) as sp     ON sp.nspoid = typnamespace  WHERE pg_type.oid = $1 "
        " ORDER BY sp.r, pg_type.oid DESC"),
    "pgjdbc type name": ("SELECT n.nspname = ANY(current_schemas(true)), n.nspname, t.typname "
                         "FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid "
                         "WHERE t.oid = $1"),
    "information_schema": ("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"),
    "with cte": ("WITH rels AS (SELECT oid, relname FROM pg_catalog.pg_class WHERE relkind = 'r') "
                 "SELECT r.relname FROM rels r"),
}


@pytest.mark.parametrize("name", DRIVER_QUERIES)
def test_driver_and_tool_catalog_queries(name):
    assert is_introspection(DRIVER_QUERIES[name])


NOT_INTROSPECTION = [
    "select 1",
    "select * from accounts",
    "SELECT * FROM pg_class, users",
    "SELECT (SELECT secret FROM users) FROM pg_class",
    "select * from pg_class join users on true",
    "select * from pg_class c where exists (select 1 from users)",
    "select relname from pg_class union select name from users",
    "SELECT * FROM pg_class /* comment */, users",
    "select * from public.pg_class",
    "select pg_sleep(10) from pg_class",
    "select set_config('role', 'x', false) from pg_catalog.pg_class",
    "select pg_read_file('/etc/passwd')",
    "select lo_import('/etc/passwd')",
    "select nextval('s') from pg_class",
    "select f(x) from pg_class",
    "select * from pg_class for update",
    "insert into t select * from pg_class",
    "with x as (delete from t returning *) select * from pg_class",
    "copy (select * from pg_class) to stdout",
    "select * from pg_catalog.pg_class; drop table t",
    "select * from pg_class; select * from users",
    "select * from pg_class where relname = 'x",          # unterminated literal
    "select * from (pg_class join users using (oid))",
    "",
]


@pytest.mark.parametrize("sql", NOT_INTROSPECTION)
def test_not_introspection(sql):
    assert not is_introspection(sql)


def test_literals_and_comments_cannot_smuggle_a_catalog_name():
    assert not is_introspection("select 'pg_class' from users")
    assert not is_introspection("select 1 from users -- pg_catalog.pg_class")
    assert not is_introspection('select * from "pg_catalog.users"')      # one name, with a dot in it
    assert is_introspection('select * from "pg_catalog"."pg_class"')


def test_huge_text_is_not_cached_but_answered():
    sql = "select relname from pg_catalog.pg_class where relname in (" + ",".join(["'x'"] * 20000) + ")"
    assert len(sql) > 32768
    assert is_introspection(sql)

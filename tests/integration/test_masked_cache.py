"""The masked-literal classification cache through the real proxy.

A client that interpolates literals (psycopg's ClientCursor, psycopg2, pgbench
-M simple) sends a new text for every statement; pgwarden answers those from
the masked-literal cache, but only for statements whose class cannot depend
on a literal.  ``set_config``'s setting name is a literal that decides: a
harmless call must never let a guarded one through, in the same session,
over the simple and the extended protocol alike.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as E

pytestmark = pytest.mark.integration

HARMLESS = ("application_name", "x")
GUARDED = ("default_transaction_read_only", "off")


def _connect(proxy, scope: str, **kw) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(scope), autocommit=True, connect_timeout=20, **kw)


def _set_config_literal(name: str, value: str) -> str:
    return f"SELECT set_config('{name}', '{value}', false)"


@pytest.mark.parametrize("scope", ["read", "write"])
def test_guarded_set_config_after_a_harmless_one_is_denied_simple_protocol(proxy, scope):
    with _connect(proxy, scope) as conn:
        # the simple protocol, literals interpolated by the client
        with psycopg.ClientCursor(conn) as cur:
            cur.execute("SELECT set_config(%s, %s, false)", HARMLESS)
            assert cur.fetchone() == ("x",)
            with pytest.raises(E.InsufficientPrivilege) as info:
                cur.execute("SELECT set_config(%s, %s, false)", GUARDED)
            assert "default_transaction_read_only" in str(info.value)
            assert "admin class" in str(info.value)
        # the session goes on, and the server's setting did not change
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == (
            "on" if scope == "read" else "off",)
        assert conn.execute("SHOW application_name").fetchone() == ("x",)


def test_guarded_set_config_after_a_harmless_one_is_denied_extended_protocol(proxy):
    with _connect(proxy, "read") as conn:
        assert conn.execute(_set_config_literal(*HARMLESS)).fetchone() == ("x",)
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute(_set_config_literal(*GUARDED))
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_interpolated_statements_hit_the_masked_cache_and_stay_correct(proxy, admin):
    admin("DROP TABLE IF EXISTS masked_cache_t")
    admin("CREATE TABLE masked_cache_t (id int PRIMARY KEY, name text)")
    admin("INSERT INTO masked_cache_t SELECT g, 'n' || g FROM generate_series(1, 50) g")
    admin("GRANT SELECT, INSERT, UPDATE, DELETE ON masked_cache_t TO PUBLIC")
    try:
        with _connect(proxy, "read") as conn, psycopg.ClientCursor(conn) as cur:
            for i in range(1, 51):
                cur.execute("SELECT name FROM masked_cache_t WHERE id = %s AND name <> %s", (i, "zz"))
                assert cur.fetchone() == (f"n{i}",)
            # same shape as a cached read, but a write: its own key (UPDATE is not SELECT)
            with pytest.raises(E.InsufficientPrivilege):
                cur.execute("UPDATE masked_cache_t SET name = %s WHERE id = %s", ("x", 1))
            # a function named in a string is never taken from the masked cache
            cur.execute("SELECT %s::regproc::text", ("now",))
            assert cur.fetchone() == ("now",)
        assert admin("SELECT name FROM masked_cache_t WHERE id = 1") == [("n1",)]
    finally:
        admin("DROP TABLE IF EXISTS masked_cache_t")

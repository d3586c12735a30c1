"""The shortest path users rely on: a token-authenticated psycopg session through pgwarden."""

import psycopg


def test_read_token_connects_as_read_role(proxy):
    with psycopg.connect(proxy.dsn("read")) as conn:
        row = conn.execute("select current_user, current_setting('default_transaction_read_only')").fetchone()
    assert row == ("pgw_read", "on")


def test_write_token_runs_as_write_role(proxy):
    with psycopg.connect(proxy.dsn("write")) as conn:
        assert conn.execute("select current_user").fetchone() == ("pgw_write",)
        assert conn.execute("show default_transaction_read_only").fetchone() == ("off",)

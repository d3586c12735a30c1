"""policy.startup: which startup parameters pass to the upstream, and why the others do not."""

from __future__ import annotations

import pytest

from policy.startup import (
    GUARDED,
    StartupRefused,
    check_setting,
    filter_startup,
    parse_options,
    split_options,
)

BASE = {"user": "alice", "database": "appdb"}


def refused(params: dict[str, str]) -> str:
    with pytest.raises(StartupRefused) as ei:
        filter_startup({**BASE, **params})
    return str(ei.value)


# --------------------------------------------------------------------------- options parsing


@pytest.mark.parametrize("text, args", [
    ("", []),
    ("   ", []),
    ("-c a=b", ["-c", "a=b"]),
    ("  -c   a=b  ", ["-c", "a=b"]),
    ("-c\ta=b\n-c x=y", ["-c", "a=b", "-c", "x=y"]),
    (r"-c application_name=my\ app", ["-c", "application_name=my app"]),
    (r"a\\b", ["a\\b"]),
    (r"trailing\\", ["trailing\\"]),
    ("trailing\\", ["trailing\\"]),
    (r"\ ", [" "]),
])
def test_split_options(text, args):
    assert split_options(text) == args


@pytest.mark.parametrize("text, pairs", [
    ("-c a=b", [("a", "b")]),
    ("-ca=b", [("a", "b")]),
    ("--a=b", [("a", "b")]),
    ("-c statement_timeout=1234 -c lock_timeout=5s", [("statement_timeout", "1234"), ("lock_timeout", "5s")]),
    ("--statement-timeout=5", [("statement_timeout", "5")]),
    ("-c a=b=c", [("a", "b=c")]),
    ("-c a=", [("a", "")]),
    (r"-c application_name=my\ app\ 2", [("application_name", "my app 2")]),
    (r"-c search_path=a,\ b", [("search_path", "a, b")]),
    ("", []),
])
def test_parse_options(text, pairs):
    assert parse_options(text) == pairs


@pytest.mark.parametrize("text, needle", [
    ("-c", "-c without a setting"),
    ("-c a", "no value"),
    ("-ca", "no value"),
    ("--a", "no value"),
    ("-B 100", "'-B'"),
    ("statement_timeout=5", "not allowed"),
    ("-d 5", "'-d'"),
])
def test_parse_options_refused(text, needle):
    with pytest.raises(StartupRefused) as ei:
        parse_options(text)
    assert needle in str(ei.value)


# --------------------------------------------------------------------------- guarded settings


GUARDED_CASES = ["default_transaction_read_only", "transaction_read_only", "session_replication_role", "role",
                 "session_authorization"]


@pytest.mark.parametrize("name", GUARDED_CASES)
@pytest.mark.parametrize("form", ["-c {n}={v}", "-c{n}={v}", "--{n}={v}", "own"])
def test_guarded_setting_refused_in_every_form(name, form):
    value = {"default_transaction_read_only": "off", "transaction_read_only": "off",
             "session_replication_role": "replica", "role": "postgres", "session_authorization": "postgres"}[name]
    params = {name: value} if form == "own" else {"options": form.format(n=name, v=value)}
    msg = refused(params)
    assert name in msg


@pytest.mark.parametrize("options, name", [
    ("-c DEFAULT_TRANSACTION_READ_ONLY=off", "DEFAULT_TRANSACTION_READ_ONLY"),
    ("-c default-transaction-read-only=off", "default_transaction_read_only"),
    ("--default-transaction-read-only=off", "default_transaction_read_only"),
    ("-c Session_Replication_Role=replica", "Session_Replication_Role"),
    ("-c statement_timeout=5 -c role=postgres", "role"),
])
def test_guarded_setting_spelling_variants(options, name):
    assert name in refused({"options": options})


def test_guarded_setting_own_parameter_any_case():
    assert "Role" in refused({"Role": "postgres"})


@pytest.mark.parametrize("value", ["on", "off", "true"])
def test_read_only_cannot_be_set_even_to_on(value):
    assert "default_transaction_read_only" in refused({"options": f"-c default_transaction_read_only={value}"})


def test_guarded_settings():
    assert {"default_transaction_read_only", "session_replication_role", "role"} <= GUARDED


def test_unknown_setting_refused_fail_closed():
    msg = refused({"options": "-c shared_preload_libraries=evil"})
    assert "shared_preload_libraries" in msg
    # A custom (extension) setting passes exactly when the same SET would: allowed in every scope.
    assert filter_startup({"pgwarden_custom.setting": "x"}) == {"pgwarden_custom.setting": "x"}


# --------------------------------------------------------------------------- search_path


@pytest.mark.parametrize("value", [
    "public, pg_catalog",
    "public,pg_catalog",
    '"$user", pg_catalog',
    'public, "pg_catalog"',
    "public, PG_CATALOG",
    "app, public, pg_catalog",
])
def test_search_path_with_pg_catalog_after_another_schema_refused(value):
    assert "search_path" in refused({"search_path": value})
    escaped = value.replace(" ", "\\ ")
    assert "search_path" in refused({"options": f"-c search_path={escaped}"})


@pytest.mark.parametrize("value", [
    "public",
    '"$user", public',
    "pg_catalog, public",
    "pg_catalog",
    "PG_CATALOG, app",
    "app",
    "",
    '"PG_CATALOG", public',     # a different (quoted, case-sensitive) schema name
])
def test_search_path_allowed(value):
    assert filter_startup({**BASE, "search_path": value}) == {"search_path": value}


# --------------------------------------------------------------------------- allowed settings


@pytest.mark.parametrize("options, expected", [
    ("-c statement_timeout=1234", {"statement_timeout": "1234"}),
    ("-c lock_timeout=5s -c idle_in_transaction_session_timeout=60s",
     {"lock_timeout": "5s", "idle_in_transaction_session_timeout": "60s"}),
    (r"-c application_name=my\ app", {"application_name": "my app"}),
    ("--enable-seqscan=off", {"enable_seqscan": "off"}),
    ("-cwork_mem=64MB", {"work_mem": "64MB"}),
    (r"-c search_path=pg_catalog,\ public", {"search_path": "pg_catalog, public"}),
    ("", {}),
])
def test_allowed_options_pass(options, expected):
    assert filter_startup({**BASE, "options": options}) == expected


def test_typical_driver_startup_parameters_pass():
    # pgjdbc
    jdbc = {**BASE, "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC",
            "extra_float_digits": "2", "application_name": "PostgreSQL JDBC Driver"}
    out = filter_startup(jdbc)
    assert out == {k: v for k, v in jdbc.items() if k not in ("user", "database")}
    # libpq / psql / psycopg
    assert filter_startup({**BASE, "application_name": "psql", "client_encoding": "UTF8"}) == {
        "application_name": "psql", "client_encoding": "UTF8"}


def test_user_database_and_protocol_extensions_not_passed():
    out = filter_startup({**BASE, "_pq_.some_extension": "1", "statement_timeout": "5"})
    assert out == {"statement_timeout": "5"}


def test_check_setting():
    assert check_setting("statement_timeout", "1") is None
    assert check_setting("Statement_Timeout", "1") is None
    assert "cannot be changed" in check_setting("role", "postgres")
    assert "pg_catalog" in check_setting("search_path", "public, pg_catalog")
    assert "cannot be set through pgwarden" in check_setting("nonexistent_setting", "1")


# --------------------------------------------------------------------------- replication


@pytest.mark.parametrize("value", ["true", "on", "yes", "1", "database", "TRUE", "Database"])
def test_replication_refused(value):
    assert "replication" in refused({"replication": value})


@pytest.mark.parametrize("value", ["false", "off", "0", "no", "OFF"])
def test_replication_off_passes_and_is_not_forwarded(value):
    assert filter_startup({**BASE, "replication": value}) == {}


def test_options_cannot_smuggle_replication():
    assert "replication" in refused({"options": "-c replication=database"})


# --------------------------------------------------------------------------- client_encoding


@pytest.mark.parametrize("value", ["UTF8", "utf8", "UTF-8", "utf-8", "'UTF8'", "unicode", "Utf_8"])
def test_utf8_client_encoding_passes(value):
    assert filter_startup({**BASE, "client_encoding": value}) == {"client_encoding": value}


@pytest.mark.parametrize("value", ["LATIN1", "SQL_ASCII", "WIN1252", "EUC_JP", "SJIS", "auto"])
def test_non_utf8_client_encoding_refused(value):
    msg = refused({"client_encoding": value})
    assert "client_encoding" in msg and value in msg
    assert "client_encoding" in refused({"options": f"-c client_encoding={value}"})

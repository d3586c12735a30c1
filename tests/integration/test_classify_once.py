"""A repeated statement is classified once; a prepared statement at Parse, never at Execute.

An in-process pgwarden (the real ProxyServer on its own event loop thread, in front of the real
PostgreSQL) with the classifier and the policy gate wrapped in counters:

- the same text sent 20 times (simple Query, unnamed Parse) is parsed by pglast once;
- a named prepared statement executed 20 times is judged once, at its Parse: Bind/Execute go
  through without asking policy;
- the cache key is the exact text: ``SET ROLE`` of two names are two classifications with two
  verdicts (pglast's fingerprint maps them to one value).
"""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest
from psycopg import errors as E

from tests.integration.conftest import inprocess_server

pytestmark = pytest.mark.integration


@pytest.fixture
def inproc(proxy, monkeypatch):
    import proxy.session.judge as judge_mod

    parsed: Counter = Counter()
    real_classify = judge_mod.classify

    def counting_classify(text, **kw):
        parsed[text] += 1
        return real_classify(text, **kw)

    monkeypatch.setattr(judge_mod, "classify", counting_classify)
    judged: Counter = Counter()

    def count_judgements(server):
        real = server.gate.judge_fn

        def counting_judge(text, scope, prepared):
            judged[text] += 1
            return real(text, scope, prepared)

        server.gate.judge_fn = counting_judge

    with inprocess_server(proxy.config_path, setup=count_judgements) as server:
        yield server, judged, parsed


def _dsn(proxy, server, scope="read"):
    return proxy.dsn(scope).replace(f":{proxy.port}/", f":{server.port}/")


def test_repeated_text_is_parsed_once(proxy, inproc):
    server, judged, parsed = inproc
    text = "select 4242 as once_simple"
    with psycopg.connect(_dsn(proxy, server), autocommit=True, connect_timeout=10) as conn:
        for _ in range(20):
            conn.execute(text.encode())          # bytes: psycopg sends it as a simple Query (no params)
        for _ in range(20):
            assert conn.execute("select %s::int as once_extended", (7,), prepare=False).fetchone() == (7,)
    assert parsed[text] == 1, parsed
    assert parsed["select $1::int as once_extended"] == 1, parsed


def test_prepared_statement_is_judged_at_parse_not_at_execute(proxy, inproc):
    server, judged, parsed = inproc
    sql = "select %s::int + 1 as once_prepared"
    with psycopg.connect(_dsn(proxy, server), autocommit=True, connect_timeout=10) as conn:
        for i in range(20):
            assert conn.execute(sql, (i,), prepare=True).fetchone() == (i + 1,)
    key = "select $1::int + 1 as once_prepared"
    assert judged[key] == 1, judged       # the one Parse; 20 Bind/Execute never asked policy
    assert parsed[key] == 1, parsed


def test_cache_key_is_the_exact_text(proxy, inproc):
    server, judged, parsed = inproc
    with psycopg.connect(_dsn(proxy, server), autocommit=True, connect_timeout=10) as conn:
        conn.execute(b"SET ROLE NONE")                                  # allowed: back to the login role
        with pytest.raises(E.InsufficientPrivilege) as ei:
            conn.execute(b"SET ROLE postgres")
        assert "set.identity" in ei.value.diag.message_primary
        conn.execute(b"SET ROLE NONE")
        with pytest.raises(E.InsufficientPrivilege):
            conn.execute(b"SET ROLE postgres")
        assert conn.execute("select current_user").fetchone() == ("pgw_read",)
    assert parsed["SET ROLE NONE"] == 1 and parsed["SET ROLE postgres"] == 1, parsed

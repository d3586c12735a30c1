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

import asyncio
import dataclasses
import threading
from collections import Counter

import psycopg
import pytest
from psycopg import errors as E

from proxy import config as config_mod
from proxy.net.server import ProxyServer

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
    cfg = dataclasses.replace(config_mod.load(proxy.config_path), listen_port=0)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    def run():
        asyncio.set_event_loop(loop)

        async def main():
            server = ProxyServer(cfg, loop)
            judged: Counter = Counter()
            real = server.gate.judge_fn

            def counting_judge(text, scope, prepared):
                judged[text] += 1
                return real(text, scope, prepared)

            server.gate.judge_fn = counting_judge
            await server.start()
            box.update(server=server, judged=judged)
            ready.set()
            await server.stopped.wait()

        loop.run_until_complete(main())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(20)
    server = box["server"]
    yield server, box["judged"], parsed
    fut = asyncio.run_coroutine_threadsafe(server.shutdown(), loop)
    fut.result(20)
    th.join(20)
    loop.close()


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

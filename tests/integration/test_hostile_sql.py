"""Hostile SQL through the real proxy: it must never take pgwarden down or stall other sessions.

- ``SELECT 1+1+...+1`` with 30,000 terms (about 60 KB, under the 64 KiB cap) is deep enough to
  kill a process whose main thread runs pglast's recursive tree conversion (SIGSEGV). pgwarden
  classifies long text on a worker thread with a large stack: the statement is answered (the
  server's own answer: the sum, or its stack-depth error, the same as a direct connection) or
  denied with a clear message; the proxy stays up.
- Text over the cap (100,000 terms; a 200,000-item IN list) is denied at once, without being
  parsed, with a message saying it is too long.
- 10,000 levels of parentheses: denied or answered, the proxy stays up.
- A NUL inside a Query is a protocol violation; invalid UTF-8 is an error, never passed on.
- While one session's long statement is being classified, another session's ``SELECT 1``
  answers within a few seconds.

Every test ends (autouse fixture) by checking that the shared proxy is alive and serves a
normal session.
"""

from __future__ import annotations

import struct
import threading
import time

import psycopg
import pytest

from tests.integration.conftest import DB
from tests.integration.rawpg import (
    SYNC,
    bind_msg,
    data_values,
    error_of,
    execute_msg,
    fields,
    msg,
    parse_msg,
    query,
    raw_session,
    read_to_eof,
    read_until_ready,
    simple_query,
    split_msgs,
    types,
)

pytestmark = pytest.mark.integration

CAP = 65536          # server.max_statement_length default

# --------------------------------------------------------------------------- raw protocol helpers

SESSION_TIMEOUT = 60     # a deep statement may take a while to be classified


def bind_execute_sync() -> bytes:
    return bind_msg() + execute_msg() + SYNC


def first_value(msgs) -> str | None:
    """The first column of the first DataRow among ``msgs``."""
    return next((data_values(body)[0] for t, body in msgs if t == b"D"), None)


def plus_chain(terms: int, minus_at: int | None = None) -> str:
    """SELECT 1+1+...+1 (``terms`` ones); one '+' turned into '-' to make the text distinct."""
    ops = ["+"] * (terms - 1)
    if minus_at is not None:
        ops[minus_at] = "-"
    return "SELECT 1" + "".join(op + "1" for op in ops)


def expected_sum(terms: int, minus_at: int | None) -> int:
    return terms if minus_at is None else terms - 2


def usable(proxy) -> None:
    assert proxy.alive(), f"pgwarden died:\n{proxy.log()[-4000:]}"
    with psycopg.connect(proxy.dsn("read"), connect_timeout=20, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.fixture(autouse=True)
def proxy_still_serves(proxy):
    yield
    usable(proxy)


@pytest.fixture(scope="module")
def direct_deep_sum(pg) -> tuple[str, object]:
    """What PostgreSQL itself answers to the 30,000-term sum: ("ok", value) or ("error", sqlstate)."""
    with psycopg.connect(pg.dsn(DB), autocommit=True) as conn:
        try:
            return "ok", conn.execute(plus_chain(30_000)).fetchone()[0]
        except psycopg.Error as e:
            return "error", e.sqlstate


# =========================================================================== deep expression, under the cap


def _check_deep_sum_answer(msgs, direct, terms: int, minus_at: int | None) -> str:
    assert msgs[-1][0] == b"Z", msgs
    err = error_of(msgs)
    if err is None:
        assert first_value(msgs) == str(expected_sum(terms, minus_at)), msgs
        return "answered"
    if err["C"] == "42501" or err["M"].startswith("pgwarden:"):
        # denied by pgwarden: the message says why
        assert "pgwarden" in err["M"] and ("rule" in err["M"]), err
        return "denied"
    # the server's own answer: the same as a direct connection gets
    assert direct[0] == "error" and err["C"] == direct[1], (err, direct)
    return "server-error"


def test_deep_sum_30000_terms_simple_query(proxy, direct_deep_sum):
    sql = plus_chain(30_000)
    assert 59_000 < len(sql) < CAP
    with raw_session(proxy, timeout=SESSION_TIMEOUT) as s:
        t0 = time.monotonic()
        msgs = simple_query(s, sql)
        elapsed = time.monotonic() - t0
        outcome = _check_deep_sum_answer(msgs, direct_deep_sum, 30_000, None)
        assert elapsed < 60, elapsed
        # the session goes on
        assert first_value(simple_query(s, "select 2")) == "2"
    assert proxy.alive(), proxy.log()[-4000:]
    print(f"30,000-term sum: {outcome} in {elapsed:.2f}s (direct: {direct_deep_sum})")


def test_deep_sum_30000_terms_extended_protocol(proxy, direct_deep_sum):
    sql = plus_chain(30_000, minus_at=7)          # distinct text: not answered from the cache
    with raw_session(proxy, timeout=SESSION_TIMEOUT) as s:
        s.sendall(parse_msg(sql) + bind_execute_sync())
        msgs = read_until_ready(s)
        direct = direct_deep_sum
        if direct[0] == "ok":
            direct = ("ok", expected_sum(30_000, 7))
        _check_deep_sum_answer(msgs, direct, 30_000, 7)
        assert first_value(simple_query(s, "select 3")) == "3"
    assert proxy.alive(), proxy.log()[-4000:]


def test_other_sessions_answer_while_a_long_statement_is_classified(proxy):
    """Session A sends distinct 30,000-term sums back to back (each parsed on the worker);
    session B's SELECT 1 keeps answering within a few seconds all along."""
    n_long = 4
    done = threading.Event()
    a_error: list[BaseException] = []

    def hostile():
        try:
            with raw_session(proxy, timeout=180) as s:
                for i in range(n_long):
                    simple_query(s, plus_chain(30_000, minus_at=100 + i))
        except BaseException as e:        # reported by the main thread
            a_error.append(e)
        finally:
            done.set()

    with psycopg.connect(proxy.dsn("read"), connect_timeout=20, autocommit=True) as b:
        b.execute("select 1")
        t = threading.Thread(target=hostile, daemon=True)
        t0 = time.monotonic()
        t.start()
        latencies = []
        while not done.is_set() and time.monotonic() - t0 < 170:
            q0 = time.monotonic()
            assert b.execute("select 1").fetchone() == (1,)
            latencies.append(time.monotonic() - q0)
            # a brand-new session logs in and answers too
            if len(latencies) % 10 == 1:
                q0 = time.monotonic()
                with psycopg.connect(proxy.dsn("read"), connect_timeout=20, autocommit=True) as c:
                    assert c.execute("select 1").fetchone() == (1,)
                latencies.append(time.monotonic() - q0)
            time.sleep(0.05)
        t.join(180)
    assert not a_error, a_error
    assert done.is_set()
    assert latencies, "session A finished before session B could run anything"
    print(f"session B: {len(latencies)} answers while A was classified, slowest {max(latencies):.3f}s")
    assert max(latencies) < 5.0, sorted(latencies)[-5:]


def test_long_legit_statement_is_not_starved_by_hostile_sessions(proxy):
    """Several sessions keep the classification worker busy with distinct 30,000-term sums; another
    session's ordinary 6 KB statement (an ORM's IN list) must still answer within a few seconds."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def hostile(k: int) -> None:
        try:
            with raw_session(proxy, timeout=300) as s:
                i = 0
                while not stop.is_set():
                    simple_query(s, plus_chain(30_000, minus_at=1_000 + 1_000 * k + i))
                    i += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hostile, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)                               # the worker's queue is full of hostile jobs
        ids = ",".join(str(i) for i in range(1_500))
        slowest = 0.0
        with psycopg.connect(proxy.dsn("read"), connect_timeout=20, autocommit=True) as b:
            for j in range(3):
                sql = f"SELECT count(*) + {j} FROM generate_series(1, 20000) g WHERE g IN ({ids}) AND {j} = {j}"
                assert len(sql) > 4096
                q0 = time.monotonic()
                assert b.execute(sql).fetchone() == (1_499 + j,)
                slowest = max(slowest, time.monotonic() - q0)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert slowest < 4.0, f"a 6 KB SELECT from another session took {slowest:.1f}s"


# =========================================================================== over the cap


def test_sum_over_the_cap_is_denied_as_too_long(proxy):
    sql = plus_chain(100_000)
    assert len(sql) > CAP
    with raw_session(proxy, timeout=SESSION_TIMEOUT) as s:
        t0 = time.monotonic()
        msgs = simple_query(s, sql)
        elapsed = time.monotonic() - t0
        assert types(msgs) == ["E", "Z"], msgs
        err = error_of(msgs)
        assert err["C"] == "42501", err
        assert "too long" in err["M"] or "at most" in err["M"], err
        assert str(CAP) in err["M"] and str(len(sql)) in err["M"], err
        assert "parse.too_long" in err["M"], err
        assert elapsed < 5, elapsed
        assert first_value(simple_query(s, "select 4")) == "4"


def test_in_list_of_200000_items_is_denied_quickly(proxy):
    sql = "SELECT 1 WHERE 1 IN (" + ",".join(str(i) for i in range(200_000)) + ")"
    with raw_session(proxy, timeout=SESSION_TIMEOUT) as s:
        t0 = time.monotonic()
        msgs = simple_query(s, sql)
        elapsed = time.monotonic() - t0
        err = error_of(msgs)
        assert err is not None and err["C"] == "42501", msgs[:3]
        assert "at most" in err["M"] and str(CAP) in err["M"], err
        assert elapsed < 5, elapsed
        # the same through Parse (extended protocol)
        t0 = time.monotonic()
        s.sendall(parse_msg(sql, "big") + bind_execute_sync())
        msgs = read_until_ready(s)
        err = error_of(msgs)
        assert err is not None and err["C"] == "42501" and str(CAP) in err["M"], msgs[:3]
        assert time.monotonic() - t0 < 5
        assert first_value(simple_query(s, "select 5")) == "5"


def test_in_list_under_the_cap_is_answered(proxy):
    items = 9_000
    sql = "SELECT count(*) FROM generate_series(1, 20000) g WHERE g IN (" + \
          ",".join(str(i) for i in range(items)) + ")"
    assert 4096 < len(sql) < CAP
    with raw_session(proxy, timeout=SESSION_TIMEOUT) as s:
        msgs = simple_query(s, sql)
        assert error_of(msgs) is None, error_of(msgs)
        assert first_value(msgs) == str(items - 1)


# =========================================================================== deep nesting


@pytest.mark.parametrize("depth", [10_000, 30_000])
def test_deep_parentheses(proxy, depth):
    sql = "SELECT " + "(" * depth + "1" + ")" * depth
    with raw_session(proxy, timeout=SESSION_TIMEOUT) as s:
        msgs = simple_query(s, sql)
        assert msgs[-1][0] == b"Z"
        err = error_of(msgs)
        if err is None:
            assert first_value(msgs) == "1"
        else:
            assert err["C"] in {"42501", "42601", "54001"}, err
            assert err["M"], err
        assert first_value(simple_query(s, "select 6")) == "6"


@pytest.mark.parametrize("kind", ["not", "uminus", "subselect", "array", "case"])
def test_other_deep_nestings(proxy, kind):
    n = {"not": 8_000, "uminus": 20_000, "subselect": 3_000, "array": 5_000, "case": 1_500}[kind]
    sql = {
        "not": lambda: "SELECT " + "NOT " * n + "true",
        "uminus": lambda: "SELECT " + "- " * n + "1",
        "subselect": lambda: "SELECT " + "(SELECT " * n + "1" + ")" * n,
        "array": lambda: "SELECT " + "ARRAY[" * n + "1" + "]" * n,
        "case": lambda: "SELECT " + "CASE WHEN true THEN " * n + "1" + " END" * n,
    }[kind]()
    assert len(sql) < CAP
    with raw_session(proxy, timeout=SESSION_TIMEOUT) as s:
        msgs = simple_query(s, sql)
        assert msgs[-1][0] == b"Z"
        err = error_of(msgs)
        if err is not None:
            assert err["C"] in {"42501", "42601", "54001"}, err
        assert first_value(simple_query(s, "select 7")) == "7"
    assert proxy.alive(), proxy.log()[-4000:]


# =========================================================================== bytes that are not SQL


def test_nul_inside_query_is_a_protocol_error(proxy, admin):
    with raw_session(proxy, "write", timeout=SESSION_TIMEOUT) as s:
        s.sendall(msg(b"Q", b"SELECT 1;\x00 DROP TABLE pg_class\x00"))
        data, closed = read_to_eof(s, 10)
        assert closed, data
        msgs = split_msgs(data)
        assert msgs and msgs[-1][0] == b"E", msgs
        f = fields(msgs[-1][1])
        assert f["S"] == "FATAL" and f["C"] == "08P01", f
        assert "NUL" in f["M"], f


def test_nul_inside_parse_is_refused(proxy):
    """Parse's text is a C string: bytes after it must be the parameter types, exactly."""
    with raw_session(proxy, "read", timeout=SESSION_TIMEOUT) as s:
        body = b"\0" + b"SELECT 1\0; DELETE FROM x\0" + struct.pack("!h", 0)
        s.sendall(msg(b"P", body) + msg(b"S"))
        data, closed = read_to_eof(s, 10)
        msgs = split_msgs(data)
        errs = [fields(b) for t, b in msgs if t == b"E"]
        assert errs, (data, closed)
        assert errs[0]["C"] in {"08P01", "42501", "42601"}, errs


@pytest.mark.parametrize("raw", [
    b"SELECT '\xff'",                      # not UTF-8 at all
    b"SELECT '\xc3'",                      # truncated sequence
    b"SELECT '\xed\xa0\x80'",              # a UTF-16 surrogate encoded as UTF-8
    b"SELECT 1 -- \xc0\xaf",               # overlong encoding, in a comment
], ids=["ff", "truncated", "surrogate", "overlong-comment"])
def test_invalid_utf8_in_query_is_an_error(proxy, raw):
    with raw_session(proxy, "read", timeout=SESSION_TIMEOUT) as s:
        msgs, closed = _invalid_text_refused(s, query(raw))
        if not closed:          # an ERROR, not FATAL: the session goes on
            assert msgs[-1][0] == b"Z", msgs
            assert first_value(simple_query(s, "select 8")) == "8"


@pytest.mark.parametrize("raw", [b"SELECT '\xff'", b"SELECT '\xed\xb0\x80'"])
def test_invalid_utf8_in_parse_is_an_error(proxy, raw):
    with raw_session(proxy, "read", timeout=SESSION_TIMEOUT) as s:
        _invalid_text_refused(s, parse_msg(raw) + bind_execute_sync())


def _invalid_text_refused(s, messages: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Send ``messages`` (text that is not UTF-8); the answer is an error and no row.
    Returns (what came back within 3 s, whether the server closed)."""
    s.sendall(messages)
    data, closed = read_to_eof(s, 3)
    msgs = split_msgs(data)
    errs = [fields(b) for t, b in msgs if t == b"E"]
    assert errs, (data, closed)
    assert errs[0]["C"] in {"22021", "08P01", "42501"}, errs
    assert not any(t == b"D" for t, _ in msgs), msgs
    return msgs, closed


# =========================================================================== statement count


def test_many_statements_in_one_query(proxy):
    sql = "SELECT 1;" * 7_000
    assert len(sql) < CAP
    with raw_session(proxy, timeout=SESSION_TIMEOUT) as s:
        msgs = simple_query(s, sql)
        err = error_of(msgs)
        if err is None:
            assert sum(1 for t, _ in msgs if t == b"D") == 7_000
        else:
            assert err["C"] == "42501", err
        assert first_value(simple_query(s, "select 9")) == "9"

"""Token authentication through the real proxy: what a client sees for every refusal.

Each refusal is checked twice:
- with psycopg (what a user sees: the message names the check and never echoes the token);
- with a raw socket (libpq does not hand the SQLSTATE of a failed login to psycopg, so the
  ErrorResponse fields -- severity FATAL, SQLSTATE 28P01/28000/... -- are read off the wire).
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid

import psycopg
import pytest

from policy.tokens import mint
from proxy.keys import generate_keypair, load_private_key
from tests.integration.conftest import DB, USER
from tests.integration.rawpg import connect, fields, read_msg, start_login

# --------------------------------------------------------------------------- raw wire helpers


def raw_login(port: int, password: str | bytes, *, user: str = USER, db: str = DB,
              extra: dict[str, str] | None = None) -> tuple[list[tuple[bytes, bytes]], bool]:
    """StartupMessage, expect AuthenticationCleartextPassword, send `password`, read to 'Z' or EOF.

    Returns (messages after the password, closed_by_server)."""
    with connect(port) as s:
        start_login(s, password, user=user, db=db, extra=extra)
        msgs = []
        while True:
            try:
                m = read_msg(s)
            except (EOFError, ConnectionResetError):
                return msgs, True
            msgs.append(m)
            if m[0] == b"Z":
                return msgs, False


def raw_refusal(port: int, password: str | bytes, **kw) -> dict[str, str]:
    """The single FATAL ErrorResponse a refused login gets, as a field dict; asserts the close."""
    msgs, closed = raw_login(port, password, **kw)
    assert closed, f"connection not closed after refusal: {msgs}"
    errors = [m for m in msgs if m[0] == b"E"]
    assert len(errors) == 1 and msgs[-1][0] == b"E", msgs
    assert not any(m[0] == b"R" for m in msgs), f"an authentication message followed a refusal: {msgs}"
    f = fields(errors[0][1])
    assert f.get("S") == "FATAL" and f.get("V", "FATAL") == "FATAL", f
    return f


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()


def _claims(proxy, **over):
    now = int(time.time())
    claims = {"sub": USER, "db": DB, "scope": "read", "jti": uuid.uuid4().hex, "aud": proxy.audience,
              "iat": now, "nbf": now, "exp": now + 600, "reason": "test"}
    claims.update(over)
    return claims


def _assert_no_token(text: str, token: str) -> None:
    assert token not in text
    for part in token.split("."):
        if len(part) >= 12:                      # no recognisable segment (header, payload, signature)
            assert part not in text, f"token segment {part[:16]}... echoed in {text!r}"


def _connect_error(dsn: str, **kw) -> str:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(dsn, connect_timeout=10, **kw).close()
    return str(ei.value)


# --------------------------------------------------------------------------- the refusal table


@pytest.fixture(scope="module")
def foreign_keys(tmp_path_factory, proxy):
    """A key pair with the proxy's own kid (bad signature) and one with an unknown kid."""
    d = tmp_path_factory.mktemp("foreign-keys")
    same_kid = generate_keypair(d / "same", proxy.keypair.kid)
    other = generate_keypair(d / "other", "other-kid")
    return load_private_key(same_kid.private_path), (load_private_key(other.private_path), other.kid)


def _case_tokens(proxy, foreign_keys) -> dict[str, tuple[str, dict]]:
    """name -> (token, connection kwargs); built fresh per test so times are current."""
    same_kid_key, (other_key, other_kid) = foreign_keys
    now = time.time()
    alg_none = ".".join([_b64({"alg": "none", "typ": "JWT", "kid": proxy.keypair.kid}), _b64(_claims(proxy)), ""])
    alg_hs256 = ".".join([_b64({"alg": "HS256", "typ": "JWT", "kid": proxy.keypair.kid}), _b64(_claims(proxy)),
                          "c2lnbmF0dXJlLW5vdC1yZWFsbHktaG1hYw"])
    return {
        "expired": (proxy.token("read", now=now - 3600, ttl=60), {}),
        "not_yet_valid": (mint(proxy.private, kid=proxy.keypair.kid, sub=USER, db=DB, scope="read",
                               audience=proxy.audience, now=now, ttl=7200, nbf=now + 3600), {}),
        "bad_signature": (mint(same_kid_key, kid=proxy.keypair.kid, sub=USER, db=DB, scope="read",
                               audience=proxy.audience, now=now, ttl=600), {}),
        "unknown_key": (mint(other_key, kid=other_kid, sub=USER, db=DB, scope="read",
                             audience=proxy.audience, now=now, ttl=600), {}),
        "alg_none": (alg_none, {}),
        "alg_hs256": (alg_hs256, {}),
        "wrong_user": (proxy.token("read", sub="bob"), {"user": USER}),
        "wrong_database": (proxy.token("read", db="otherdb"), {"db": DB}),
        "wrong_audience": (proxy.token("read", audience="some-other-proxy"), {}),
        "garbage": ("not-a-token", {}),
        "unknown_scope": (proxy.token("admin"), {}),
    }


# name -> (substrings the message must contain, accepted SQLSTATEs)
EXPECTED = {
    "expired": (["expired at"], {"28P01"}),
    "not_yet_valid": (["not valid before"], {"28P01"}),
    "bad_signature": (["signature"], {"28P01"}),
    "unknown_key": (["other-kid", "not configured"], {"28P01"}),
    "alg_none": (["algorithm", "'none'"], {"28P01"}),
    "alg_hs256": (["algorithm", "HS256"], {"28P01"}),
    "wrong_user": (["user", "'bob'", "'alice'"], {"28000"}),
    "wrong_database": (["database", "'otherdb'", "'appdb'"], {"28000"}),
    "wrong_audience": (["audience", "some-other-proxy"], {"28P01"}),
    "garbage": (["not a valid JWT"], {"28P01"}),
    "unknown_scope": (["scope", "'admin'", "not configured"], {"28000", "28P01"}),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_refused_with_psycopg(proxy, foreign_keys, case):
    token, kw = _case_tokens(proxy, foreign_keys)[case]
    user, db = kw.get("user", USER), kw.get("db", DB)
    msg = _connect_error(proxy.dsn("read", user=user, db=db, token=token, sslmode="require"))
    needles, _ = EXPECTED[case]
    assert "FATAL" in msg and "pgwarden" in msg, msg
    for needle in needles:
        assert needle in msg, f"{case}: {needle!r} not in {msg!r}"
    _assert_no_token(msg, token)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_refused_on_the_wire(proxy, foreign_keys, case):
    token, kw = _case_tokens(proxy, foreign_keys)[case]
    f = raw_refusal(proxy.port, token, user=kw.get("user", USER), db=kw.get("db", DB))
    needles, states = EXPECTED[case]
    assert f["C"] in states, f
    for needle in needles:
        assert needle in f["M"], f
    _assert_no_token(json.dumps(f), token)


def test_expired_message_gives_the_time(proxy):
    exp = time.time() - 3600 + 60
    token = proxy.token("read", now=exp - 60, ttl=60)
    msg = _connect_error(proxy.dsn("read", token=token, sslmode="require"))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(exp)))
    assert f"expired at {stamp}" in msg, msg


def test_refusals_never_logged_with_the_token(proxy, foreign_keys):
    tokens = [t for t, _ in _case_tokens(proxy, foreign_keys).values()]
    for t in tokens:
        raw_refusal(proxy.port, t)
    log = proxy.log()
    for t in tokens:
        if t != "not-a-token":
            _assert_no_token(log, t)


def test_empty_password_refused_by_libpq_and_by_the_proxy(proxy):
    # libpq never sends an empty password: it fails on its own side.
    msg = _connect_error(proxy.dsn("read", token="", sslmode="require"))
    assert "password" in msg
    # A client that does send one gets a FATAL naming the problem.
    f = raw_refusal(proxy.port, "")
    assert f["C"] == "28P01" and "empty password" in f["M"], f
    f = raw_refusal(proxy.port, "   \n")
    assert f["C"] == "28P01" and "empty password" in f["M"], f


def test_oversized_token_refused_without_echo(proxy):
    big = "A" * 20_000 + "." + "B" * 10 + "." + "C" * 10
    f = raw_refusal(proxy.port, big)
    assert f["C"] == "28P01" and "too long" in f["M"], f
    assert "AAAAAAAAAAAA" not in f["M"]


def test_valid_token_accepted(proxy):
    with psycopg.connect(proxy.dsn("read", sslmode="require"), connect_timeout=10) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == ("pgw_read", DB)
    msgs, closed = raw_login(proxy.port, proxy.token("read"))
    assert not closed
    types = [m[0] for m in msgs]
    assert types[0] == b"R" and msgs[0][1] == struct.pack("!i", 0)
    assert b"K" in types and types[-1] == b"Z"


def test_large_token_accepted(proxy):
    token = proxy.token("read", reason="r" * 1100, ticket="T-" + "9" * 1100)
    assert 2500 <= len(token) <= 4000, len(token)
    with psycopg.connect(proxy.dsn("read", token=token, sslmode="require"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_token_with_trailing_newline_accepted(proxy):
    # A token read from a file often ends with a newline.
    msgs, closed = raw_login(proxy.port, proxy.token("read") + "\n")
    assert not closed and msgs[-1][0] == b"Z"


# --------------------------------------------------------------------------- startup options


def test_options_guarded_setting_refused(proxy):
    dsn = proxy.dsn("read", sslmode="require", options="-c default_transaction_read_only=off")
    msg = _connect_error(dsn)
    assert "FATAL" in msg and "default_transaction_read_only" in msg, msg
    # and on the wire: a FATAL, not a session
    f = raw_refusal(proxy.port, proxy.token("read"), extra={"options": "-c default_transaction_read_only=off"})
    assert "default_transaction_read_only" in f["M"] and f["C"] in {"42501", "28000"}, f


@pytest.mark.parametrize("params, needle", [
    ({"options": "-c session_replication_role=replica"}, "session_replication_role"),
    ({"options": "--role=postgres"}, "role"),
    ({"options": "-c search_path=public,pg_catalog"}, "search_path"),
    ({"default_transaction_read_only": "off"}, "default_transaction_read_only"),
    ({"replication": "database"}, "replication"),
])
def test_other_startup_refusals(proxy, params, needle):
    f = raw_refusal(proxy.port, proxy.token("write"), extra=params)
    assert f["C"] in {"42501", "28000"}, f
    assert needle in f["M"], f


def test_options_allowed_setting_passes(proxy):
    dsn = proxy.dsn("read", sslmode="require", options="-c statement_timeout=1234")
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        assert conn.execute("show statement_timeout").fetchone() == ("1234ms",)
        # the read scope's own read-only setting still holds
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)


# --------------------------------------------------------------------------- still up


def test_proxy_alive_after_all_refusals(proxy):
    assert proxy.alive(), proxy.log()[-4000:]
    with psycopg.connect(proxy.dsn("read"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

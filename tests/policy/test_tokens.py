"""Tests for policy.tokens: what a client, an operator and an attacker see."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import math
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import tokens
from policy.tokens import (
    BadAlgorithm,
    BadSignature,
    Claims,
    Expired,
    InvalidClaim,
    Malformed,
    MissingClaim,
    NotYetValid,
    TokenError,
    UnknownKey,
    WrongAudience,
    WrongDatabase,
    WrongUser,
    format_ts,
    mint,
    parse_duration,
    verify,
)

NOW = 1_796_115_600.0  # 2026-12-01T09:00:00Z
AUD = "pgwarden-test"
KID = "k1"
PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEYS = {KID: PRIVATE.public_key()}


def make(**overrides) -> str:
    args = dict(kid=KID, sub="alice", db="appdb", scope="read", audience=AUD,
                now=NOW, ttl=3600.0, reason="INC-42 investigate slow orders",
                ticket="INC-42", approver="bob")
    args.update(overrides)
    key = args.pop("key", PRIVATE)
    return mint(key, **args)


def check(token: str, **overrides) -> Claims:
    args = dict(now=NOW + 10, audience=AUD, user="alice", database="appdb")
    args.update(overrides)
    keys = args.pop("keys", KEYS)
    return verify(token, keys, **args)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def claims_dict(**overrides) -> dict:
    payload = {"sub": "alice", "db": "appdb", "scope": "read", "jti": "g-1",
               "iat": NOW, "nbf": NOW, "exp": NOW + 3600, "aud": AUD}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not ...}


def signed(payload: dict, header: dict | None = None, key=PRIVATE) -> str:
    """A token with exactly this header and payload, really signed."""
    header = {"alg": "EdDSA", "kid": KID, "typ": "JWT"} if header is None else header
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


def refused(token: str, error: type[TokenError], **overrides) -> TokenError:
    with pytest.raises(error) as info:
        check(token, **overrides)
    exc = info.value
    assert_no_token_text(exc, token)
    return exc


def assert_no_token_text(exc: TokenError, token: str) -> None:
    texts = [str(exc), repr(exc), exc.message, *map(str, exc.args),
             *map(str, exc.details.values())]
    for text in texts:
        if len(token.strip()) >= 12:  # shorter strings occur in any message
            assert token.strip() not in text
        for part in token.split("."):
            if len(part) >= 12:  # any recognisable piece of the token
                assert part not in text


# ----------------------------------------------------------------- accepted


def test_valid_token_yields_every_claim():
    token = make(jti="grant-7")
    claims = check(token)
    assert claims == Claims(
        sub="alice", db="appdb", scope="read", jti="grant-7", iat=NOW, nbf=NOW,
        exp=NOW + 3600, aud=AUD, reason="INC-42 investigate slow orders",
        ticket="INC-42", approver="bob", kid=KID,
    )


def test_optional_claims_default_when_absent():
    claims = check(make(reason="", ticket=None, approver=None))
    assert (claims.reason, claims.ticket, claims.approver) == ("", None, None)
    payload = json.loads(base64.urlsafe_b64decode(make(ticket=None).split(".")[1] + "=="))
    assert "ticket" not in payload


def test_mint_header_and_defaults():
    token = make()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"] == KID
    claims = check(token)
    assert len(claims.jti) == 32 and int(claims.jti, 16) >= 0  # uuid4 hex
    assert claims.jti != check(make()).jti
    assert claims.iat == claims.nbf == NOW and claims.exp == NOW + 3600


def test_mint_explicit_nbf():
    claims = check(make(nbf=NOW + 60), now=NOW + 61)
    assert claims.nbf == NOW + 60 and claims.iat == NOW


def test_user_and_database_checks_are_optional():
    claims = verify(make(), KEYS, now=NOW, audience=AUD)
    assert claims.sub == "alice" and claims.db == "appdb"


def test_clock_is_never_read():
    # Valid only in 2001; the real clock says otherwise, `now` decides.
    old = 1_000_000_000.0
    claims = check(make(now=old, ttl=60), now=old + 30)
    assert claims.exp == old + 60
    # And a token valid "today" by the real clock is expired at `now`.
    refused(make(now=NOW, ttl=60), Expired, now=NOW + 61)


def test_token_with_several_kb_of_claims_verifies():
    reason = "investigating orders " * 150  # ~3 KB
    token = make(reason=reason)
    assert 4000 < len(token) < tokens.MAX_TOKEN_LENGTH
    assert check(token).reason == reason


def test_token_over_16_kib_is_malformed():
    token = make(reason="x" * 13_000)
    assert len(token) > 16 * 1024
    exc = refused(token, Malformed)
    assert "too long" in exc.message


def test_surrounding_whitespace_is_ignored():
    assert check(make() + "\n").sub == "alice"


def test_key_rotation_and_kid_selection():
    keys = {"old": OTHER.public_key(), "new": PRIVATE.public_key()}
    assert check(make(kid="new"), keys=keys).kid == "new"
    assert check(make(kid="old", key=OTHER), keys=keys).kid == "old"


def test_missing_kid_uses_the_only_key():
    token = signed(claims_dict(), header={"alg": "EdDSA", "typ": "JWT"})
    assert check(token).kid == KID
    keys = {"a": OTHER.public_key(), KID: PRIVATE.public_key()}
    exc = refused(token, UnknownKey, keys=keys)
    assert "no key id" in exc.message


def test_audience_list_containing_ours_is_accepted():
    token = signed(claims_dict(aud=["other", AUD]))
    assert check(token).aud == AUD


# ----------------------------------------------------------------- refused


def test_expired_names_the_time():
    token = make(now=NOW, ttl=3600)  # exp 2026-12-01T10:00:00Z
    exc = refused(token, Expired, now=NOW + 4000)
    assert exc.message == "token expired at 2026-12-01T10:00:00Z"
    assert (exc.check, exc.sqlstate) == ("expired", "28P01")
    assert exc.details["exp"] == NOW + 3600


def test_expiry_boundary():
    token = make(now=NOW, ttl=3600)
    assert check(token, now=NOW + 3599.999).sub == "alice"
    refused(token, Expired, now=NOW + 3600)


def test_not_yet_valid_names_the_time():
    token = make(nbf=NOW + 600)
    exc = refused(token, NotYetValid, now=NOW + 599)
    assert exc.message == "token not valid before 2026-12-01T09:10:00Z"
    assert exc.check == "not_yet_valid"


def test_leeway_applies_to_both_ends():
    token = make(now=NOW, ttl=60, nbf=NOW + 10)
    assert check(token, now=NOW + 65, leeway=10).sub == "alice"
    assert check(token, now=NOW + 5, leeway=10).sub == "alice"
    refused(token, Expired, now=NOW + 65, leeway=2)
    refused(token, NotYetValid, now=NOW + 5, leeway=2)
    with pytest.raises(ValueError):
        check(token, leeway=-1)


def test_signature_by_another_key_with_same_kid():
    exc = refused(make(key=OTHER), BadSignature)
    assert exc.check == "signature" and exc.sqlstate == "28P01"
    assert "k1" in exc.message


def test_tampered_payload_is_bad_signature():
    header, _, sig = make().split(".")
    forged = f"{header}.{b64json(claims_dict(sub='admin', scope='ddl'))}.{sig}"
    refused(forged, BadSignature, user="admin")


def test_unknown_kid():
    exc = refused(make(kid="k9"), UnknownKey)
    assert "'k9'" in exc.message and exc.check == "unknown_key"


def test_no_keys_configured():
    refused(make(), UnknownKey, keys={})


def alg_none_token(payload: dict, header: dict) -> str:
    return f"{b64json(header)}.{b64json(payload)}."


@pytest.mark.parametrize("header", [
    {"alg": "none", "typ": "JWT"},
    {"alg": "none", "kid": KID},
    {"alg": "None", "kid": KID},
    {"alg": "NONE"},
])
def test_alg_none_is_refused(header):
    token = alg_none_token(claims_dict(), header)
    exc = refused(token, BadAlgorithm)
    assert exc.check == "algorithm"
    if header["alg"] == "none":
        assert exc.message == "token algorithm 'none' is not accepted (EdDSA required)"


@pytest.mark.parametrize("secret", [
    PRIVATE.public_key().public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo),
    PRIVATE.public_key().public_bytes(serialization.Encoding.Raw,
                                      serialization.PublicFormat.Raw),
])
def test_hs256_signed_with_public_key_is_refused(secret):
    # The classic confusion attack: HMAC keyed with the (public) verification key.
    header = {"alg": "HS256", "kid": KID, "typ": "JWT"}
    signing_input = f"{b64json(header)}.{b64json(claims_dict(scope='ddl'))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    exc = refused(token, BadAlgorithm)
    assert exc.message == "token algorithm 'HS256' is not accepted (EdDSA required)"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "Ed25519", "eddsa", "EdDSA ", 5, None, ["EdDSA"]])
def test_other_algorithms_are_refused(alg):
    header = {"kid": KID} if alg is None else {"alg": alg, "kid": KID}
    # Really signed with Ed25519: only the header's alg is wrong.
    refused(signed(claims_dict(), header=header), BadAlgorithm)


def test_wrong_audience():
    exc = refused(make(audience="other-proxy"), WrongAudience)
    assert "'other-proxy'" in exc.message and exc.check == "audience"
    refused(signed(claims_dict(aud=["a", "b"])), WrongAudience)


def test_wrong_user():
    exc = refused(make(), WrongUser, user="bob")
    assert exc.message == "token is for user 'alice', not 'bob'"
    assert (exc.check, exc.sqlstate) == ("wrong_user", "28000")


def test_wrong_database():
    exc = refused(make(), WrongDatabase, database="billing")
    assert exc.message == "token is for database 'appdb', not 'billing'"
    assert (exc.check, exc.sqlstate) == ("wrong_database", "28000")


def test_long_values_are_shortened_in_messages():
    exc = refused(make(), WrongUser, user="x" * 5000)
    assert len(exc.message) < 300


@pytest.mark.parametrize("garbage", [
    "", "   ", "abc", "a.b.c", "a.b", "a.b.c.d", "....", "Bearer x.y.z",
    bytes(range(256)).decode("latin-1"), "\x00\x00\x00", "ä.ö.ü",
    "eyJ.eyJ.", "W10.e30.", "bnVsbA.e30.", "MQ.e30.",  # header [] / null / 1
])
def test_garbage_is_malformed(garbage):
    exc = refused(garbage, Malformed)
    assert exc.message.startswith("token is not a valid JWT")
    assert (exc.check, exc.sqlstate) == ("malformed", "28P01")


def test_header_without_alg_is_refused():
    exc = refused("e30.e30.", BadAlgorithm)  # header {}
    assert exc.message == "token algorithm (missing) is not accepted (EdDSA required)"


def test_non_text_is_malformed():
    with pytest.raises(Malformed):
        verify(make().encode(), KEYS, now=NOW, audience=AUD)  # type: ignore[arg-type]


def test_signed_payload_that_is_not_an_object_is_malformed():
    header = {"alg": "EdDSA", "kid": KID}
    for payload in (b"[1,2]", b"not json", b'"s"'):
        signing_input = f"{b64json(header)}.{b64(payload)}"
        token = f"{signing_input}.{b64(PRIVATE.sign(signing_input.encode()))}"
        refused(token, Malformed)


@pytest.mark.parametrize("claim", tokens.REQUIRED_CLAIMS)
@pytest.mark.parametrize("absent", [..., None])
def test_missing_claim_is_named(claim, absent):
    exc = refused(signed(claims_dict(**{claim: absent})), MissingClaim)
    assert exc.message == f"token is missing the '{claim}' claim"
    assert exc.details["claim"] == claim


@pytest.mark.parametrize("claim,value", [
    ("exp", "tomorrow"), ("exp", True), ("exp", [1]), ("exp", 1e300), ("exp", -5),
    ("exp", math.inf), ("nbf", "now"), ("iat", {}), ("sub", 42), ("sub", ""),
    ("db", ["appdb"]), ("scope", False), ("jti", 7), ("aud", 3), ("aud", []),
    ("aud", [AUD, 1]), ("reason", 5), ("ticket", ["x"]), ("approver", {"a": 1}),
])
def test_wrongly_typed_claim(claim, value):
    exc = refused(signed(claims_dict(**{claim: value})), InvalidClaim)
    assert claim in exc.message and exc.check == "invalid_claim"


def test_error_ids_and_sqlstates():
    classes = [tokens.Malformed, BadAlgorithm, UnknownKey, BadSignature, Expired,
               NotYetValid, WrongAudience, MissingClaim, InvalidClaim, WrongUser,
               WrongDatabase]
    assert len({c.check for c in classes}) == len(classes)
    for cls in classes:
        assert issubclass(cls, TokenError)
        assert cls.sqlstate == ("28000" if cls in (WrongUser, WrongDatabase) else "28P01")


def test_mint_refuses_nonsense():
    with pytest.raises(ValueError):
        make(ttl=0)
    with pytest.raises(ValueError):
        make(sub="")
    with pytest.raises(ValueError):
        make(kid="")
    with pytest.raises(ValueError):
        make(nbf=NOW + 7200)
    with pytest.raises(TypeError):
        make(now="now")


# --------------------------------------------------------------- properties

ALPHABET = st.characters(codec="utf-8")
B64ISH = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=", max_size=300)


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(st.text(alphabet=ALPHABET, max_size=300), B64ISH))
def test_random_text_only_raises_token_error(text):
    with pytest.raises(TokenError) as info:
        verify(text, KEYS, now=NOW, audience=AUD, user="alice", database="appdb")
    assert_no_token_text(info.value, text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
CLAIM_VALUE = st.one_of(JSON, st.floats(min_value=NOW - 7200, max_value=NOW + 7200),
                        st.sampled_from(["alice", "appdb", AUD, "read"]))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64", "x"]),
                           st.one_of(JSON, st.sampled_from(["EdDSA", KID])), max_size=4),
    payload=st.dictionaries(st.sampled_from([*tokens.REQUIRED_CLAIMS, "reason", "ticket",
                                             "approver", "x"]), CLAIM_VALUE, max_size=11),
)
def test_signed_random_claims_give_claims_or_token_error(header, payload):
    token = signed(payload, header=header)
    try:
        claims = check(token, now=NOW)
    except TokenError as exc:
        assert_no_token_text(exc, token)
    else:
        assert claims.sub == "alice" and claims.db == "appdb" and claims.aud == AUD
        assert claims.nbf <= NOW < claims.exp


@settings(max_examples=200, deadline=None, database=None)
@given(st.data())
def test_any_single_character_change_is_refused(data):
    token = make()
    i = data.draw(st.integers(0, len(token) - 1))
    c = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."))
    if token[i] == c:
        return
    with pytest.raises(TokenError):
        check(token[:i] + c + token[i + 1:])


# ------------------------------------------------------------------ helpers


def test_format_ts():
    assert format_ts(NOW + 3600) == "2026-12-01T10:00:00Z"
    assert format_ts(NOW + 0.9) == "2026-12-01T09:00:00Z"
    assert format_ts(0) == "1970-01-01T00:00:00Z"
    assert isinstance(format_ts(1e300), str)  # never raises


@pytest.mark.parametrize("text,seconds", [
    ("30m", 1800), ("2h", 7200), ("90s", 90), ("1h30m", 5400), ("45", 45),
    ("1d", 86400), ("1d2h3m4s", 93784), (" 15M ", 900), ("1.5h", 5400), ("1h 30m", 5400),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", " ", "abc", "10x", "-5", "1m1h", "0", "0m", "h",
                                  "1.5.h", "1hh", "1h-30m", "inf", "nan", "1e3"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert "duration" in str(info.value)


# -------------------------------------------------------------------- purity


def test_module_is_pure():
    source = Path(tokens.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "structlog", "proxy", "time", "os"}
    assert "datetime.now" not in source and "utcnow" not in source

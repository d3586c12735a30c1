"""Access tokens: mint and verify the short-lived JWTs clients send as password.

Job: turn a grant into a signed token (``mint``) and turn the password a client
sent back into trusted ``Claims`` or a precise ``TokenError`` (``verify``).

Rules (see DESIGN.md, "Tokens"):

* Pure: no sockets, no asyncio, no logging, and the clock is never read here;
  the caller passes ``now`` as a UNIX timestamp.
* Ed25519 only.  The algorithm is pinned to ``EdDSA``; whatever ``alg`` the
  token header names is checked against that pin and never used to pick a
  verifier, so ``alg: none`` and HS256-with-the-public-key are refused.
* Every failure is a ``TokenError`` subclass naming the check that failed
  (``check``), the SQLSTATE to send (``sqlstate``) and a human message.  The
  message never contains the token text; values quoted from the token are
  shortened.
* Time checks (``exp``, ``nbf``) are done here against ``now``; PyJWT's own
  time checks are disabled because they read the clock.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "ALGORITHM", "MAX_TOKEN_LENGTH", "REQUIRED_CLAIMS",
    "Claims", "TokenError", "Malformed", "BadAlgorithm", "UnknownKey",
    "BadSignature", "Expired", "NotYetValid", "WrongAudience", "MissingClaim",
    "InvalidClaim", "WrongUser", "WrongDatabase",
    "mint", "verify", "format_ts", "parse_duration",
]

ALGORITHM = "EdDSA"
MAX_TOKEN_LENGTH = 16 * 1024
REQUIRED_CLAIMS = ("sub", "db", "scope", "jti", "iat", "nbf", "exp", "aud")
# NumericDate values outside [1970, 9999] are refused as invalid claims.
_MAX_TS = 253402300799.0
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Claims:
    """The verified content of a token."""

    sub: str
    db: str
    scope: str
    jti: str
    iat: float
    nbf: float
    exp: float
    aud: str
    reason: str = ""
    ticket: str | None = None
    approver: str | None = None
    kid: str = ""


# --------------------------------------------------------------------- errors


class TokenError(Exception):
    """A token was refused.  ``check`` names the failed check, ``sqlstate`` the
    code for the FATAL sent to the client; ``details`` holds structured data
    (e.g. ``exp`` for ``Expired``) for logs and audit records."""

    check = "invalid"
    sqlstate = "28P01"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class Malformed(TokenError):
    check = "malformed"


class BadAlgorithm(TokenError):
    check = "algorithm"


class UnknownKey(TokenError):
    check = "unknown_key"


class BadSignature(TokenError):
    check = "signature"


class Expired(TokenError):
    check = "expired"


class NotYetValid(TokenError):
    check = "not_yet_valid"


class WrongAudience(TokenError):
    check = "audience"


class MissingClaim(TokenError):
    check = "missing_claim"


class InvalidClaim(TokenError):
    check = "invalid_claim"


class WrongUser(TokenError):
    check = "wrong_user"
    sqlstate = "28000"


class WrongDatabase(TokenError):
    check = "wrong_database"
    sqlstate = "28000"


# -------------------------------------------------------------------- helpers


def format_ts(t: float) -> str:
    """ISO-8601 UTC with seconds precision and a ``Z``: ``2026-12-01T10:00:00Z``.

    Fractions of a second are dropped.  A value that is no representable date
    is returned as a plain number rather than raising."""
    try:
        dt = datetime.fromtimestamp(math.floor(t), tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        return repr(t)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _show(value: Any, limit: int = 64) -> str:
    """Quote a value taken from a token for a message, shortened."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


_DURATION = re.compile(
    r"(?:(?P<d>\d+(?:\.\d+)?)d)?\s*(?:(?P<h>\d+(?:\.\d+)?)h)?\s*"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?\s*(?:(?P<s>\d+(?:\.\d+)?)s)?"
)
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Parse ``"30m"``, ``"2h"``, ``"90s"``, ``"1h30m"``, ``"1d"`` or a bare
    number of seconds (``"45"``) into seconds.  Units go largest first; the
    result must be greater than zero.  Raises ``ValueError`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string, not {type(text).__name__}")
    s = text.strip().lower()
    hint = "use e.g. '90s', '30m', '2h', '1h30m', '1d' or a number of seconds"
    if not s:
        raise ValueError(f"empty duration: {hint}")
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        seconds = float(s)
    else:
        match = _DURATION.fullmatch(s)
        if match is None or not any(match.groupdict().values()):
            raise ValueError(f"invalid duration {text!r}: {hint}")
        seconds = sum(
            float(v) * _UNIT_SECONDS[unit]
            for unit, v in match.groupdict().items()
            if v is not None
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return seconds


def _numeric(value: float) -> int | float:
    """JSON NumericDate: integral values are written without a fraction."""
    return int(value) if float(value).is_integer() else float(value)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")
    return float(value)


# ----------------------------------------------------------------------- mint


def mint(
    private_key: Ed25519PrivateKey,
    *,
    kid: str,
    sub: str,
    db: str,
    scope: str,
    audience: str,
    now: float,
    ttl: float,
    reason: str = "",
    ticket: str | None = None,
    approver: str | None = None,
    jti: str | None = None,
    nbf: float | None = None,
) -> str:
    """Sign a token for ``sub`` on ``db`` with ``scope``, valid from ``nbf``
    (default ``now``) until ``now + ttl``."""
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError("private_key must be an Ed25519PrivateKey")
    for name, value in (("kid", kid), ("sub", sub), ("db", db),
                        ("scope", scope), ("audience", audience)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
    now = _finite("now", now)
    ttl = _finite("ttl", ttl)
    if ttl <= 0:
        raise ValueError("ttl must be greater than zero")
    nbf = now if nbf is None else _finite("nbf", nbf)
    if nbf >= now + ttl:
        raise ValueError("nbf must be before the expiry (now + ttl)")
    if jti is None:
        jti = uuid.uuid4().hex
    elif not isinstance(jti, str) or not jti:
        raise ValueError("jti must be a non-empty string")
    if not isinstance(reason, str):
        raise TypeError("reason must be a string")
    payload: dict[str, Any] = {
        "sub": sub, "db": db, "scope": scope, "jti": jti, "aud": audience,
        "iat": _numeric(now), "nbf": _numeric(nbf), "exp": _numeric(now + ttl),
        "reason": reason,
    }
    for name, value in (("ticket", ticket), ("approver", approver)):
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None")
            payload[name] = value
    return jwt.encode(payload, private_key, algorithm=ALGORITHM,
                      headers={"kid": kid})


# --------------------------------------------------------------------- verify


def _read_header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise Malformed(
            f"token is not a valid JWT (expected 3 dot-separated parts, got {len(parts)})"
        )
    if not all(_SEGMENT.fullmatch(p) for p in parts):
        raise Malformed("token is not a valid JWT (characters outside base64url)")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise Malformed("token is not a valid JWT (unreadable header)") from None
    return header


def _pick_key(header: Mapping[str, Any],
              keys: Mapping[str, Ed25519PublicKey]) -> tuple[str, Ed25519PublicKey]:
    kid = header.get("kid")
    if kid is None:
        if len(keys) == 1:
            kid = next(iter(keys))
        else:
            raise UnknownKey(
                "token has no key id (kid) and "
                + ("no keys are configured" if not keys
                   else f"{len(keys)} keys are configured")
            )
    elif not isinstance(kid, str) or kid not in keys:
        raise UnknownKey(f"token key id {_show(kid)} is not configured", kid=kid)
    key = keys[kid]
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError(f"key {kid!r} is not an Ed25519PublicKey")
    return kid, key


def _timestamp(payload: Mapping[str, Any], name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidClaim(f"token claim {name!r} must be a number", claim=name)
    if not math.isfinite(value) or not 0 <= value <= _MAX_TS:
        raise InvalidClaim(f"token claim {name!r} is not a valid time", claim=name)
    return float(value)


def _string(payload: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or (required and not value):
        kind = "a non-empty string" if required else "a string"
        raise InvalidClaim(f"token claim {name!r} must be {kind}", claim=name)
    return value


def _audience(payload: Mapping[str, Any], audience: str) -> str:
    aud = payload["aud"]
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        if audience in aud:
            return audience
        shown = ", ".join(_show(a) for a in aud[:3]) + (", ..." if len(aud) > 3 else "")
    elif isinstance(aud, str) and aud:
        if aud == audience:
            return aud
        shown = _show(aud)
    else:
        raise InvalidClaim("token claim 'aud' must be a non-empty string", claim="aud")
    raise WrongAudience(
        f"token is for audience {shown}, not this proxy ({audience!r})",
        aud=aud, expected=audience,
    )


def verify(
    token: str,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    now: float,
    audience: str,
    user: str | None = None,
    database: str | None = None,
    leeway: float = 0.0,
) -> Claims:
    """Check ``token`` and return its claims, or raise a ``TokenError``.

    Checks, in order: size and shape, header ``alg`` is exactly ``EdDSA``,
    ``kid`` is configured (a token without ``kid`` is accepted only when one
    key is configured), signature, presence and types of the required claims,
    ``exp`` and ``nbf`` against ``now`` (with ``leeway`` seconds of slack),
    ``aud``, then ``sub == user`` and ``db == database`` when given.
    Surrounding whitespace (a trailing newline from a file) is ignored."""
    now = _finite("now", now)
    leeway = _finite("leeway", leeway)
    if leeway < 0:
        raise ValueError("leeway must not be negative")
    if not isinstance(audience, str) or not audience:
        raise ValueError("audience must be a non-empty string")

    if not isinstance(token, str):
        raise Malformed("token is not a valid JWT (not text)")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Malformed(
            f"token is too long ({len(token)} characters, limit {MAX_TOKEN_LENGTH})"
        )
    token = token.strip()
    if not token:
        raise Malformed("token is not a valid JWT (empty password)")

    header = _read_header(token)
    alg = header.get("alg")
    if alg != ALGORITHM:
        shown = "(missing)" if alg is None else _show(alg)
        raise BadAlgorithm(
            f"token algorithm {shown} is not accepted ({ALGORITHM} required)", alg=alg
        )
    kid, key = _pick_key(header, keys)

    try:
        payload = jwt.decode(
            token, key, algorithms=[ALGORITHM],
            options={
                "verify_signature": True, "verify_exp": False,
                "verify_nbf": False, "verify_iat": False, "verify_aud": False,
                "verify_iss": False, "verify_sub": False, "verify_jti": False,
                "require": [],
            },
        )
    except jwt.InvalidSignatureError:
        raise BadSignature(
            f"token signature does not verify with key {kid!r}", kid=kid
        ) from None
    except jwt.InvalidAlgorithmError:  # pragma: no cover - alg checked above
        raise BadAlgorithm(f"token algorithm is not accepted ({ALGORITHM} required)") from None
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise Malformed("token is not a valid JWT (unreadable payload)") from None

    for name in REQUIRED_CLAIMS:
        if payload.get(name) is None:
            raise MissingClaim(f"token is missing the {name!r} claim", claim=name)
    iat = _timestamp(payload, "iat")
    nbf = _timestamp(payload, "nbf")
    exp = _timestamp(payload, "exp")
    sub = _string(payload, "sub", required=True)
    db = _string(payload, "db", required=True)
    scope = _string(payload, "scope", required=True)
    jti = _string(payload, "jti", required=True)
    reason = _string(payload, "reason", required=False) or ""
    ticket = _string(payload, "ticket", required=False)
    approver = _string(payload, "approver", required=False)

    if now >= exp + leeway:
        raise Expired(f"token expired at {format_ts(exp)}", exp=exp, jti=jti, sub=sub)
    if now < nbf - leeway:
        raise NotYetValid(f"token not valid before {format_ts(nbf)}", nbf=nbf, jti=jti, sub=sub)
    aud = _audience(payload, audience)
    if user is not None and sub != user:
        raise WrongUser(f"token is for user {_show(sub)}, not {_show(user)}",
                        sub=sub, user=user, jti=jti)
    if database is not None and db != database:
        raise WrongDatabase(f"token is for database {_show(db)}, not {_show(database)}",
                            db=db, database=database, jti=jti)

    assert sub is not None and db is not None and scope is not None and jti is not None
    return Claims(sub=sub, db=db, scope=scope, jti=jti, iat=iat, nbf=nbf, exp=exp,
                  aud=aud, reason=reason, ticket=ticket, approver=approver, kid=kid)

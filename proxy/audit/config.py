"""The ``[audit]`` section of pgwarden.toml.

Job: read and validate the recording settings, and load the keys they name.
Both the proxy (which signs) and the auditor's tools (which verify) use it;
an auditor's machine may hold only the public keys.

    [audit]
    dir = "recordings"                      # <dir>/<YYYY-MM-DD>/<session_id>.jsonl
    signing_key = "keys/rec.key.pem"        # Ed25519 private key (pgwarden keygen --kid rec)
    signing_kid = "rec"                     # key id written in each session_end
    public_keys = { rec = "keys/rec.pub.pem" }   # kid -> public key, for verify
    fsync = "session"                       # "off" | "statement" | "session"
    capture_params = true                   # record bind parameters
    capture_rows = 0                        # first N result rows per statement (0: none)

Rules: errors are ``proxy.config.ConfigError`` naming the dotted key and the
fix, as in the rest of the config.  Relative paths resolve against the config
file's directory.  Key files are not read while parsing (the proxy's host has
no need of the public keys, the auditor's has no private key): call
``load_signing_key`` at proxy start and ``load_verify_keys`` in the tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..config import ConfigError, read_toml
from ..keys import _KID, load_private_key, load_public_key

__all__ = ["AuditConfig", "FSYNC_POLICIES", "KNOWN_KEYS", "from_table", "load",
           "load_signing_key", "load_verify_keys"]

FSYNC_POLICIES = ("off", "statement", "session")
KNOWN_KEYS = frozenset(("dir", "signing_key", "signing_kid", "public_keys", "fsync",
                        "capture_params", "capture_rows"))
MAX_CAPTURE_ROWS = 1000


@dataclass(frozen=True)
class AuditConfig:
    dir: Path = Path("recordings")
    signing_key: Path | None = None
    signing_kid: str = "rec"
    public_keys: dict[str, Path] = field(default_factory=dict)
    fsync: str = "session"
    capture_params: bool = True
    capture_rows: int = 0


def from_table(table: dict | None, *, base: Path) -> AuditConfig | None:
    """Validate the ``[audit]`` table (``None`` when the section is absent)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("audit: expected a table [audit]")
    extra = set(table) - KNOWN_KEYS
    if extra:
        raise ConfigError(f"audit: unknown key(s) {sorted(extra)}; known: {sorted(KNOWN_KEYS)}")

    def path(value, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"audit.{key}: expected a path string")
        p = Path(value)
        return p if p.is_absolute() else base / p

    directory = path(table.get("dir", "recordings"), "dir")
    signing_key = path(table["signing_key"], "signing_key") if "signing_key" in table else None
    kid = table.get("signing_kid", "rec")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ConfigError(f"audit.signing_kid: {kid!r} is not a key id "
                          "(1-64 letters, digits, '.', '_' or '-')")
    raw_keys = table.get("public_keys", {})
    if not isinstance(raw_keys, dict):
        raise ConfigError('audit.public_keys: expected a table of kid = "path/to/kid.pub.pem"')
    public_keys = {}
    for k, v in raw_keys.items():
        if not _KID.fullmatch(k):
            raise ConfigError(f"audit.public_keys: {k!r} is not a key id")
        public_keys[k] = path(v, f"public_keys.{k}")
    fsync = table.get("fsync", "session")
    if fsync not in FSYNC_POLICIES:
        raise ConfigError(f"audit.fsync: must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
    capture_params = table.get("capture_params", True)
    if not isinstance(capture_params, bool):
        raise ConfigError("audit.capture_params: expected true or false")
    capture_rows = table.get("capture_rows", 0)
    if not isinstance(capture_rows, int) or isinstance(capture_rows, bool) \
            or not 0 <= capture_rows <= MAX_CAPTURE_ROWS:
        raise ConfigError(f"audit.capture_rows: expected an integer from 0 to {MAX_CAPTURE_ROWS}, "
                          f"got {capture_rows!r}")
    return AuditConfig(dir=directory, signing_key=signing_key, signing_kid=kid,
                       public_keys=public_keys, fsync=fsync, capture_params=capture_params,
                       capture_rows=capture_rows)


def load(path: str | Path) -> AuditConfig | None:
    """Read only the ``[audit]`` section of a config file (for the auditor's tools)."""
    path = Path(path)
    return from_table(read_toml(path).get("audit"), base=path.resolve().parent)


def load_signing_key(cfg: AuditConfig) -> Ed25519PrivateKey:
    """The recording key; a ConfigError says what to do when it is missing or wrong."""
    if cfg.signing_key is None:
        raise ConfigError("audit.signing_key: required to sign session recordings; create one with "
                          "`pgwarden keygen --dir keys --kid rec` and set "
                          'signing_key = "keys/rec.key.pem", signing_kid = "rec"')
    try:
        return load_private_key(cfg.signing_key)
    except FileNotFoundError:
        raise ConfigError(f"audit.signing_key: file {cfg.signing_key} does not exist") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"audit.signing_key: {e}") from None


def load_verify_keys(cfg: AuditConfig) -> dict[str, Ed25519PublicKey]:
    """``{kid: public key}`` from ``public_keys``; when that is empty and the
    signing key is readable here, its public half under ``signing_kid``."""
    keys: dict[str, Ed25519PublicKey] = {}
    for kid, p in cfg.public_keys.items():
        try:
            keys[kid] = load_public_key(p)
        except FileNotFoundError:
            raise ConfigError(f"audit.public_keys.{kid}: file {p} does not exist") from None
        except (ValueError, OSError) as e:
            raise ConfigError(f"audit.public_keys.{kid}: {e}") from None
    if not keys and cfg.signing_key is not None and cfg.signing_key.is_file():
        keys[cfg.signing_kid] = load_signing_key(cfg).public_key()
    return keys

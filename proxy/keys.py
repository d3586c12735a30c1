"""Ed25519 key files for token signing (issuer) and verification (proxy).

Job: create key pairs on disk and load them back, with errors that name the
file and say what is wrong with it.

Rules:

* Files are PEM: the private key as unencrypted PKCS#8 (``<kid>.key.pem``,
  mode 0600 from the moment it exists), the public key as
  SubjectPublicKeyInfo (``<kid>.pub.pem``).
* Existing files are never overwritten.
* The proxy loads public keys only; a private key offered where a public key
  is expected is refused rather than silently derived from.
* The key id (``kid``) defaults to ``kid_for(public_key)``: the first 16 hex
  characters of SHA-256 over the raw 32-byte public key.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "KeyPair", "generate_keypair", "kid_for",
    "load_private_key", "load_public_key", "load_public_keys",
]

# A kid becomes part of a file name: keep it to a safe, portable alphabet.
_KID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class KeyPair:
    kid: str
    private_path: Path
    public_path: Path


def kid_for(public_key: Ed25519PublicKey) -> str:
    """The default key id: first 16 hex chars of SHA-256(raw public key)."""
    raw = public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` (never briefly wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; set it exactly
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(directory: Path, kid: str | None = None) -> KeyPair:
    """Generate an Ed25519 key pair and write it to ``directory`` (created
    with mode 0700 if missing).  Raises ``FileExistsError`` if either file
    already exists and ``ValueError`` for a kid unfit for a file name."""
    directory = Path(directory)
    private_key = Ed25519PrivateKey.generate()
    public_key = private_key.public_key()
    if kid is None:
        kid = kid_for(public_key)
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError(
            f"invalid key id {kid!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    private_path = directory / f"{kid}.key.pem"
    public_path = directory / f"{kid}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(
                f"refusing to overwrite existing key file {path}; "
                "choose another key id or move the old file away"
            )

    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        _write_new(private_path, private_pem, 0o600)
    except FileExistsError:
        raise FileExistsError(
            f"refusing to overwrite existing key file {private_path}"
        ) from None
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException as exc:
        private_path.unlink(missing_ok=True)  # do not leave half a pair behind
        if isinstance(exc, FileExistsError):
            raise FileExistsError(
                f"refusing to overwrite existing key file {public_path}"
            ) from None
        raise
    return KeyPair(kid=kid, private_path=private_path, public_path=public_path)


def _describe(key: object) -> str:
    """'an RSA', 'an EC', ... for an error message about a key of the wrong type."""
    kinds = ((rsa.RSAPrivateKey, rsa.RSAPublicKey, "an RSA"),
             (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey, "an EC"),
             (ed448.Ed448PrivateKey, ed448.Ed448PublicKey, "an Ed448"),
             (x25519.X25519PrivateKey, x25519.X25519PublicKey, "an X25519"))
    for private_cls, public_cls, text in kinds:
        if isinstance(key, (private_cls, public_cls)):
            return text
    return f"a {type(key).__name__}"


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PEM Ed25519 private key (PKCS#8 or OpenSSL
    traditional).  Raises ``ValueError`` naming ``path`` if it is not one."""
    path = Path(path)
    data = path.read_bytes()
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise ValueError(f"{path}: contains a public key, not an Ed25519 private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"{path}: the private key is encrypted; pgwarden needs an unencrypted "
            "PKCS#8 PEM key (protect it with file permissions, mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path}: not a PEM Ed25519 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: contains {_describe(key)} private key, not Ed25519")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM (SubjectPublicKeyInfo) Ed25519 public key.  Raises
    ``ValueError`` naming ``path`` if it is not one."""
    path = Path(path)
    data = path.read_bytes()
    if b"PRIVATE KEY-----" in data:
        raise ValueError(
            f"{path}: contains a private key; the proxy needs only the public key "
            "(the <kid>.pub.pem file)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path}: not a PEM Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: contains {_describe(key)} public key, not Ed25519")
    return key


def load_public_keys(mapping: Mapping[str, Path]) -> dict[str, Ed25519PublicKey]:
    """Load ``{kid: path}`` into ``{kid: public key}``.  Errors name both."""
    keys: dict[str, Ed25519PublicKey] = {}
    for kid, path in mapping.items():
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"invalid key id {kid!r} for {path}: must be a non-empty string")
        try:
            keys[kid] = load_public_key(Path(path))
        except ValueError as exc:
            raise ValueError(f"key {kid!r}: {exc}") from None
    return keys

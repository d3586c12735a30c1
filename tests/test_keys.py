"""Tests for proxy.keys: key files an operator creates, ships and loads."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policy.tokens import mint, verify
from proxy.keys import (
    KeyPair,
    generate_keypair,
    kid_for,
    load_private_key,
    load_public_key,
    load_public_keys,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_round_trip_signs_and_verifies(tmp_path):
    kp = generate_keypair(tmp_path)
    assert isinstance(kp, KeyPair)
    assert kp.private_path == tmp_path / f"{kp.kid}.key.pem"
    assert kp.public_path == tmp_path / f"{kp.kid}.pub.pem"
    private = load_private_key(kp.private_path)
    public = load_public_key(kp.public_path)
    assert kid_for(public) == kid_for(private.public_key()) == kp.kid
    token = mint(private, kid=kp.kid, sub="alice", db="app", scope="read",
                 audience="pgw", now=1_800_000_000, ttl=60)
    claims = verify(token, load_public_keys({kp.kid: kp.public_path}),
                    now=1_800_000_001, audience="pgw")
    assert claims.kid == kp.kid and claims.sub == "alice"


def test_file_formats(tmp_path):
    kp = generate_keypair(tmp_path, "prod-2026")
    assert kp.kid == "prod-2026"
    assert kp.private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert kp.public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_private_key_is_0600_even_with_open_umask(tmp_path):
    old = os.umask(0)
    try:
        kp = generate_keypair(tmp_path / "new" / "dir")
    finally:
        os.umask(old)
    assert mode(kp.private_path) == 0o600
    assert mode(kp.public_path) == 0o644
    assert mode(tmp_path / "new" / "dir") == 0o700


def test_refuses_to_overwrite_and_leaves_files_alone(tmp_path):
    kp = generate_keypair(tmp_path, "k1")
    before = (kp.private_path.read_bytes(), kp.public_path.read_bytes())
    with pytest.raises(FileExistsError) as info:
        generate_keypair(tmp_path, "k1")
    assert str(kp.private_path) in str(info.value) and "overwrite" in str(info.value)
    assert (kp.private_path.read_bytes(), kp.public_path.read_bytes()) == before


def test_refuses_when_only_public_file_exists(tmp_path):
    (tmp_path / "k2.pub.pem").write_text("someone else's key")
    with pytest.raises(FileExistsError, match="k2.pub.pem"):
        generate_keypair(tmp_path, "k2")
    assert not (tmp_path / "k2.key.pem").exists()  # no half pair left behind
    assert (tmp_path / "k2.pub.pem").read_text() == "someone else's key"


@pytest.mark.parametrize("kid", ["../evil", "a/b", "", ".hidden", "x" * 65, "sp ace"])
def test_kid_must_be_safe_file_name(tmp_path, kid):
    with pytest.raises(ValueError, match="key id"):
        generate_keypair(tmp_path, kid)
    assert list(tmp_path.iterdir()) == []


def test_kid_for_is_sha256_of_raw_public_key():
    key = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert kid_for(key) == hashlib.sha256(raw).hexdigest()[:16]
    assert len(kid_for(key)) == 16 and kid_for(key) == kid_for(key)


def pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize("content,expect", [
    (pem_private(RSA), "RSA private key, not Ed25519"),
    (pem_private(EC), "EC private key, not Ed25519"),
    (b"not a key at all\n", "not a PEM Ed25519 private key"),
    (b"", "not a PEM Ed25519 private key"),
    (pem_public(Ed25519PrivateKey.generate().public_key()), "public key"),
])
def test_load_private_key_wrong_file(tmp_path, content, expect):
    path = tmp_path / "wrong.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_private_key(path)
    assert str(path) in str(info.value) and expect in str(info.value)


def test_load_private_key_encrypted(tmp_path):
    path = tmp_path / "enc.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ValueError, match="encrypted") as info:
        load_private_key(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content,expect", [
    (pem_public(RSA.public_key()), "RSA public key, not Ed25519"),
    (b"garbage", "not a PEM Ed25519 public key"),
    (pem_private(Ed25519PrivateKey.generate()), "contains a private key"),
])
def test_load_public_key_wrong_file(tmp_path, content, expect):
    path = tmp_path / "wrong.pub.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_public_key(path)
    assert str(path) in str(info.value) and expect in str(info.value)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pem"):
        load_public_key(tmp_path / "nope.pem")


def test_load_public_keys_mapping_and_errors(tmp_path):
    a = generate_keypair(tmp_path, "a")
    b = generate_keypair(tmp_path, "b")
    keys = load_public_keys({"a": a.public_path, "b": str(b.public_path)})
    assert set(keys) == {"a", "b"}
    assert kid_for(keys["a"]) == kid_for(load_private_key(a.private_path).public_key())
    with pytest.raises(ValueError, match="key 'b'") as info:
        load_public_keys({"a": a.public_path, "b": b.private_path})
    assert str(b.private_path) in str(info.value)

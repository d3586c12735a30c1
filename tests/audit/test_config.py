"""The [audit] section: validation, path resolution, key loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.audit import config as C
from proxy.config import ConfigError


def test_absent_section_is_none(tmp_path):
    assert C.from_table(None, base=tmp_path) is None


def test_defaults_and_relative_paths(tmp_path):
    cfg = C.from_table({"signing_key": "keys/rec.key.pem", "public_keys": {"rec": "/abs/rec.pub.pem"}},
                       base=tmp_path)
    assert cfg.dir == tmp_path / "recordings"
    assert cfg.signing_key == tmp_path / "keys/rec.key.pem"
    assert cfg.public_keys == {"rec": Path("/abs/rec.pub.pem")}
    assert (cfg.signing_kid, cfg.fsync, cfg.capture_params, cfg.capture_rows) == ("rec", "session", True, 0)


@pytest.mark.parametrize("table, message", [
    ({"dirr": "x"}, "unknown key"),
    ({"fsync": "sometimes"}, "audit.fsync"),
    ({"fsync": True}, "audit.fsync"),
    ({"capture_params": "yes"}, "audit.capture_params"),
    ({"capture_rows": -1}, "audit.capture_rows"),
    ({"capture_rows": 1001}, "audit.capture_rows"),
    ({"capture_rows": True}, "audit.capture_rows"),
    ({"signing_kid": "bad kid"}, "audit.signing_kid"),
    ({"public_keys": {"bad kid": "x"}}, "audit.public_keys"),
    ({"public_keys": "x"}, "audit.public_keys"),
    ({"dir": ""}, "audit.dir"),
    ({"dir": 3}, "audit.dir"),
])
def test_invalid(tmp_path, table, message):
    with pytest.raises(ConfigError, match=message):
        C.from_table(table, base=tmp_path)


def test_load_reads_only_the_audit_section(tmp_path):
    p = tmp_path / "pgwarden.toml"
    p.write_text('[server]\nnonsense = 1\n[audit]\ndir = "rec"\nfsync = "off"\n')
    cfg = C.load(p)
    assert cfg.dir == tmp_path / "rec" and cfg.fsync == "off"
    with pytest.raises(ConfigError, match="does not exist"):
        C.load(tmp_path / "missing.toml")
    p.write_text("[audit\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        C.load(p)


def test_verify_keys(key_files):
    cfg = C.load(key_files.config)
    assert set(C.load_verify_keys(cfg)) == {"rec"}
    # no public_keys but a readable private key: its public half
    only_private = C.AuditConfig(signing_key=key_files.private, signing_kid="rec")
    keys = C.load_verify_keys(only_private)
    assert set(keys) == {"rec"}
    assert C.load_verify_keys(C.AuditConfig()) == {}
    with pytest.raises(ConfigError, match="public_keys.rec"):
        C.load_verify_keys(C.AuditConfig(public_keys={"rec": key_files.dir / "nope.pem"}))


def test_signing_key_errors(key_files):
    with pytest.raises(ConfigError, match="pgwarden keygen"):
        C.load_signing_key(C.AuditConfig())
    with pytest.raises(ConfigError, match="audit.signing_key"):
        C.load_signing_key(C.AuditConfig(signing_key=key_files.public))     # a public key is not a private one


def test_main_config_parses_the_section(tmp_path):
    """proxy.config.load hands the [audit] table to this module (Config.audit)."""
    from proxy import config as main_config
    from proxy.keys import generate_keypair

    generate_keypair(tmp_path, kid="k1")
    p = tmp_path / "pgwarden.toml"
    p.write_text('[tokens]\n[tokens.public_keys]\nk1 = "k1.pub.pem"\n[upstream]\nhost = "127.0.0.1"\n'
                 '[scopes.read]\nrole = "pgw_read"\npassword_env = "PGW_READ_PASSWORD"\n'
                 '[audit]\ndir = "rec"\nfsync = "statement"\n')
    cfg = main_config.load(p, env={"PGW_READ_PASSWORD": "x"})
    assert isinstance(cfg.audit, C.AuditConfig) and cfg.audit.fsync == "statement"
    assert cfg.audit.dir == tmp_path / "rec"

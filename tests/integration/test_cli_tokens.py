"""`pgwarden keygen` and `pgwarden token` as a user runs them, and the token used with psql.

- keygen writes an Ed25519 pair (<kid>.key.pem 0600, <kid>.pub.pem), refuses to overwrite;
- token --sub alice --db appdb --scope read --ttl 30m --reason "..." mints a token that verifies
  with the public key (EdDSA, the kid in the header, exp = iat + 30 min, the reason and a jti);
- a token minted from the proxy's config logs psql in through the proxy as the read role; one
  minted with a key the proxy does not know is refused naming the kid.
"""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
import sys
import time

import pytest

from policy import tokens
from proxy.keys import load_public_keys

pytestmark = pytest.mark.integration
PSQL = shutil.which("psql")


def pgwarden(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"pgwarden {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _header(token: str) -> dict:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def test_keygen_then_token_verifies(tmp_path):
    keys = tmp_path / "keys"
    pgwarden("keygen", "--dir", str(keys), "--kid", "k9")
    priv, pub = keys / "k9.key.pem", keys / "k9.pub.pem"
    assert priv.is_file() and pub.is_file()
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    again = pgwarden("keygen", "--dir", str(keys), "--kid", "k9", check=False)
    assert again.returncode != 0 and "exist" in (again.stderr + again.stdout)

    t0 = time.time()
    out = pgwarden("token", "--key", str(priv), "--kid", "k9", "--sub", "alice", "--db", "appdb", "--scope", "read",
                   "--ttl", "30m", "--reason", "INC-42 investigate orders").stdout.strip()
    assert out.count(".") == 2 and "\n" not in out
    assert _header(out)["alg"] == "EdDSA" and _header(out)["kid"] == "k9"
    claims = tokens.verify(out, load_public_keys({"k9": pub}), now=time.time(), audience="pgwarden",
                           user="alice", database="appdb")
    assert (claims.sub, claims.db, claims.scope, claims.reason) == ("alice", "appdb", "read",
                                                                     "INC-42 investigate orders")
    assert claims.exp - claims.iat == 1800 and abs(claims.iat - t0) < 60 and claims.jti

    js = json.loads(pgwarden("token", "--key", str(priv), "--kid", "k9", "--sub", "alice", "--db", "appdb",
                             "--scope", "write", "--ttl", "90s", "--json").stdout)
    assert set(js) >= {"token", "jti", "exp"}
    c2 = tokens.verify(js["token"], load_public_keys({"k9": pub}), now=time.time(), audience="pgwarden")
    assert c2.jti == js["jti"] and c2.scope == "write" and c2.exp - c2.iat == 90


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_token_from_the_cli_logs_psql_in(proxy, tmp_path):
    token = pgwarden("token", "--config", str(proxy.config_path), "--sub", "alice", "--db", "appdb",
                     "--scope", "read", "--ttl", "30m", "--reason", "cli test").stdout.strip()
    env = proxy.env("read", token=token)
    env["PGSSLMODE"] = "require"
    proc = subprocess.run([PSQL, "-X", "-A", "-t", "-c", "select current_user, current_setting('application_name')"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    user, app = proc.stdout.strip().split("|")
    assert user == "pgw_read", proc.stdout
    # a key the proxy does not know: refused, naming the kid, never echoing the token
    pgwarden("keygen", "--dir", str(tmp_path / "other"), "--kid", "stranger")
    bad = pgwarden("token", "--key", str(tmp_path / "other" / "stranger.key.pem"), "--kid", "stranger",
                   "--sub", "alice", "--db", "appdb", "--scope", "read").stdout.strip()
    env["PGPASSWORD"] = bad
    proc = subprocess.run([PSQL, "-X", "-c", "select 1"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "stranger" in proc.stderr and "not configured" in proc.stderr, proc.stderr
    assert bad not in proc.stderr and bad.split(".")[2] not in proc.stderr

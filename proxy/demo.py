"""`pgwarden demo`: pgwarden in front of a throwaway local PostgreSQL.

initdb into a temporary directory, start the server on a free port, create
one least-privilege upstream role per scope, write keys, a TLS certificate
and a config, start the proxy in this process, mint one token per scope,
print how to connect, and clean everything up on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

DEMO_DB = "appdb"


def write_config(directory: Path, *, pg_host: str, pg_port: int, scope_roles: dict[str, tuple[str, str]],
                 listen_port: int, kid: str, private_path: Path, public_path: Path,
                 cert: Path | None = None, key: Path | None = None, extra_server: dict | None = None,
                 record: bool = False, audit: dict | None = None) -> Path:
    """Write pgwarden.toml for a local server; passwords go to 0600 files beside it.
    ``record``: session recordings in ``recordings/``, signed with a key pair made in ``keys-rec/``;
    ``audit``: more keys of the [audit] section (capture_rows, fsync, ...)."""
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    lines = ["[server]", 'listen_host = "127.0.0.1"', f"listen_port = {listen_port}"]
    if cert and key:
        lines += [f'tls_cert = "{cert}"', f'tls_key = "{key}"']
    for k, v in (extra_server or {}).items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines += ["", "[tokens]", 'audience = "pgwarden"', f'signing_key = "{private_path}"', f'signing_kid = "{kid}"',
              "[tokens.public_keys]", f'"{kid}" = "{public_path}"', "",
              "[upstream]", f'host = "{pg_host}"', f"port = {pg_port}", 'sslmode = "prefer"', ""]
    for scope, (role, password) in scope_roles.items():
        pw = secrets_dir / f"{scope}.password"
        pw.write_text(password)
        pw.chmod(0o600)
        lines += [f"[scopes.{scope}]", f'role = "{role}"', f'password_file = "{pw}"',
                  f"read_only = {'true' if scope == 'read' else 'false'}", ""]
    if record:
        from .keys import generate_keypair
        rk = generate_keypair(directory / "keys-rec", "rec")
        lines += ["[audit]", f'dir = "{directory / "recordings"}"', f'signing_key = "{rk.private_path}"',
                  'signing_kid = "rec"', f'public_keys = {{ rec = "{rk.public_path}" }}']
        lines += [f"{k} = {json.dumps(v)}" for k, v in (audit or {}).items()] + [""]
    path = directory / "pgwarden.toml"
    path.write_text("\n".join(lines))
    return path


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def run_demo(args) -> int:
    from policy.tokens import mint, parse_duration

    from . import config as config_mod
    from . import logs
    from .embedded import EmbeddedPostgres, create_scope_roles
    from .keys import generate_keypair, load_private_key
    from .net.server import ProxyServer
    from .tlsutil import make_self_signed_cert

    ttl = parse_duration(args.ttl)
    logs.configure("warning" if args.json else "info", json=args.json)
    own_dir = args.dir is None
    work = Path(tempfile.mkdtemp(prefix="pgwarden-demo-")) if own_dir else Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pg = None
    try:
        pg = EmbeddedPostgres().start()
        roles = create_scope_roles(pg, DEMO_DB)
        kp = generate_keypair(work / "keys", "demo")
        cert, key = make_self_signed_cert(work / "tls")
        port = args.port if args.port == 0 or _port_free(args.port) else 0
        cfg_path = write_config(work, pg_host=pg.host, pg_port=pg.port, scope_roles=roles, listen_port=port,
                                kid=kp.kid, private_path=kp.private_path, public_path=kp.public_path,
                                cert=cert, key=key, record=True)
        cfg = config_mod.load(cfg_path)
        private = load_private_key(kp.private_path)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = ProxyServer(cfg, loop)
            await server.start()
            now = time.time()
            toks = {s: mint(private, kid=kp.kid, sub=args.user, db=DEMO_DB, scope=s, audience=cfg.audience,
                            now=now, ttl=ttl, reason="pgwarden demo") for s in roles}
            dsns = {s: f"postgresql://{args.user}:{t}@127.0.0.1:{server.port}/{DEMO_DB}" for s, t in toks.items()}
            if args.json:
                print(json.dumps({"config": str(cfg_path), "admin_dsn": pg.dsn(DEMO_DB), "dsn": dsns}), flush=True)
            else:
                print(_banner(server.port, args.user, toks, pg.dsn(DEMO_DB), cfg_path, work), flush=True)
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            await server.shutdown()

        try:
            import uvloop
            uvloop.run(main())
        except ImportError:
            asyncio.run(main())
    finally:
        if pg is not None:
            pg.stop()
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
        if not args.json:
            print("pgwarden demo: stopped and cleaned up", file=sys.stderr)
    return 0


def _banner(port: int, user: str, toks: dict[str, str], admin_dsn: str, cfg_path: Path, work: Path) -> str:
    lines = [
        "",
        f"pgwarden demo is running: proxy on 127.0.0.1:{port}, a throwaway PostgreSQL behind it.",
        f"Config: {cfg_path}",
        "",
        "Connect with psql (the token is the password; one per scope):",
        "",
    ]
    for scope, tok in toks.items():
        lines.append(f"  # {scope} scope")
        lines.append(f"  PGPASSWORD='{tok}' \\")
        lines.append(f"    psql 'postgresql://{user}@127.0.0.1:{port}/{DEMO_DB}?sslmode=require'")
        lines.append("")
    lines += [f"Superuser, direct (no proxy): psql '{admin_dsn}'", "",
              "Every session is recorded; as an auditor:",
              f"  pgwarden sessions -c {cfg_path}",
              f"  pgwarden replay SESSION_ID -c {cfg_path}",
              f"  pgwarden audit verify -c {cfg_path}", "",
              "Press Ctrl-C to stop and clean up."]
    return "\n".join(lines)

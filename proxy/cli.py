"""`pgwarden` command line: argument parsing and printing only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:               # `pgwarden replay ... | head`
        return 0
    except CLIError as e:
        print(f"pgwarden: {e}", file=sys.stderr)
        return 2


class CLIError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgwarden", description="Just-in-time, time-bound PostgreSQL access.")
    p.add_argument("--version", action="version", version=f"pgwarden {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("--config", "-c", required=True, help="path to pgwarden.toml")
    s.add_argument("--log-level", default="info")
    s.add_argument("--log-format", choices=("json", "console", "auto"), default="auto")
    s.add_argument("--workers", type=int, help="worker processes sharing the port (SO_REUSEPORT); "
                                               "overrides server.workers")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("check-config", help="load and validate a config file, then exit")
    s.add_argument("--config", "-c", required=True)
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("keygen", help="write an Ed25519 key pair for signing tokens")
    s.add_argument("--dir", default=".", help="directory for <kid>.key.pem and <kid>.pub.pem")
    s.add_argument("--kid", help="key id (default: derived from the public key)")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("token", help="mint the token of an approved grant (pgwarden token ID), or a bare token "
                                     "without a grant (--db/--scope; refused by a proxy with a [grants] store)")
    s.add_argument("id", nargs="?", help="grant id: mint the token of this approved grant")
    s.add_argument("--as", dest="as_user", metavar="USER", help="with ID: act as USER (default: the OS user)")
    s.add_argument("--config", "-c", help="pgwarden.toml (for tokens.signing_key, signing_kid, audience)")
    s.add_argument("--key", help="private key PEM (overrides the config)")
    s.add_argument("--kid", help="key id (overrides the config)")
    s.add_argument("--audience", help="aud claim (overrides the config; default pgwarden)")
    s.add_argument("--sub", default=None, help="database user the client logs in as (default: OS user)")
    s.add_argument("--db", help="database the token is for (bare token)")
    s.add_argument("--scope", help="read, write or ddl (bare token)")
    s.add_argument("--ttl", default="30m", help="lifetime: 90s, 30m, 2h, 1h30m (default 30m)")
    s.add_argument("--reason", default="", help="why access is needed (recorded)")
    s.add_argument("--ticket", help="ticket reference")
    s.add_argument("--json", action="store_true", help="print {token, jti, exp} as JSON")
    s.set_defaults(func=cmd_token)

    s = sub.add_parser("demo", help="pgwarden in front of a throwaway local PostgreSQL")
    s.add_argument("--json", action="store_true",
                   help="print one JSON line {config, admin_dsn, dsn:{read,write,ddl}} and serve until SIGINT/SIGTERM")
    s.add_argument("--port", type=int, default=6432, help="proxy port (a free one if taken; 0 = any)")
    s.add_argument("--user", default="alice", help="database user name in the demo tokens")
    s.add_argument("--ttl", default="8h", help="token lifetime (default 8h)")
    s.add_argument("--dir", help="keep the demo's files here instead of a temporary directory")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("doctor", help="log in as each scope's upstream role and report privileges beyond the scope")
    s.add_argument("--config", "-c", required=True, help="path to pgwarden.toml")
    s.add_argument("--database", "-d", action="append", dest="databases", metavar="NAME",
                   help="upstream database to check (repeatable; default: the values of upstream.databases, "
                        "else postgres)")
    s.add_argument("--scope", action="append", dest="scopes", metavar="NAME",
                   help="check only this scope (repeatable; default: every [scopes.NAME])")
    s.add_argument("--timeout", type=float, help="login timeout in seconds (default: server.connect_timeout)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_doctor)

    from . import cli_grants
    cli_grants.register(sub)
    from . import cli_audit
    cli_audit.register(sub)
    return p


def cmd_serve(args) -> int:
    from . import config as config_mod
    from . import logs
    from .net import server

    logs.configure(args.log_level, json=None if args.log_format == "auto" else args.log_format == "json")
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        raise CLIError(f"invalid configuration: {e}") from None
    if args.workers is not None and args.workers < 1:
        raise CLIError("--workers: must be at least 1")
    if (args.workers or cfg.workers) > 1 and cfg.listen_port == 0:
        raise CLIError("several workers need a fixed server.listen_port (0 would give each its own port)")
    try:
        return server.run(cfg, args.workers)
    except OSError as e:
        raise CLIError(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {e.strerror or e}") from None


def cmd_check_config(args) -> int:
    from . import config as config_mod

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        raise CLIError(f"invalid configuration: {e}") from None
    print(f"{args.config}: ok ({len(cfg.scopes)} scopes, {len(cfg.public_keys)} public keys)")
    return 0


def cmd_keygen(args) -> int:
    from .keys import generate_keypair

    try:
        kp = generate_keypair(Path(args.dir), args.kid)
    except (FileExistsError, OSError, ValueError) as e:
        raise CLIError(str(e)) from None
    print(f"kid:         {kp.kid}\nprivate key: {kp.private_path}  (keep on the issuing side only)\n"
          f"public key:  {kp.public_path}  (list under [tokens.public_keys] in pgwarden.toml)")
    return 0


def cmd_token(args) -> int:
    from policy.tokens import format_ts, mint, parse_duration

    from . import config as config_mod
    from .keys import load_private_key

    if args.id is not None:
        if args.db or args.scope or args.sub or args.key:
            raise CLIError("token ID mints the grant's own token: --db, --scope, --sub and --key do not apply")
        from .cli_grants import run_token
        return run_token(args)
    if not args.db or not args.scope:
        raise CLIError("token: give a grant id (pgwarden token ID) or --db and --scope for a bare token")
    key_path, kid, audience = args.key, args.kid, args.audience
    if args.config:
        try:
            cfg = config_mod.load(args.config)
        except config_mod.ConfigError as e:
            raise CLIError(f"invalid configuration: {e}") from None
        key_path = key_path or (str(cfg.signing_key) if cfg.signing_key else None)
        kid = kid or cfg.signing_kid
        audience = audience or cfg.audience
    if not key_path:
        raise CLIError("no private key: pass --key or set tokens.signing_key in the config")
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as e:
        raise CLIError(f"--ttl: {e}") from None
    try:
        private = load_private_key(Path(key_path))
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    if not kid:
        from .keys import kid_for
        kid = kid_for(private.public_key())
    now = time.time()
    token = mint(private, kid=kid, sub=args.sub or getpass.getuser(), db=args.db, scope=args.scope,
                 audience=audience or "pgwarden", now=now, ttl=ttl, reason=args.reason, ticket=args.ticket)
    if args.json:
        import jwt
        claims = jwt.decode(token, options={"verify_signature": False})
        print(json.dumps({"token": token, "jti": claims["jti"], "exp": format_ts(claims["exp"])}))
    else:
        print(token)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_doctor(args) -> int:
    """Exit 0: every scope's role within its scope; 1: a privilege beyond a scope; 2: cannot check."""
    from . import config as config_mod
    from . import doctor

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        raise CLIError(f"invalid configuration: {e}") from None
    try:
        report = doctor.run(cfg, databases=args.databases, scopes=args.scopes, timeout=args.timeout)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(report.to_json() if args.json else report.to_text())
    for s in report.unreachable:
        what = "cannot connect as" if not s.connected else "could not finish the checks of"
        print(f"pgwarden doctor: {what} role {s.role} (scope {s.scope}): {s.error}", file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())

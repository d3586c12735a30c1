"""The auditor's commands: ``sessions``, ``replay``, ``audit verify`` and ``audit export``.

Job: argument parsing and printing only; the work is in ``proxy/audit``.
``register(subparsers)`` adds the commands to ``pgwarden``'s parser
(``proxy.cli``, which runs them).

    pgwarden sessions [-c CONFIG] [--dir D] [--grant G] [--user U] [--since T] [--json]
    pgwarden replay SESSION_ID_OR_PATH [-c CONFIG] [--dir D] [--pace] [--all]
    pgwarden audit verify [SESSION_ID_OR_PATH ...] [-c CONFIG] [--dir D] [--key [KID=]PATH] [--json]
                          [--allow-unterminated]
    pgwarden audit export SESSION_ID_OR_PATH --html [-o FILE] [-c CONFIG] [--dir D] [--key [KID=]PATH]
    (``pgwarden audit sessions`` and ``pgwarden audit replay`` are the same commands.)

Exit status of ``audit verify``: 0 every recording verified and sealed;
1 at least one failed (tampered, truncated inside, reordered, bad or missing
signature, unknown key, unreadable); 3 none failed but at least one is
unterminated (no signed session_end: the proxy stopped mid-session, or the
session is still running), unless ``--allow-unterminated``.  2: usage or
configuration error (as for every pgwarden command).  ``audit export``
writes the page whatever the verification says (the page shows the verdict)
and exits like ``audit verify`` for that one recording.

Where recordings and keys come from: ``--dir`` and ``--key`` first, then the
``[audit]`` section of ``--config`` (or ``$PGWARDEN_CONFIG``), then the
defaults (``./recordings``, no keys).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNTERMINATED = 0, 1, 2, 3


class _Error(Exception):
    """A usage or configuration error: printed as ``pgwarden: ...``, exit 2."""


def register(subparsers) -> None:
    """Add ``sessions``, ``replay`` and ``audit {verify,sessions,replay}``."""
    _add_sessions(subparsers.add_parser("sessions", help="list recorded sessions"))
    _add_replay(subparsers.add_parser("replay", help="replay a recorded session as a timeline"))
    audit = subparsers.add_parser("audit", help="session recordings: verify, list, replay")
    audit_sub = audit.add_subparsers(metavar="COMMAND")
    _add_verify(audit_sub.add_parser(
        "verify", help="check recordings' hash chains and signatures (exit 1 on any failure)"))
    _add_export(audit_sub.add_parser(
        "export", help="a recorded session as a self-contained HTML page (timeline and evidence)"))
    _add_sessions(audit_sub.add_parser("sessions", help="list recorded sessions"))
    _add_replay(audit_sub.add_parser("replay", help="replay a recorded session"))
    audit.set_defaults(func=lambda args: _help(audit))


def _help(parser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="pgwarden.toml with an [audit] section "
                                          "(default: $PGWARDEN_CONFIG)")
    p.add_argument("--dir", help="recordings directory (overrides audit.dir)")


def _add_sessions(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--grant", help="only sessions of this grant id (jti)")
    p.add_argument("--user", help="only sessions of this database user")
    p.add_argument("--since", help="only sessions started since: 2025-01-31, 2025-01-31T09:00Z, 12h, 7d")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_guard(cmd_sessions))


def _add_replay(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("session", metavar="SESSION_ID_OR_PATH")
    p.add_argument("--pace", action="store_true", help="replay at recorded pace (gaps capped at 5 s)")
    p.add_argument("--all", action="store_true",
                   help="show introspection (catalog) queries instead of folding them")
    p.set_defaults(func=_guard(cmd_replay))


def _add_verify(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("paths", nargs="*", metavar="SESSION_ID_OR_PATH",
                   help="recordings, session ids or directories (default: every recording in --dir)")
    p.add_argument("--key", action="append", default=[], metavar="[KID=]PATH",
                   help="public key (repeatable); without KID= the kid is the file name's "
                        "<kid>.pub.pem part.  Default: audit.public_keys")
    p.add_argument("--json", action="store_true", help="one JSON report per line")
    p.add_argument("--allow-unterminated", action="store_true",
                   help="exit 0 when the only problem is unterminated recordings (live sessions)")
    p.set_defaults(func=_guard(cmd_verify))


def _add_export(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("session", metavar="SESSION_ID_OR_PATH")
    p.add_argument("--html", action="store_true", required=True,
                   help="write HTML (the one format so far)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    p.add_argument("--key", action="append", default=[], metavar="[KID=]PATH",
                   help="public key (repeatable), as for audit verify.  Default: audit.public_keys")
    p.set_defaults(func=_guard(cmd_export))


def _guard(fn):
    def run(args) -> int:
        try:
            return fn(args)
        except _Error as e:
            print(f"pgwarden: {e}", file=sys.stderr)
            return EXIT_USAGE
    run.__name__ = fn.__name__
    return run


def _config(args):
    from .audit import config as audit_config
    from .config import ConfigError

    path = args.config or os.environ.get("PGWARDEN_CONFIG")
    if not path:
        return None
    try:
        return audit_config.load(path)
    except ConfigError as e:
        raise _Error(f"invalid configuration: {e}") from None


def _directory(args, cfg) -> Path:
    if args.dir:
        return Path(args.dir)
    if cfg is not None:
        return cfg.dir
    return Path("recordings")


# ---------------------------------------------------------------------- sessions

def cmd_sessions(args) -> int:
    from .audit.replay import list_sessions

    cfg = _config(args)
    try:
        found = list_sessions(_directory(args, cfg), grant=args.grant, user=args.user, since=args.since)
    except ValueError as e:
        raise _Error(str(e)) from None
    if args.json:
        for s in found:
            sys.stdout.write(orjson.dumps(s.to_dict()).decode() + "\n")
        return EXIT_OK
    if not found:
        print("no sessions recorded" + (" matching the filters" if (args.grant or args.user or args.since)
                                        else f" under {_directory(args, cfg)}"))
        return EXIT_OK
    rows = [("STARTED (UTC)", "SESSION", "USER@DB", "GRANT", "SCOPE", "STMTS", "END")]
    for s in found:
        end = s.end_reason if s.ended else "UNTERMINATED"
        rows.append(((s.started or "?")[:19].replace("T", " "), s.session_id,
                     f"{s.user or '?'}@{s.database or '?'}", s.grant or "-", s.scope or "-",
                     "-" if s.statements is None else str(s.statements), end or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return EXIT_OK


# ---------------------------------------------------------------------- replay

def cmd_replay(args) -> int:
    from .audit.replay import find_recording, replay

    cfg = _config(args)
    try:
        path = find_recording(_directory(args, cfg), args.session)
    except FileNotFoundError as e:
        raise _Error(str(e)) from None
    out = sys.stdout
    for chunk in replay(path, pace=args.pace, include_introspection=args.all):
        out.write(chunk + "\n")
        if args.pace:
            out.flush()
    keys = _keys(args, cfg, quiet=True)
    if keys:
        from .audit.verify import verify
        out.write(f"verify: {verify(path, keys).summary()}\n")
    return EXIT_OK


# ---------------------------------------------------------------------- verify

def _keys(args, cfg, *, quiet: bool = False) -> dict:
    from .audit.config import load_verify_keys
    from .config import ConfigError
    from .keys import load_public_key

    keys: dict = {}
    for spec in getattr(args, "key", None) or []:
        kid, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = Path(spec).name
            kid = name[:-len(".pub.pem")] if name.endswith(".pub.pem") else Path(spec).stem
        try:
            keys[kid] = load_public_key(Path(path))
        except (OSError, ValueError) as e:
            raise _Error(f"--key {spec}: {getattr(e, 'strerror', None) or e}") from None
    if keys or cfg is None:
        return keys
    try:
        return load_verify_keys(cfg)
    except ConfigError as e:
        if quiet:
            return {}
        raise _Error(f"invalid configuration: {e}") from None


def _targets(args, cfg) -> list[Path]:
    from .audit.replay import find_recording

    directory = _directory(args, cfg)
    if not args.paths:
        if not directory.is_dir():
            raise _Error(f"no recordings directory {directory} (use --dir or --config)")
        return sorted(directory.glob("*/*.jsonl"))
    out: list[Path] = []
    for spec in args.paths:
        p = Path(spec)
        if p.is_dir():
            out.extend(sorted(p.rglob("*.jsonl")))
            continue
        try:
            out.append(find_recording(directory, spec))
        except FileNotFoundError:
            out.append(p)          # reported as unreadable by verify, with the others
    return out


def cmd_verify(args) -> int:
    from .audit.verify import verify

    cfg = _config(args)
    keys = _keys(args, cfg)
    targets = _targets(args, cfg)
    if not keys:
        print("pgwarden: warning: no public keys (--key or audit.public_keys): "
              "no signature can be checked", file=sys.stderr)
    failed = unterminated = 0
    for path in targets:
        report = verify(path, keys)
        if report.status == "failed":
            failed += 1
        elif report.status == "unterminated":
            unterminated += 1
        if args.json:
            sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
        else:
            print(report.summary())
    if not args.json:
        ok = len(targets) - failed - unterminated
        print(f"{len(targets)} recording(s): {ok} ok, {failed} failed, {unterminated} unterminated",
              file=sys.stderr)
    if failed:
        return EXIT_FAILED
    if unterminated and not args.allow_unterminated:
        return EXIT_UNTERMINATED
    return EXIT_OK


# ---------------------------------------------------------------------- export

def cmd_export(args) -> int:
    from .audit.export import export_html
    from .audit.replay import find_recording
    from .audit.verify import verify

    cfg = _config(args)
    keys = _keys(args, cfg)
    try:
        path = find_recording(_directory(args, cfg), args.session)
    except FileNotFoundError as e:
        raise _Error(str(e)) from None
    if not keys:
        print("pgwarden: warning: no public keys (--key or audit.public_keys): "
              "the signature cannot be checked", file=sys.stderr)
    report = verify(path, keys)
    page = export_html(path, keys, report=report)
    if args.output:
        out = Path(args.output)
        try:
            out.write_text(page, encoding="utf-8")
        except OSError as e:
            raise _Error(f"cannot write {out}: {e.strerror or e}") from None
        print(f"{out}: {report.summary()}", file=sys.stderr)
    else:
        sys.stdout.write(page)
    if report.status == "failed":
        return EXIT_FAILED
    return EXIT_UNTERMINATED if report.status == "unterminated" else EXIT_OK

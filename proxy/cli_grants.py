"""`pgwarden` grant commands: request, approve, deny, grants, grant show, revoke,
end, token, connect, issue, report, review.

Job: parse arguments, read the store, ask ``policy.grants`` to decide, write
the result back, print it.  Every rule lives in ``policy.grants``; this module
only wires it to the store, the signing key and the terminal.

Rules:

* Who is acting: ``--as USER`` or the OS user (``getpass.getuser()``); it is
  recorded with every change.
* Output is for people by default and JSON with ``--json``; a refusal exits
  with status 1 and says why on stderr; a usage error exits 2.
* Changes are compare-and-set: a grant that changed meanwhile is read again
  and the decision retaken, never overwritten.
* A grant found past its expiry is first recorded as expired (actor
  "pgwarden", at its expiry time), so the evidence says when it stopped.
* ``--config`` defaults to $PGWARDEN_CONFIG, else ./pgwarden.toml.  Only
  ``token``, ``connect``, ``issue`` and ``request --break-glass`` need the rest
  of the config (signing key, audience, listen address).

Registered into ``pgwarden``'s parser (``proxy.cli``, which runs the
commands) by ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from policy.grants import (LIVE, Grant, GrantError, GrantState, apply, check_for_connect, effective_state,
                           format_span)
from policy.tokens import format_ts, parse_duration

__all__ = ["register", "run_token", "COMMANDS"]

SYSTEM_ACTOR = "pgwarden"
COMMANDS = ("request", "approve", "deny", "grants", "grant", "revoke", "end", "token", "connect",
            "issue", "report", "review")


class Refused(Exception):
    """A command refused: the message says why; exit status 1."""


# ----------------------------------------------------------------- plumbing


def _config_path(args) -> Path:
    return Path(args.config or os.environ.get("PGWARDEN_CONFIG") or "pgwarden.toml")


class _Ctx:
    """What a command works with: grants config, store, actor, now."""

    def __init__(self, args) -> None:
        from .config import ConfigError
        from .store import StoreError, open_store
        from .store.config import load_grants_config

        self.args = args
        self.path = _config_path(args)
        try:
            self.gcfg = load_grants_config(self.path)
        except ConfigError as e:
            raise Refused(f"invalid configuration: {e}") from None
        self.rules = self.gcfg.rules
        try:
            self.store = open_store(self.gcfg.store_url, base=self.gcfg.base)
        except StoreError as e:
            raise Refused(f"cannot open the grant store: {e}") from None
        self.actor = getattr(args, "as_user", None) or getpass.getuser()
        self.now = time.time()
        self._main = None

    def main_config(self):
        """The rest of the file, validated by proxy.config ([grants] left out:
        proxy.config may not know the section)."""
        if self._main is None:
            from . import config as config_mod
            try:
                raw = config_mod.read_toml(self.path)
                raw.pop("grants", None)
                self._main = config_mod.from_dict(raw, base=self.path.resolve().parent, path=self.path)
            except config_mod.ConfigError as e:
                raise Refused(f"invalid configuration: {e}") from None
        return self._main

    def load(self, grant_id: str) -> Grant:
        """The grant, with a passed expiry recorded first."""
        from .store import Conflict

        grant = self.store.get(grant_id)
        if grant is None:
            raise Refused(f"no grant {grant_id!r}")
        if grant.state in (GrantState.REQUESTED, GrantState.APPROVED, GrantState.ACTIVE) \
                and effective_state(grant, self.now) is GrantState.EXPIRED:
            try:
                expired = apply(grant, "expire", actor=SYSTEM_ACTOR, now=grant.expires_at)
                return self.store.update(expired, grant.state)
            except Conflict:
                return self.store.get(grant_id) or grant
        return grant

    def change(self, grant_id: str, decide: Callable[[Grant], Grant]) -> Grant:
        """Read, decide, compare-and-set; on a lost race read again (3 tries)."""
        from .store import Conflict

        for _ in range(3):
            grant = self.load(grant_id)
            try:
                new = decide(grant)
            except GrantError as e:
                raise Refused(str(e)) from None
            try:
                return self.store.update(new, grant.state)
            except Conflict:
                continue
        raise Refused(f"grant {grant_id} keeps changing under us; try again")


def _iso(t: float | None) -> str | None:
    return None if t is None else format_ts(t)


def _span(seconds: float | None) -> str:
    return "-" if seconds is None else format_span(seconds)


def _grant_json(g: Grant, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in vars(g).items():
        if name == "last_change":
            continue
        if name.endswith("_at") or name == "not_before":
            value = _iso(value)
        elif isinstance(value, GrantState):
            value = value.value
        out[name] = value
    out["effective_state"] = effective_state(g, now).value
    out["awaiting_review"] = g.awaiting_review
    return out


def _emit(args, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def _parse_when(text: str, now: float, *, what: str) -> float:
    """``02:00`` (next such local time), ``+30m`` (from now), or ISO 8601
    (local time unless it carries an offset)."""
    text = text.strip()
    try:
        if text.startswith("+"):
            return now + parse_duration(text[1:])
        if len(text) <= 5 and ":" in text:
            hh, mm = (int(x) for x in text.split(":"))
            base = datetime.fromtimestamp(now)
            at = base.replace(hour=hh, minute=mm, second=0, microsecond=0)
            if at.timestamp() <= now:
                at += timedelta(days=1)
            return at.timestamp()
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise Refused(f"{what}: {text!r} is not a time: use HH:MM, +30m or ISO 8601 "
                      "(2026-12-01T02:00 or with Z / +01:00)") from None


def _parse_since(text: str | None, now: float) -> float | None:
    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        return _parse_when(text, now, what="--since")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise Refused(f"--for: {e}") from None


def _describe(g: Grant) -> str:
    return (f"{g.scope} on {g.database} for {g.subject}, {_span(g.duration)} "
            f"({format_ts(g.not_before)} - {format_ts(g.expires_at)})")


# ------------------------------------------------------------------ tokens


def _mint(ctx: _Ctx, grant: Grant) -> tuple[Grant, str]:
    """Mark ``grant`` issued and return it with a token for it; refused
    unless it is approved or active at ``ctx.now``."""
    from .keys import kid_for, load_private_key
    from policy.tokens import mint

    if effective_state(grant, ctx.now) not in LIVE:
        raise Refused(f"no token: {check_for_connect(grant, ctx.now)}")
    cfg = ctx.main_config()
    if cfg.signing_key is None:
        raise Refused("no token: tokens.signing_key is not set in the config (the issuing side needs it)")
    try:
        private = load_private_key(cfg.signing_key)
    except (ValueError, OSError) as e:
        raise Refused(f"no token: {e}") from None
    kid = cfg.signing_kid or kid_for(private.public_key())
    issued = ctx.change(grant.id, lambda g: ctx.rules.issue(g, actor=ctx.actor, now=ctx.now))
    token = mint(private, kid=kid, sub=issued.subject, db=issued.database, scope=issued.scope,
                 audience=cfg.audience, now=ctx.now, ttl=issued.expires_at - ctx.now,
                 nbf=issued.not_before,
                 reason=issued.reason, ticket=issued.ticket, approver=issued.approver, jti=issued.id)
    return issued, token


def _token_json(g: Grant, token: str, now: float) -> dict[str, Any]:
    return {"token": token, "grant": g.id, "sub": g.subject, "db": g.database, "scope": g.scope,
            "nbf": format_ts(g.not_before), "exp": format_ts(g.expires_at), "state": effective_state(g, now).value}


# ---------------------------------------------------------------- commands


def cmd_request(args, ctx: _Ctx) -> int:
    start = None if args.start is None else _parse_when(args.start, ctx.now, what="--start")
    try:
        g = ctx.rules.request(requester=ctx.actor, subject=args.subject, database=args.db, scope=args.scope,
                              duration=_duration(args.duration), reason=args.reason, ticket=args.ticket,
                              not_before=start, break_glass=args.break_glass, now=ctx.now)
        event = ctx.rules.initial_event(g)
    except GrantError as e:
        raise Refused(str(e)) from None
    if args.break_glass:
        ctx.main_config()               # a break-glass grant is issued at once: fail before storing
    ctx.store.create(g)
    if event is not None:
        g = ctx.change(g.id, lambda cur: apply(cur, event, actor=ctx.actor, now=ctx.now))
    token = None
    if g.break_glass:
        g, token = _mint(ctx, g)
    data = _grant_json(g, ctx.now) | ({"token": token} if token else {})
    lines = [f"grant {g.id} {g.state.value}: {_describe(g)}"]
    if g.state is GrantState.REQUESTED:
        who = ", ".join(ctx.rules.policy(g.scope).approvers) or "any other user"
        lines.append(f"waiting for approval by {who}:  pgwarden approve {g.id}")
    elif token:
        lines += ["BREAK-GLASS: issued at once and flagged for review", f"token: {token}"]
    else:
        lines.append(f"approved by policy (scope {g.scope} is auto); get the token:  pgwarden token {g.id}")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_approve(args, ctx: _Ctx) -> int:
    g = ctx.change(args.id, lambda g: ctx.rules.approve(g, actor=ctx.actor, now=ctx.now))
    _emit(args, _grant_json(g, ctx.now), f"grant {g.id} approved by {g.approver}: {_describe(g)}")
    return 0


def cmd_deny(args, ctx: _Ctx) -> int:
    g = ctx.change(args.id, lambda g: ctx.rules.deny(g, actor=ctx.actor, now=ctx.now, reason=args.reason))
    _emit(args, _grant_json(g, ctx.now), f"grant {g.id} denied by {g.denied_by}: {g.deny_reason}")
    return 0


def cmd_revoke(args, ctx: _Ctx) -> int:
    g = ctx.change(args.id, lambda g: ctx.rules.revoke(g, actor=ctx.actor, now=ctx.now, reason=args.reason))
    _emit(args, _grant_json(g, ctx.now),
          f"grant {g.id} revoked by {g.revoked_by} at {format_ts(g.revoked_at)}: {g.revoke_reason}")
    return 0


def cmd_end(args, ctx: _Ctx) -> int:
    g = ctx.change(args.id, lambda g: ctx.rules.end(g, actor=ctx.actor, now=ctx.now))
    _emit(args, _grant_json(g, ctx.now), f"grant {g.id} ended by {g.ended_by} at {format_ts(g.ended_at)}")
    return 0


def cmd_review(args, ctx: _Ctx) -> int:
    g = ctx.change(args.id, lambda g: ctx.rules.review(g, actor=ctx.actor, now=ctx.now))
    _emit(args, _grant_json(g, ctx.now), f"break-glass grant {g.id} reviewed by {g.reviewed_by}")
    return 0


def cmd_token(args, ctx: _Ctx) -> int:
    g, token = _mint(ctx, ctx.load(args.id))
    _emit(args, _token_json(g, token, ctx.now), token)
    return 0


def cmd_connect(args, ctx: _Ctx) -> int:
    g, token = _mint(ctx, ctx.load(args.id))
    cfg = ctx.main_config()
    host = args.host or cfg.listen_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = args.port or cfg.listen_port
    sslmode = args.sslmode or ("require" if cfg.tls_enabled else "prefer")
    dsn = f"postgresql://{quote(g.subject, safe='')}@{host}:{port}/{quote(g.database, safe='')}?sslmode={sslmode}"
    extra = list(args.psql_args or [])
    env = dict(os.environ, PGPASSWORD=token)
    try:
        return subprocess.run([args.psql, "-d", dsn, *extra], env=env).returncode
    except FileNotFoundError:
        raise Refused(f"cannot run {args.psql!r}: not found (set --psql)") from None


def cmd_issue(args, ctx: _Ctx) -> int:
    try:
        why = ctx.rules.may_issue_directly(actor=ctx.actor, subject=args.subject, scope=args.scope)
        if why is not None:
            raise GrantError(why, "not_allowed")
        g = ctx.rules.request(requester=ctx.actor, subject=args.subject, database=args.db, scope=args.scope,
                              duration=_duration(args.duration), reason=args.reason, ticket=args.ticket,
                              now=ctx.now)
    except GrantError as e:
        raise Refused(str(e)) from None
    ctx.main_config()
    ctx.store.create(g)
    event = "auto_approve" if ctx.rules.policy(g.scope).approval == "auto" else "approve"
    g = ctx.change(g.id, lambda cur: apply(cur, event, actor=ctx.actor, now=ctx.now, via="issue"))
    g, token = _mint(ctx, g)
    _emit(args, _token_json(g, token, ctx.now), token)
    return 0


def cmd_grants(args, ctx: _Ctx) -> int:
    since = _parse_since(args.since, ctx.now)
    grants = ctx.store.list(user=args.user, since=since, scope=args.scope)
    if args.state:
        grants = [g for g in grants if effective_state(g, ctx.now).value == args.state]
    if args.unreviewed:
        grants = [g for g in grants if g.awaiting_review]
    rows = [("ID", "STATE", "SCOPE", "DATABASE", "SUBJECT", "REQUESTER", "UNTIL", "APPROVER", "REASON")]
    for g in grants:
        state = effective_state(g, ctx.now).value + (" !review" if g.awaiting_review else "")
        rows.append((g.id, state, g.scope, g.database, g.subject, g.requester, format_ts(g.expires_at),
                     g.approver or "-", g.reason if len(g.reason) <= 40 else g.reason[:37] + "..."))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    _emit(args, [_grant_json(g, ctx.now) for g in grants], text if grants else "no grants")
    return 0


def cmd_show(args, ctx: _Ctx) -> int:
    g = ctx.load(args.id)
    events = ctx.store.events(g.id)
    sessions = ctx.store.sessions(g.id)
    if args.json:
        _emit(args, {"grant": _grant_json(g, ctx.now),
                     "events": [{"seq": e.seq, "at": _iso(e.at), "actor": e.actor, "event": e.event,
                                 "from_state": e.from_state, "to_state": e.to_state, "details": e.details}
                                for e in events],
                     "sessions": [{"session_id": s.session_id, "user": s.user, "started_at": _iso(s.started_at),
                                   "ended_at": _iso(s.ended_at), "end_reason": s.end_reason,
                                   "duration_s": None if s.ended_at is None else s.ended_at - s.started_at}
                                  for s in sessions]}, "")
        return 0
    state = effective_state(g, ctx.now).value
    lines = [f"grant {g.id}  {state}" + ("  BREAK-GLASS" + (", awaiting review" if g.awaiting_review
                                                              else f", reviewed by {g.reviewed_by}")
                                         if g.break_glass else ""),
             f"  requester {g.requester}   subject {g.subject}   database {g.database}   scope {g.scope}",
             f"  window    {format_ts(g.not_before)} - {format_ts(g.expires_at)} ({_span(g.duration)})",
             f"  reason    {g.reason}" + (f"   ticket {g.ticket}" if g.ticket else ""),
             f"  approver  {g.approver or '-'}", "", "evidence:"]
    timeline: list[tuple[float, int, str]] = []
    for e in events:
        what = {"request": f"requested {g.scope} on {g.database} for {g.subject}, {_span(g.duration)}: {g.reason}",
                "approve": "approved", "auto_approve": "approved by policy (auto)",
                "break_glass": "break-glass: approved at once, flagged for review",
                "deny": f"denied: {e.details.get('reason', '')}", "issue": "token issued",
                "revoke": f"revoked: {e.details.get('reason', '')}", "end": "ended early",
                "expire": "expired", "review": "break-glass reviewed"}.get(e.event, e.event)
        timeline.append((e.at, 0, f"{format_ts(e.at)}  {e.event:<12} {e.actor:<12} {what}"))
    for s in sessions:
        end = (f"ended {format_ts(s.ended_at)} after {_span(s.ended_at - s.started_at)}"
               + (f" ({s.end_reason})" if s.end_reason else "")) if s.ended_at is not None else "still open"
        timeline.append((s.started_at, 1, f"{format_ts(s.started_at)}  {'session':<12} {s.user:<12} "
                                          f"{s.session_id}: {end}"))
    lines += [t for _, _, t in sorted(timeline, key=lambda x: (x[0], x[1]))]
    reason = check_for_connect(g, ctx.now)
    lines.append("")
    lines.append(f"connect now: refused: {reason}" if reason else "connect now: allowed")
    print("\n".join(lines))
    return 0


def cmd_report(args, ctx: _Ctx) -> int:
    from .store.report import compute_report

    since = _parse_since(args.since, ctx.now)
    grants = ctx.store.list(since=since)
    sessions = {g.id: ctx.store.sessions(g.id) for g in grants}
    r = compute_report(grants, sessions, now=ctx.now)
    if args.json:
        r = dict(r, since=_iso(since), now=_iso(ctx.now))
        for item in r["break_glass_awaiting_review"]:
            item["approved_at"] = _iso(item["approved_at"])
        _emit(args, r, "")
        return 0
    states = [s.value for s in GrantState]
    lines = [f"grants{' since ' + format_ts(since) if since else ''}: {r['grants']}"]
    if r["by_scope"]:
        rows = [["scope", *states]] + [[scope, *(str(c.get(s, 0)) for s in states)]
                                       for scope, c in r["by_scope"].items()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                  for row in rows]
    lat, dur = r["approval_latency"], r["session_duration"]
    lines.append(f"approval latency (approved by a person, n={lat['count']}): "
                 f"median {_span(lat['median_s'])}, p95 {_span(lat['p95_s'])}")
    lines.append(f"session duration (ended sessions, n={dur['count']}): median {_span(dur['median_s'])}")
    nu = r["never_used"]
    lines.append(f"grants never used: {nu['count']}" + (f" ({', '.join(nu['grants'])})" if nu["grants"] else ""))
    bg = r["break_glass_awaiting_review"]
    lines.append(f"break-glass awaiting review: {len(bg)}")
    lines += [f"  {b['id']}  {b['requester']}  {b['scope']} on {b['database']}  {_iso(b['approved_at'])}  "
              f"{b['reason']}" for b in bg]
    print("\n".join(lines))
    return 0


# ------------------------------------------------------------------ parser


def _common(p: argparse.ArgumentParser, *, json_flag: bool = True, actor: bool = True) -> None:
    p.add_argument("--config", "-c", help="pgwarden.toml (default: $PGWARDEN_CONFIG or ./pgwarden.toml)")
    if actor:
        p.add_argument("--as", dest="as_user", metavar="USER", help="act as USER (default: the OS user)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON for machines")


def _add(sub, name: str, func, help: str, taken: set[str], skipped: list[str]) -> argparse.ArgumentParser | None:
    if name in taken:
        skipped.append(name)
        return None
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(func=_runner(func))
    return p


def register(subparsers, *, taken: set[str] | None = None) -> list[str]:
    """Add the grant commands to an argparse subparsers object.  Names in
    ``taken`` (or already registered) are skipped and returned; ``grant
    show ID`` and ``grant token ID`` are always there."""
    taken = set(taken or ()) | set(getattr(subparsers, "_name_parser_map", {}))
    skipped: list[str] = []

    def request_args(p, *, automation: bool) -> None:
        p.add_argument("--db", required=True, help="database")
        p.add_argument("--scope", required=True, help="read, write or ddl")
        p.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="30m, 2h, 1h30m")
        p.add_argument("--reason", required=True, help="why access is needed (recorded)")
        p.add_argument("--ticket", help="ticket reference, e.g. INC-1")
        p.add_argument("--subject", required=automation, help="database user the token is for"
                       + ("" if automation else " (default: the requester)"))

    if p := _add(subparsers, "request", cmd_request, "ask for a grant", taken, skipped):
        request_args(p, automation=False)
        p.add_argument("--start", help="scheduled start: HH:MM (next), +2h, or ISO 8601")
        p.add_argument("--break-glass", action="store_true", help="emergency: issued at once, flagged for review")
        _common(p)
    for name, func, help in (("approve", cmd_approve, "approve a requested grant"),
                             ("review", cmd_review, "mark a break-glass grant reviewed"),
                             ("end", cmd_end, "end your grant early (or withdraw the request)")):
        if p := _add(subparsers, name, func, help, taken, skipped):
            p.add_argument("id", help="grant id")
            _common(p)
    for name, func, help in (("deny", cmd_deny, "deny a requested grant"),
                             ("revoke", cmd_revoke, "revoke a grant: new connections refused, sessions cut")):
        if p := _add(subparsers, name, func, help, taken, skipped):
            p.add_argument("id", help="grant id")
            p.add_argument("--reason", required=True, help="why (recorded, shown to the user)")
            _common(p)
    if p := _add(subparsers, "grants", cmd_grants, "list grants", taken, skipped):
        p.add_argument("--state", choices=[s.value for s in GrantState], help="effective state now")
        p.add_argument("--user", help="requester or subject")
        p.add_argument("--scope")
        p.add_argument("--since", help="created since: 7d, 12h, or ISO 8601")
        p.add_argument("--unreviewed", action="store_true", help="break-glass grants awaiting review only")
        _common(p, actor=False)
    if p := _add(subparsers, "token", cmd_token, "mint the token of an approved grant", taken, skipped):
        p.add_argument("id", help="grant id")
        _common(p)
    if p := _add(subparsers, "grant", None, "one grant: show its evidence, or mint its token", taken, skipped):
        gsub = p.add_subparsers(metavar="ACTION", required=True)
        s = gsub.add_parser("show", help="the whole evidence: request, approval, issuance, sessions, end")
        s.add_argument("id", help="grant id")
        _common(s, actor=False)
        s.set_defaults(func=_runner(cmd_show))
        s = gsub.add_parser("token", help="mint the token of an approved grant")
        s.add_argument("id", help="grant id")
        _common(s)
        s.set_defaults(func=_runner(cmd_token))
    if p := _add(subparsers, "connect", cmd_connect, "run psql with the grant's token", taken, skipped):
        p.add_argument("id", help="grant id")
        _connect_options(p)
        p.add_argument("psql_args", nargs=argparse.REMAINDER, metavar="-- PSQL_ARG",
                       help="arguments for psql, after --")
    if p := _add(subparsers, "issue", cmd_issue, "automation: a pre-approved grant and its token", taken, skipped):
        request_args(p, automation=True)
        _common(p)
    if p := _add(subparsers, "report", cmd_report, "figures: grants by scope and state, latency, use", taken,
                 skipped):
        p.add_argument("--since", help="grants created since: 30d, or ISO 8601")
        _common(p, actor=False)
    return skipped


_CONNECT_OPTIONS = ("--psql", "--host", "--port", "--sslmode", "--config", "--as")


def _connect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--psql", default="psql", help="psql program (default: psql on PATH)")
    p.add_argument("--host", help="proxy host (default: server.listen_host)")
    p.add_argument("--port", type=int, help="proxy port (default: server.listen_port)")
    p.add_argument("--sslmode", help="default: require when the proxy has TLS, else prefer")
    # no -c: after ID that is psql's -c (command)
    p.add_argument("--config", help="pgwarden.toml (default: $PGWARDEN_CONFIG or ./pgwarden.toml)")
    p.add_argument("--as", dest="as_user", metavar="USER", help="act as USER (default: the OS user)")


def _split_psql_args(args) -> None:
    """``connect ID --as bob -- -c 'select 1'``: argparse's REMAINDER takes
    everything after ID, our own options too (and drops a leading ``--``).
    Take ours back from the front; the rest, after an optional ``--``, is psql's."""
    rest = list(args.psql_args or [])
    ours: list[str] = []
    while rest:
        head = rest[0]
        if head == "--":
            rest.pop(0)
            break
        name = head.split("=", 1)[0]
        if name not in _CONNECT_OPTIONS:
            break
        ours.append(rest.pop(0))
        if "=" not in head and rest:
            ours.append(rest.pop(0))
    args.psql_args = rest
    if ours:
        mini = argparse.ArgumentParser(prog="pgwarden connect ID", add_help=False)
        _connect_options(mini)
        try:
            mini.parse_args(ours, namespace=args)
        except SystemExit:
            raise Refused(f"connect: cannot use {' '.join(ours)!r}; put psql's arguments after --") from None


def _runner(func):
    if func is None:
        return None

    def run(args) -> int:
        from .store import StoreError

        try:
            if func is cmd_connect:
                _split_psql_args(args)
            ctx = _Ctx(args)
            try:
                return func(args, ctx)
            finally:
                ctx.store.close()
        except (Refused, StoreError) as e:
            print(f"pgwarden: {e}", file=sys.stderr)
            return 1
    return run


# For proxy/cli.py's existing `token` command: `pgwarden token ID` can hand over
# to this (args needs id, config, as_user, json).
run_token = _runner(cmd_token)

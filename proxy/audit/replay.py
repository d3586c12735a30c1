"""Find recordings and replay them as a readable timeline.

Job: ``list_sessions(dir, grant=, user=, since=)`` indexes the recordings
under a directory from their first and last lines; ``find_recording`` turns a
session id into its file; ``replay(path)`` yields the session as lines of
text (time, statement, outcome, duration), optionally at recorded pace.

Rules:

* Read-only and tolerant: replay shows what the file says, up to a torn last
  line; it does not verify (``verify.py`` does; the CLI prints both).
* Listing reads only a recording's first line and the tail of the file, so it
  costs the same for a one-statement session and a million-statement one.
* Introspection (catalog-only statements: psql's ``\\d``, driver type
  lookups) is folded into one summary line per run unless asked for.  Only
  allowed statements that succeeded are folded: a denied or failed statement
  is always shown.
* Pace sleeps the recorded gap between consecutive shown events, capped
  (``max_gap``, 5 s by default) so a long idle stretch does not stall replay.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from . import record as R

__all__ = ["SessionInfo", "find_recording", "iter_records", "list_sessions", "parse_since",
           "replay", "format_statement"]

TAIL_BYTES = 64 * 1024
_DATE_DIR = re.compile(r"\d{4}-\d{2}-\d{2}")
_SESSION_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T\d{6}-")


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    path: Path
    started: str | None
    user: str | None
    database: str | None
    grant: str | None
    scope: str | None
    client: str | None
    reason: str | None
    ended: str | None               # ts of session_end; None: unterminated
    end_reason: str | None
    statements: int | None          # from session_end totals

    @property
    def status(self) -> str:
        return "ended" if self.ended else "unterminated"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["status"] = self.status
        return d


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a recording, in file order; stops at a torn or unreadable line."""
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                return
            if isinstance(rec, dict):
                yield rec


def _first_record(path: Path) -> dict[str, Any] | None:
    with open(path, "rb") as f:
        line = f.readline()
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and rec.get("type") == R.SESSION_START else None


def _last_record(path: Path) -> dict[str, Any] | None:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - TAIL_BYTES))
        tail = f.read()
    if not tail.endswith(b"\n"):
        return None
    line = tail[:-1].rpartition(b"\n")[2]
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def parse_since(value: str | float | datetime | None, *, now: float | None = None) -> float | None:
    """``--since``: epoch seconds, a datetime, an ISO date or time (UTC unless it
    says otherwise), or an age: ``90m``, ``12h``, ``7d``."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    text = value.strip()
    m = re.fullmatch(r"(\d+)\s*([smhdw])", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return (time.time() if now is None else now) - int(m.group(1)) * unit
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since: {value!r} is neither a date/time (2025-01-31, "
                         "2025-01-31T09:00) nor an age (90m, 12h, 7d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _recordings(directory: Path, since: float | None) -> Iterator[Path]:
    if not directory.is_dir():
        return
    since_day = time.strftime("%Y-%m-%d", time.gmtime(since)) if since is not None else None
    for day in sorted(directory.iterdir()):
        if not (day.is_dir() and _DATE_DIR.fullmatch(day.name)):
            continue
        if since_day is not None and day.name < since_day:
            continue                      # a whole day before --since: not opened
        yield from sorted(day.glob("*.jsonl"))


def list_sessions(directory: str | Path, grant: str | None = None, user: str | None = None,
                  since: str | float | datetime | None = None) -> list[SessionInfo]:
    """Sessions under ``directory`` (``<dir>/<YYYY-MM-DD>/<id>.jsonl``), oldest first."""
    since_t = parse_since(since)
    out: list[SessionInfo] = []
    for path in _recordings(Path(directory), since_t):
        try:
            first = _first_record(path)
            if first is None:
                continue
            if grant is not None and first.get("grant") != grant:
                continue
            if user is not None and user not in (first.get("user"), first.get("sub")):
                continue
            started = first.get("ts")
            if since_t is not None:
                try:
                    if R.parse_ts(started) < since_t:
                        continue
                except (TypeError, ValueError):
                    continue
            last = _last_record(path)
        except OSError:
            continue
        ended = last if last is not None and last.get("type") == R.SESSION_END else None
        totals = ended.get("totals") if ended else None
        out.append(SessionInfo(
            session_id=first.get("session") or path.stem, path=path, started=started,
            user=first.get("user"), database=first.get("database"), grant=first.get("grant"),
            scope=first.get("scope"), client=first.get("client_addr"), reason=first.get("reason"),
            ended=ended.get("ts") if ended else None,
            end_reason=ended.get("reason") if ended else None,
            statements=totals.get("statements") if isinstance(totals, dict) else None))
    out.sort(key=lambda s: (s.started or "", s.session_id))
    return out


def find_recording(directory: str | Path, session: str) -> Path:
    """A session id (or a path) -> the recording's path.  FileNotFoundError if none."""
    p = Path(session)
    if p.suffix == ".jsonl" or os.sep in session:
        if p.is_file():
            return p
        raise FileNotFoundError(f"no recording at {p}")
    directory = Path(directory)
    m = _SESSION_DATE.match(session)
    if m:
        candidate = directory / f"{m.group(1)}-{m.group(2)}-{m.group(3)}" / f"{session}.jsonl"
        if candidate.is_file():
            return candidate
    found = sorted(directory.glob(f"*/{session}.jsonl"))
    if found:
        return found[0]
    if p.is_file():
        return p
    raise FileNotFoundError(f"no recording of session {session!r} under {directory}")


# ---------------------------------------------------------------------- the timeline

def _clock(ts: str | None) -> str:
    """'2025-01-02T03:04:05.123456Z' -> '03:04:05.123'."""
    if not ts or len(ts) < 23:
        return "??:??:??.???"
    return ts[11:23]


def _outcome(rec: dict[str, Any]) -> str:
    if rec.get("decision") != "allowed":
        rule = rec.get("rule") or "?"
        cls = rec.get("class")
        return f"DENIED [{rule}]" + (f" ({cls} class)" if cls else "")
    if rec.get("sqlstate"):
        msg = rec.get("message") or ""
        return f"ERROR {rec['sqlstate']}" + (f" {msg}" if msg else "")
    tag = rec.get("tag")
    rows = rec.get("rows")
    out = tag or "ok"
    if rows is not None and (tag or "").split(" ")[0] in ("SELECT", "FETCH", "COPY", "MOVE"):
        out += f" ({rows} row{'s' if rows != 1 else ''})"
    return out


# How the statement arrived (the PostgreSQL message that carried it), when not a simple Query.
_VIA = {"execute": "  [extended]", "parse": "  [extended: Parse]", "function_call": "  [FunctionCall]"}


def format_statement(rec: dict[str, Any], t0: float | None = None) -> str:
    """One statement record as timeline text (continuation lines indented)."""
    started = rec.get("started") or rec.get("ts")
    offset = ""
    if t0 is not None:
        try:
            offset = f" +{R.parse_ts(started) - t0:8.3f}s"
        except (TypeError, ValueError):
            offset = " +   ?    s"
    head = f"{_clock(started)}{offset}  "
    text = (rec.get("text") or "").strip() or "(empty query)"
    pad = " " * len(head)
    body = text.replace("\n", "\n" + pad)
    dur = rec.get("duration_ms")
    dur_s = f"  {dur:.1f} ms" if isinstance(dur, (int, float)) else ""
    params = rec.get("params")
    par = f"\n{pad}params: {orjson.dumps(params).decode()}" if params else ""
    via = _VIA.get(rec.get("via"), "")
    return f"{head}{body}{par}\n{pad}-> {_outcome(rec)}{dur_s}{via}"


def _foldable(rec: dict[str, Any]) -> bool:
    return bool(rec.get("introspection")) and rec.get("decision") == "allowed" and not rec.get("sqlstate")


def _header(rec: dict[str, Any]) -> list[str]:
    who = f"{rec.get('user') or rec.get('sub') or '?'}@{rec.get('database') or '?'}"
    lines = [f"session {rec.get('session')}  {who}  started {rec.get('ts')}"]
    grant = f"grant {rec.get('grant')}" + (f" (scope {rec['scope']})" if rec.get("scope") else "")
    via = []
    if rec.get("client_addr"):
        via.append(f"from {rec['client_addr']}")
    tls = rec.get("tls")
    if tls:
        via.append(f"TLS {tls}" if isinstance(tls, str) else "TLS")
    elif tls is not None:
        via.append("no TLS")
    if rec.get("backend_pid"):
        via.append(f"backend pid {rec['backend_pid']}")
    lines.append("  " + "  ".join([grant] + via))
    why = [f"{k} {rec[k]!r}" if k == "reason" else f"{k} {rec[k]}"
           for k in ("reason", "ticket", "approver") if rec.get(k)]
    if why:
        lines.append("  " + "  ".join(why))
    return lines


def replay(path: str | Path, pace: bool = False, include_introspection: bool = False, *,
           max_gap: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """The recording as timeline lines (each may span several terminal lines)."""
    t0: float | None = None
    last_t: float | None = None
    folded = 0
    saw_end = False
    count = 0

    def flush_folded() -> Iterator[str]:
        nonlocal folded
        if folded:
            yield (f"{'':14}  ... {folded} catalog quer{'y' if folded == 1 else 'ies'} folded "
                   "(introspection: psql \\d, driver type lookups; --all shows them)")
            folded = 0

    def at(ts: str | None) -> None:
        nonlocal last_t
        if not pace or ts is None:
            return
        try:
            t = R.parse_ts(ts)
        except ValueError:
            return
        if last_t is not None and t > last_t:
            sleep(min(t - last_t, max_gap))
        last_t = t if last_t is None else max(t, last_t)

    for rec in iter_records(path):
        count += 1
        rtype = rec.get("type")
        if rtype == R.SESSION_START:
            try:
                t0 = R.parse_ts(rec.get("ts"))
            except (TypeError, ValueError):
                t0 = None
            last_t = t0
            yield from _header(rec)
        elif rtype == R.STATEMENT:
            if _foldable(rec) and not include_introspection:
                folded += 1
                continue
            yield from flush_folded()
            at(rec.get("started"))
            yield format_statement(rec, t0)
        elif rtype == R.COPY:
            yield from flush_folded()
            rows = rec.get("rows")
            rows_s = f", {rows} rows" if rows is not None else ""
            yield f"{_clock(rec.get('ts'))}{'':11}  COPY {rec.get('direction')}: {rec.get('bytes')} bytes{rows_s}"
        elif rtype == R.NOTICE:
            yield from flush_folded()
            at(rec.get("ts"))
            yield f"{_clock(rec.get('ts'))}{'':11}  NOTICE {rec.get('kind')}: {rec.get('message')}"
        elif rtype == R.SESSION_END:
            yield from flush_folded()
            at(rec.get("ts"))
            saw_end = True
            totals = rec.get("totals") or {}
            n = totals.get("statements", "?")
            parts = [f"{n} statement{'' if n == 1 else 's'}"]
            if totals.get("denied"):
                parts.append(f"{totals['denied']} denied")
            if totals.get("errors"):
                parts.append(f"{totals['errors']} error{'' if totals['errors'] == 1 else 's'}")
            if "duration_s" in totals:
                parts.append(f"{totals['duration_s']} s")
            yield (f"{_clock(rec.get('ts'))}{'':11}  session end: {rec.get('reason')} "
                   f"({', '.join(parts)}; signed by {rec.get('key_id')})")
    yield from flush_folded()
    if count == 0:
        yield "(empty recording)"
    elif not saw_end:
        yield ("(recording ends here without a session_end: UNTERMINATED -- the proxy stopped "
               "before the session ended; every statement above had completed)")

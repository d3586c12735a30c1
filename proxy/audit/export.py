"""Export one recording as a self-contained HTML page for an auditor.

Job: ``export_html(path, public_keys)`` renders a recording -- its evidence
(who, from where, under which grant and why; the file's SHA-256; the
signature) and its timeline (every statement with class, decision, rule,
outcome, rows, SQLSTATE; COPY; notices; the end) -- together with the result
of ``verify``, as one HTML document.

Rules:

* Self-contained: one file, inline CSS, no script, no external resource.  A
  Content-Security-Policy meta tag forbids loading anything, so the page
  shows the same thing offline, years later, on any machine.
* Everything from the recording is text, never markup: every value goes
  through ``html.escape`` (statement text is whatever a client sent, e.g.
  ``<script>``).
* Shows what the file says, even when verification fails: the verdict is at
  the top, and the record verification names is highlighted (``id="r<seq>"``,
  class ``bad``).  Every statement is listed, introspection too (marked, not
  folded: an export is evidence, not a summary).
* Pure apart from reading the file: the page's bytes depend only on the
  recording, the keys and ``generated`` (passed in; defaults to now).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import record as R
from .replay import iter_records
from .verify import Report, verify

__all__ = ["export_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;
color:#1d1d1f;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}th,td{text-align:left;vertical-align:top;padding:.3em .5em;
border-bottom:1px solid #eee}th{background:#f6f6f7;font-weight:600}
table.kv th{width:13em}pre{margin:0;white-space:pre-wrap;word-break:break-word;
font:13px/1.4 ui-monospace,"DejaVu Sans Mono",monospace}pre.sql{min-width:24em}
.verdict{padding:.8em 1em;border-radius:6px;font-weight:600;margin:1em 0}
.verdict.ok{background:#e6f4ea;color:#0d652d}.verdict.unterminated{background:#fef7e0;color:#8a5a00}
.verdict.failed{background:#fce8e6;color:#a50e0e}
tr.denied td{background:#fce8e6}tr.error td{background:#fef7e0}tr.introspection td{color:#777}
tr.bad td{outline:2px solid #a50e0e}tr.notice td,tr.copy td,tr.end td{background:#f1f3f4}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.85em;background:#e8eaed}
.denied .badge.decision{background:#a50e0e;color:#fff}.small{color:#666;font-size:.9em}
footer{margin-top:2em;color:#777;font-size:.85em}
"""

_START_SKIP = frozenset(("seq", "type", "prev", "v"))
_START_ORDER = ("session", "ts", "user", "database", "client_addr", "tls", "grant", "scope", "reason",
                "ticket", "approver", "backend_pid", "capture")
_START_LABELS = {"ts": "started (UTC)", "client_addr": "client address", "backend_pid": "backend pid",
                 "session": "session id"}


def _t(value: Any) -> str:
    """A value as escaped text (JSON for lists and objects)."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return escape(orjson.dumps(value).decode())
    return escape(str(value))


def _offset(ts: Any, t0: float | None) -> str:
    if t0 is None or not isinstance(ts, str):
        return ""
    try:
        return f"+{R.parse_ts(ts) - t0:.3f}s"
    except ValueError:
        return ""


def _time(ts: Any, t0: float | None) -> str:
    """Time of day (the date is in the header; the whole timestamp in the tooltip) and offset."""
    if not isinstance(ts, str) or len(ts) < 20:
        return _t(ts)
    return (f'<span title="{escape(ts)}">{escape(ts[11:-1])}</span>'
            f"<div class=small>{_offset(ts, t0)}</div>")


def _statement_row(rec: dict[str, Any], t0: float | None, bad: int | None) -> str:
    seq = rec.get("seq")
    classes = ["statement"]
    decision = rec.get("decision")
    if decision != "allowed":
        classes.append("denied")
    elif rec.get("sqlstate"):
        classes.append("error")
    if rec.get("introspection"):
        classes.append("introspection")
    if seq == bad:
        classes.append("bad")
    started = rec.get("started") or rec.get("ts")
    text = rec.get("text")
    body = f"<pre class=sql>{escape(text) if isinstance(text, str) and text.strip() else '(empty query)'}</pre>"
    if rec.get("params"):
        body += f'<div class=small>params: <code>{_t(rec["params"])}</code></div>'
    if rec.get("rows_sample"):
        body += f'<div class=small>first rows: <code>{_t(rec["rows_sample"])}</code></div>'
    if rec.get("introspection"):
        body += '<div class=small><span class=badge>introspection</span> catalog-only query</div>'
    outcome = rec.get("tag") if decision == "allowed" and not rec.get("sqlstate") else None
    dur = rec.get("duration_ms")
    cells = [
        _t(seq), _time(started, t0), body,
        _t(rec.get("class")), f"<span class='badge decision'>{_t(decision)}</span>", _t(rec.get("rule")),
        _t(outcome), _t(rec.get("rows")), _t(rec.get("sqlstate")), _t(rec.get("message")),
        _t(dur) + (" ms" if isinstance(dur, (int, float)) else ""), _t(rec.get("via")),
    ]
    return (f'<tr id="r{_t(seq)}" class="{" ".join(classes)}" data-seq="{_t(seq)}">'
            + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")


def _other_row(rec: dict[str, Any], t0: float | None, bad: int | None) -> str:
    seq, rtype = rec.get("seq"), rec.get("type")
    if rtype == R.COPY:
        rows = f", {_t(rec.get('rows'))} rows" if rec.get("rows") is not None else ""
        what = f"COPY {_t(rec.get('direction'))}: {_t(rec.get('bytes'))} bytes{rows}"
        css = "copy"
    elif rtype == R.NOTICE:
        extra = {k: v for k, v in rec.items() if k not in ("seq", "ts", "type", "prev", "kind", "message")}
        what = f"NOTICE {_t(rec.get('kind'))}: {_t(rec.get('message'))}"
        if extra:
            what += f" <span class=small>{_t(extra)}</span>"
        css = "notice"
    elif rtype == R.SESSION_END:
        what = f"session end: {_t(rec.get('reason'))}"
        css = "end"
    elif rtype == R.SESSION_START:
        what = "session start"
        css = "start"
    else:
        what = f"{_t(rtype)} record"
        css = "other"
    if seq == bad:
        css += " bad"
    return (f'<tr id="r{_t(seq)}" class="{css}" data-seq="{_t(seq)}"><td>{_t(seq)}</td>'
            f'<td>{_time(rec.get("ts"), t0)}</td>'
            f'<td colspan=10>{what}</td></tr>')


def _kv(rows: list[tuple[str, str]], table_id: str) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class=kv id="{table_id}">{body}</table>'


def export_html(path: str | Path, public_keys: Mapping[str, Ed25519PublicKey], *,
                report: Report | None = None, generated: float | None = None) -> str:
    """The recording at ``path`` as one HTML document (a str)."""
    path = Path(path)
    data = path.read_bytes()
    if report is None:
        report = verify(path, public_keys)
    records = list(iter_records(path))
    start = records[0] if records and records[0].get("type") == R.SESSION_START else None
    end = records[-1] if records and records[-1].get("type") == R.SESSION_END else None
    t0 = None
    if start is not None:
        try:
            t0 = R.parse_ts(start.get("ts"))
        except (TypeError, ValueError):
            t0 = None
    bad = report.failure.record if report.failure is not None and report.failure.record else None
    session = (start or {}).get("session") or report.session_id or path.stem
    status = report.status

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="pgwarden audit export">',
        f"<title>pgwarden session {escape(str(session))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<h1>Session <span id="session-id">{escape(str(session))}</span></h1>',
    ]
    if start is not None:
        out.append(f'<p class=small>{_t(start.get("user"))}@{_t(start.get("database"))} from '
                   f'{_t(start.get("client_addr"))}, grant {_t(start.get("grant"))} '
                   f'(scope {_t(start.get("scope"))}), started {_t(start.get("ts"))}</p>')
    verdict = {"ok": "Verified: hash chain intact and session_end signature valid",
               "unterminated": "UNTERMINATED: intact so far, but no signed session_end",
               "failed": "VERIFICATION FAILED"}[status]
    out.append(f'<div id="verification" class="verdict {status}" data-status="{status}">'
               f'{escape(verdict)}<div class=small>{escape(report.summary())}</div></div>')
    for note in report.notes:
        out.append(f"<p class=small>{escape(note)}</p>")

    # Evidence: the session_start, then the recording itself.
    out.append("<h2>Evidence</h2>")
    if start is not None:
        rows = []
        keys = [k for k in _START_ORDER if k in start]
        keys += sorted(k for k in start if k not in _START_ORDER and k not in _START_SKIP)
        for k in keys:
            rows.append((_START_LABELS.get(k, k), _t(start[k])))
        out.append(_kv(rows, "evidence"))
    else:
        out.append('<p id="evidence">No session_start record.</p>')
    stmts = [r for r in records if r.get("type") == R.STATEMENT]
    rec_rows = [
        ("file", _t(str(path))), ("size", f"{len(data)} bytes"),
        ("SHA-256 of the file", f"<code>{hashlib.sha256(data).hexdigest()}</code>"),
        ("records", _t(len(records))), ("statements", _t(len(stmts))),
        ("denied", _t(sum(1 for r in stmts if r.get("decision") != "allowed"))),
        ("errors", _t(sum(1 for r in stmts if r.get("decision") == "allowed" and r.get("sqlstate")))),
        ("introspection", _t(sum(1 for r in stmts if r.get("introspection")))),
        ("format version", _t((start or {}).get("v"))),
    ]
    if end is not None:
        rec_rows += [("signed by key", _t(end.get("key_id"))),
                     ("signature (Ed25519)", f"<code>{_t(end.get('sig'))}</code>"),
                     ("hash of the record before the seal", f"<code>{_t(end.get('prev'))}</code>")]
    out.append("<h3>Recording</h3>")
    out.append(_kv(rec_rows, "recording"))

    # Timeline: every record after the session_start.
    out.append("<h2>Timeline</h2>")
    out.append('<table id="timeline"><thead><tr><th>#</th><th>time (UTC)</th><th>statement</th>'
               "<th>class</th><th>decision</th><th>rule</th><th>tag</th><th>rows</th><th>SQLSTATE</th>"
               "<th>message</th><th>duration</th><th>via</th></tr></thead><tbody>")
    for rec in records:
        if rec is start:
            continue
        if rec.get("type") == R.STATEMENT:
            out.append(_statement_row(rec, t0, bad))
        else:
            out.append(_other_row(rec, t0, bad))
    out.append("</tbody></table>")

    # The end.
    out.append("<h2>End</h2>")
    if end is not None:
        rows = [("reason", f'<span id="end-reason">{_t(end.get("reason"))}</span>'),
                ("ended (UTC)", _t(end.get("ts")))]
        totals = end.get("totals")
        if isinstance(totals, dict):
            rows += [(f"totals: {k}", _t(v)) for k, v in sorted(totals.items())]
        out.append(_kv(rows, "end"))
    else:
        out.append('<p id="end"><span id="end-reason">none</span>: the recording has no session_end '
                   "(UNTERMINATED: the proxy stopped before the session ended, or the session is "
                   "still running); every statement listed had completed.</p>")

    when = R.iso_ts(time.time() if generated is None else generated)
    out.append(f"<footer>Exported by pgwarden at {when}. Check the file itself with "
               f"<code>pgwarden audit verify {escape(str(path))}</code>.</footer>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"

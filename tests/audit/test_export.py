"""``audit export --html``: a self-contained page with the timeline and the evidence,
checked as rendered by a headless browser (Debian's chromium)."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from proxy.audit.export import export_html
from proxy.audit.verify import verify

from .conftest import write_sample

pytestmark = pytest.mark.usefixtures("line_impl")    # every test with each statement-line builder

XSS = "select '<script>document.title=\"pwned\"</script><img src=x onerror=alert(1)>' as \"</td>\""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("PGWARDEN_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        reason = ("chromium not found: the HTML export is checked in a headless browser. Install it "
                  "(apt-get install -y chromium, as root) or run ./dev test, which installs it when it can; "
                  "PGWARDEN_CHROMIUM=/path/to/chromium picks another")
        if os.environ.get("PGWARDEN_REQUIRE_CHROMIUM") == "1":
            pytest.fail(reason + " (PGWARDEN_REQUIRE_CHROMIUM=1: not skipping)")
        pytest.skip(reason)
    return exe


def dump_dom(chromium: str, page: Path, tmp_path: Path) -> str:
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return proc.stdout


VOID = frozenset(("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                  "track", "wbr"))


class DOM(HTMLParser):
    """Just enough of a serialised DOM: the text and attributes of elements with an id,
    the timeline rows (``tr[data-seq]``) with their text, every tag name, the title."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.open: list[tuple[str, str | None]] = []           # (tag, id) of open elements
        self.texts: dict[str, list[str]] = {}
        self.attrs_by_id: dict[str, dict] = {}
        self.rows: list[tuple[dict, list[str]]] = []
        self.tags: list[str] = []
        self.title = ""
        self._row: tuple[dict, list[str]] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in a:
            self.attrs_by_id[a["id"]] = a
            self.texts[a["id"]] = []
        if tag == "tr" and "data-seq" in a:
            self._row = (a, [])
        if tag not in VOID:
            self.open.append((tag, a.get("id")))

    def handle_endtag(self, tag):
        while self.open:
            t, _ = self.open.pop()
            if t == tag:
                break
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        for t, i in self.open:
            if t == "title":
                self.title += data
            if i is not None:
                self.texts[i].append(data)
        if self._row is not None:
            self._row[1].append(data)

    def text_of(self, element_id: str) -> str:
        return "".join(self.texts[element_id])


@pytest.fixture
def hostile_sample(factory, clock):
    rec = factory.open(grant="g-123", session_id="20260101T000000-a1b2c3d4e5f6")
    write_sample(rec, clock, end=False)
    rec.statement(XSS, statement_class="read", rule="read.select", tag="SELECT 1")
    rec.end("revoked")
    return rec.path


def test_page_is_self_contained_and_escaped(hostile_sample, keys):
    page = export_html(hostile_sample, keys, generated=0)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;document.title=" in page
    for external in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert external not in page.replace("src=x", ""), external
    assert "default-src 'none'" in page
    assert export_html(hostile_sample, keys, generated=0) == page        # deterministic


def test_page_in_headless_chromium(chromium, hostile_sample, keys, tmp_path):
    out = tmp_path / "session.html"
    out.write_text(export_html(hostile_sample, keys))
    dom = DOM(dump_dom(chromium, out, tmp_path))

    assert dom.title == "pgwarden session 20260101T000000-a1b2c3d4e5f6"          # no script ran
    assert "script" not in dom.tags and "img" not in dom.tags
    assert dom.attrs_by_id["verification"]["data-status"] == "ok"
    assert "Verified" in dom.text_of("verification")

    evidence = dom.text_of("evidence")
    for value in ("alice", "appdb", "10.0.0.7:51234", "TLSv1.3", "g-123", "read", "INC-42 stuck payments",
                  "INC-42", "bob", "4242"):
        assert value in evidence, value
    recording = dom.text_of("recording")
    import hashlib
    assert hashlib.sha256(hostile_sample.read_bytes()).hexdigest() in recording

    rows = {int(a["data-seq"]): (a.get("class", ""), " ".join("".join(t).split())) for a, t in dom.rows}
    assert sorted(rows) == list(range(2, 12))                 # every record after the start
    statements = {k: v for k, v in rows.items() if "statement" in v[0]}
    assert len(statements) == 7
    cls, text = rows[2]
    assert "select id, name from accounts where id = $1" in text and 'params: ["7"]' in text
    assert "read" in text and "allowed" in text and "read.select" in text and "SELECT 1" in text
    cls, text = rows[3]
    assert "introspection" in cls and "pg_catalog.pg_class" in text
    cls, text = rows[4]
    assert "denied" in cls and "delete from accounts" in text and "write.delete" in text and "42501" in text
    cls, text = rows[5]
    assert "error" in cls and "42P01" in text and 'relation "nope" does not exist' in text
    assert "COPY out: 1234 bytes, 10 rows" in rows[6][1]
    assert "COPY 10" in rows[7][1]
    assert "NOTICE expiry_warning" in rows[8][1]
    assert '<script>document.title="pwned"</script><img src=x onerror=alert(1)>' in rows[10][1]
    assert "session end: revoked" in rows[11][1]
    assert dom.text_of("end-reason") == "revoked"
    assert "statements" in dom.text_of("end") and "7" in dom.text_of("end")


def test_tampered_page_in_headless_chromium(chromium, sample, keys, tmp_path):
    lines = sample.read_bytes().splitlines()
    lines[3] = lines[3].replace(b"delete from accounts", b"select 1 from accounts")
    sample.write_bytes(b"".join(x + b"\n" for x in lines))
    out = tmp_path / "tampered.html"
    out.write_text(export_html(sample, keys))
    dom = DOM(dump_dom(chromium, out, tmp_path))
    assert dom.attrs_by_id["verification"]["data-status"] == "failed"
    assert "VERIFICATION FAILED" in dom.text_of("verification")
    assert "record 4" in dom.text_of("verification")
    assert "bad" in dom.attrs_by_id["r4"]["class"]
    assert len([r for r in dom.rows if "statement" in r[0].get("class", "")]) == 6    # still all shown
    assert "statements6denied1errors1" in "".join(dom.text_of("recording").split())


def test_unterminated_page(factory, clock, keys):
    rec = write_sample(factory.open(), clock, end=False)
    page = export_html(rec.path, keys)
    assert 'data-status="unterminated"' in page and "UNTERMINATED" in page
    assert '<span id="end-reason">none</span>' in page
    assert verify(rec.path, keys).status == "unterminated"

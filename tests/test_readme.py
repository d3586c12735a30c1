"""README.md opens with the two commands for a fresh machine, and they exist (issue 2).

`./dev demo` installs pgwarden and runs `pgwarden demo` (tested end to end in
tests/integration/test_demo.py); `./dev test` installs and runs the tests; `.ci/run` calls the
latter after installing PostgreSQL 15 from Debian packages when pg_ctl is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```(?:sh|bash)?\n(.*?)```", text, re.S)]


def test_readme_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    first_heading = text.index("\n## ")
    assert "## Two commands" in text[first_heading:first_heading + 40], "the first section is not the two commands"
    blocks = _blocks(text)
    assert blocks[:2] == ["./dev demo", "./dev test"], blocks[:2]
    assert '{"config": PATH, "admin_dsn": DSN, "dsn": {"read": DSN, "write": DSN, "ddl": DSN}}' in text


def test_dev_script_has_both_commands_and_ci_calls_it():
    dev = REPO / "dev"
    assert os.access(dev, os.X_OK)
    assert subprocess.run(["bash", "-n", str(dev)]).returncode == 0
    script = dev.read_text()
    for case in ("test)", "demo)"):
        assert re.search(rf"^\s+{re.escape(case)}", script, re.M), case
    assert "pgwarden demo" in script and "-m pytest" in script and "ensure_postgres" in script
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK) and subprocess.run(["bash", "-n", str(ci)]).returncode == 0
    text = ci.read_text()
    assert "command -v pg_ctl" in text and "postgresql-15" in text and "apt-get install" in text
    # CI runs the README's test command exactly as a newcomer types it
    readme_test = re.search(r"```sh\n(\./dev test)\n```", (REPO / "README.md").read_text()).group(1)
    assert re.search(rf"^{re.escape(readme_test)}$", text, re.M)


def test_dev_help_runs():
    proc = subprocess.run([str(REPO / "dev"), "help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "./dev test" in proc.stdout and "./dev demo" in proc.stdout

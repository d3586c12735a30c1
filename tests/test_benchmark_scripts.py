"""benchmarks/classify_cost.py runs (a quick smoke run: the numbers are not checked, the shape is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_classify_cost_quick_run():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "classify_cost.py"), "--quick", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and "statement" not in ln]
    assert len(lines) >= 8, proc.stdout
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        cold, verdict = float(cells[4]), float(cells[7])
        assert cold > verdict, ln                     # a cached verdict is cheaper than a cold classify
    assert any("masked" in ln for ln in proc.stdout.splitlines()[:1])

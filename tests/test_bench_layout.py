"""The benchmarks stay out of the test run: ./dev test and CI never collect benchmarks/.

Speed is measured by ``python -m benchmarks.suite`` and the pytest-benchmark
files in benchmarks/ (run explicitly), never asserted in tests: these
machines are too noisy for that.  One test here runs each micro-benchmark
once with timing disabled, so that they keep working as the code changes.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pytest_collects_only_tests():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert config["testpaths"] == ["tests"]
    assert "benchmarks" not in " ".join(config.get("addopts", []) if isinstance(config.get("addopts"), list)
                                        else [config.get("addopts", "")])


def test_benchmark_files_are_outside_tests():
    assert not list((ROOT / "tests").rglob("test_micro_*.py"))
    assert list((ROOT / "benchmarks").glob("test_micro_*.py"))


def test_bench_extra_holds_the_suite_tools():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0] for d in extras["bench"]}
    assert {"matplotlib", "pytest-benchmark", "asyncpg"} <= names
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith("matplotlib") for d in main)


def test_micro_benchmarks_still_run_untimed():
    """Every micro-benchmark in benchmarks/, each body called once and nothing timed
    (``--benchmark-disable``): they keep working against the code as it is, their own checks of
    what they measure included (a relayed transaction recorded, a cache hit), without CI ever
    timing anything. A timing target is checked only when pytest-benchmark measures."""
    r = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-disable", "-q",
                        "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout

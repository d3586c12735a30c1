"""The benchmarks stay out of the test run: ./dev test and CI never collect benchmarks/.

Speed is measured by ``python -m benchmarks.suite`` and the pytest-benchmark
files in benchmarks/ (run explicitly), never asserted in tests: these
machines are too noisy for that.
"""

from __future__ import annotations

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

"""pgwarden's benchmarks: the pgbench suite (benchmarks.suite) and pytest-benchmark micro-benchmarks."""


def median_s(benchmark) -> float | None:
    """A pytest-benchmark fixture's median in seconds; None under ``--benchmark-disable``, where each
    benchmarked function is called once and nothing is timed (the smoke run in tests/test_bench_layout.py)."""
    return None if benchmark.stats is None else benchmark.stats.stats.median

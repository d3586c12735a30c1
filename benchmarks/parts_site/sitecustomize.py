"""Loaded at start-up by pgwarden processes that benchmarks/parts.py starts (PYTHONPATH)."""

import os
import sys

_part = os.environ.get("PGWARDEN_BENCH_PART")
if _part:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from benchmarks.parts_hooks import apply

    apply(_part)

"""What each half of the session recording costs: the statement tracker and the record.

    python -m benchmarks.parts                      # select-only -M prepared -c 8, 5 x 6 s
    python -m benchmarks.parts --duration 8 --repeat 3 --mode simple
    python -m benchmarks.parts --baseline /tmp/before    # also the code of another checkout
    python -m benchmarks.parts --parts '' --python /usr/bin/python3.11   # also run by another interpreter
    python -m benchmarks.parts --parts compiled-glue --clients 1   # only that part beside the paths
    python -m benchmarks.parts --parts '' --nice -10     # every proxy scheduled ahead of pgbench and the server

Starts the suite's environment (benchmarks/env.py) with PgBouncer, pgwarden
as shipped, pgwarden with recording off, and one pgwarden per part of the
recording switched off, reordered or compiled (benchmarks/parts_hooks.py:
``no-tracker``, ``no-records``, ``forward-first``, ``compiled-glue``;
``--parts`` picks), runs the same pgbench workload through each in turn
(interleaved, repeated) and prints, per path, the median TPS, its ratio to
PgBouncer, and the proxy process's user and system CPU per transaction
(``/proc/<pid>/stat`` around each run), and how much of the machine's CPU
time sat idle during the path's runs (``/proc/stat``).  docs/benchmarks.md
has runs.

``--nice N`` runs every proxy at that nice value, all alike: how much a
proxy gains when the scheduler runs it ahead of the client and the server
that share its cores.

``--baseline DIR`` adds a pgwarden (recording on) run from another source
tree, e.g. ``git worktree add /tmp/before HEAD~3`` with its C extensions
built (``cd /tmp/before && python setup.py build_ext --inplace``): the
code before a change and after it, measured in the same run.

``--python PATH`` adds a pgwarden (recording on) run from this tree by
another interpreter: e.g. a distribution's CPython, built with PGO and LTO,
beside a pyenv build without them.  It needs pgwarden's dependencies (a venv
of it with ``pip install -e .``), and this tree's C extensions must load in
it (the same minor version; otherwise build them for it); it is refused
before anything starts when they do not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.env import BenchEnv, cpu_per_transaction, cpu_seconds, log, machine_idle, renice_all  # noqa: E402
from benchmarks.parts_hooks import PARTS                # noqa: E402
from benchmarks.suite import run_pgbench                # noqa: E402

LABELS = {
    "pgbouncer": "PgBouncer",
    "bare-relay": "bare Python relay (parses nothing)",
    "bare-relay-record": "bare relay + one chained line and write(2) per statement",
    "bare-relay-record-mmap": "bare relay + the same line stored into a mapping of the file (--mmap)",
    "c-relay": "C relay (benchmarks/c_relay.c: epoll, parses nothing)",
    "c-relay-record": "C relay + one chained line and write(2) per statement",
    "pgwarden-norec": "pgwarden, recording off",
    "pgwarden-no-tracker": "recorder open, no statement tracker",
    "pgwarden-no-records": "tracker on, statement records not built",
    "pgwarden-forward-first": "recording on, a read forwarded before its records are written (not shipped)",
    "pgwarden-compiled-glue": "recording on, the per-read glue in C (benchmarks/glue_proto.c, not shipped)",
    "pgwarden": "pgwarden, recording on (as shipped)",
    "pgwarden-baseline": "pgwarden, recording on, --baseline tree",
    "pgwarden-python": "pgwarden, recording on, run by the --python interpreter",
}


def table(tps: dict[str, list[float]], cpu: dict[str, list[tuple[float, float]]],
          idle: dict[str, list[float]] | None = None) -> str:
    """Markdown: median TPS, ratio to PgBouncer's median, user/system µs per transaction (min-max),
    and, given ``idle``, the median share of the machine's CPU time left idle during the path's runs."""
    base = statistics.median(tps["pgbouncer"]) if tps.get("pgbouncer") else None
    rows = ["| path | TPS (median) | / PgBouncer | user µs/tx | system µs/tx |" + (" machine idle |" if idle else ""),
            "|---|---|---|---|---|" + ("---|" if idle else "")]
    for name, runs in tps.items():
        if not runs:
            continue
        med = statistics.median(runs)
        ratio = f"{med / base:.2f}" if base else "–"
        us = [u for u, _ in cpu[name]]
        sy = [s for _, s in cpu[name]]
        rows.append(f"| {LABELS.get(name, name)} | {med:,.0f} | {ratio} | {min(us):.1f}-{max(us):.1f} "
                    f"| {min(sy):.1f}-{max(sy):.1f} |"
                    + (f" {statistics.median(idle[name]) * 100:.0f}% |" if idle else ""))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=6, help="seconds per pgbench run (default 6)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per path; the median is reported")
    ap.add_argument("--mode", default="prepared", choices=("prepared", "extended", "simple"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also run pgwarden (recording on) from this other source tree")
    ap.add_argument("--python", type=Path, metavar="PATH",
                    help="also run pgwarden (recording on) from this tree by this other interpreter (one with "
                         "pgwarden's dependencies; this tree's C extensions must load in it)")
    ap.add_argument("--nice", type=int, metavar="N",
                    help="run every proxy (PgBouncer, the relays, each pgwarden and its workers) at this nice "
                         "value, all alike (below 0 needs root)")
    ap.add_argument("--bare", action="store_true",
                    help="also the bare Python relay, alone, writing one chained line per statement "
                         "(benchmarks/bare_relay.py --record), and storing it into a mapping of the file "
                         "(--record --mmap): the floors under pgwarden's two halves, and what write(2) costs; "
                         "and the C relay (benchmarks/c_relay.c), alone and with --record, where it builds")
    ap.add_argument("--parts", default=",".join(PARTS), type=lambda v: tuple(filter(None, v.split(","))),
                    help=f"the parts to run, comma-separated (default all: {','.join(PARTS)}; '' for none)")
    args = ap.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        ap.error(f"--parts: unknown {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    with BenchEnv(norec=True, parts=args.parts, baseline=args.baseline, python=args.python, bare=args.bare,
                  bare_record=args.bare, bare_record_mmap=args.bare, c_relays=args.bare) as env:
        targets = env.targets()
        pids = env.proxy_pids()
        order = [name for name in LABELS if name in targets and name in pids]
        if args.nice is not None:
            renice_all([pids[name] for name in order], args.nice)
        tps: dict[str, list[float]] = {name: [] for name in order}
        cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in order}
        idle: dict[str, list[float]] = {name: [] for name in order}
        pgbench = ["-n", "-S", "-M", args.mode, "-c", str(args.clients), "-j", "2", "-T", str(args.duration)]
        for i in range(args.repeat):
            for name in order:
                before = cpu_seconds(pids[name])
                all0, idle0 = machine_idle()
                rate = run_pgbench(targets[name], pgbench, timeout=args.duration * 5 + 60)
                all1, idle1 = machine_idle()
                tps[name].append(rate)
                cpu[name].append(cpu_per_transaction(pids[name], before, rate * args.duration)
                                 or (float("nan"), float("nan")))     # no transaction ran
                idle[name].append((idle1 - idle0) / max(1, all1 - all0))
                log(f"#{i + 1} {name:22} {rate:9.1f} tps  user {cpu[name][-1][0]:5.1f} us/tx  "
                    f"system {cpu[name][-1][1]:5.1f} us/tx  machine idle {idle[name][-1] * 100:4.1f}%")
    nice = "" if args.nice is None else f", every proxy at nice {args.nice}"
    print(f"select-only -M {args.mode} -c {args.clients}, {args.repeat} x {args.duration} s, interleaved{nice}\n")
    print(table(tps, cpu, idle))
    return 0


if __name__ == "__main__":
    sys.exit(main())

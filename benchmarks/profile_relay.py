"""Profile pgwarden under a pgbench workload with py-spy, and summarise where the time goes.

    pip install py-spy
    python -m benchmarks.profile_relay --workload select-only-prepared-c8 --duration 10
    python -m benchmarks.profile_relay --workload rows10k-c4 --out /tmp/prof

Starts the suite's environment (benchmarks/env.py, without PgBouncer), warms
up, runs the workload (a key of benchmarks/suite.py) against pgwarden and
samples the pgwarden process with ``py-spy record`` meanwhile.
Writes the raw collapsed stacks (``<out>/<workload>.txt``, for flamegraph.pl
or speedscope) and prints the functions with the most samples, by self time
and inclusive time.  py-spy samples from outside the process (no
instrumentation); each sample pauses pgwarden briefly (``--nonblocking``
does not, but its stacks can be torn and mis-attributed), so the TPS printed
is a little below an unprofiled run's.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.env import BenchEnv, log, pgbench_path
from benchmarks.suite import WORKLOADS, write_scripts

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if "/work/" in path:
        path = path.rsplit("/main/", 1)[-1]
    return f"{m.group('func')} ({path})"


def summarise(raw: Path, top: int = 25) -> str:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples", "", "self time:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_t.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", default="select-only-prepared-c8", choices=[w.key for w in WORKLOADS])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--no-record", action="store_true", help="pgwarden without session recording")
    ap.add_argument("--nonblocking", action="store_true",
                    help="sample without pausing pgwarden (less overhead, but stacks can be torn)")
    ap.add_argument("--native", action="store_true", help="include C frames (uvloop, libc) in the stacks")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pgwarden-profile"))
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    w = next(w for w in WORKLOADS if w.key == args.workload)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / f"{w.key}.txt"
    with BenchEnv(scale=args.scale, record=not args.no_record, pgbouncer=False) as env:
        target = env.targets(tls=w.tls)["pgwarden"]
        script = write_scripts(env.work, args.scale)
        subprocess.run([pgbench_path(), *w.pgbench_args(3, script)], env=target, check=True, capture_output=True)
        bench = subprocess.Popen([pgbench_path(), *w.pgbench_args(args.duration + 2, script)], env=target,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        log(f"sampling pgwarden (pid {env.pgwarden.pid}) for {args.duration} s under {w.key}")
        subprocess.run([spy, "record", "--pid", str(env.pgwarden.pid), "--duration", str(args.duration),
                        "--rate", str(args.rate), *(["--nonblocking"] if args.nonblocking else []),
                        *(["--native"] if args.native else []), "--format", "raw", "-o", str(raw)],
                       check=True, capture_output=True)
        stdout, _ = bench.communicate()
        tps = re.search(r"^tps = ([\d.]+)", stdout, re.M)
        log(f"pgbench {w.key} through pgwarden while sampled: {tps.group(1) if tps else '?'} tps")
    text = summarise(raw)
    (args.out / f"{w.key}.summary.txt").write_text(text)
    print(text)
    print(f"\nraw stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

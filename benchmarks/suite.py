"""What does pgwarden cost? pgbench through pgwarden, PgBouncer and a direct connection, in one run.

    python -m benchmarks.suite                 # or: ./dev bench
    python -m benchmarks.suite --duration 4 --repeat 3 --json out.json --markdown out.md --chart out.png
    python -m benchmarks.suite --only select-only-prepared --quick

Starts its own PostgreSQL, pgwarden (policy and recording on) and PgBouncer
(session mode; installed with apt-get when missing) -- see benchmarks/env.py --
then runs each workload on each path, interleaved (direct, PgBouncer,
pgwarden, direct, PgBouncer, pgwarden ...) and repeated, and prints the median
of each and the ratios pgwarden/direct and pgwarden/PgBouncer, with the
issue's targets; then, per select-only statement, the round trip a lone client
waits (-c 1) and what pgwarden adds to it over a direct connection and over
PgBouncer; then the CPU each proxy's process (and its workers) spent per
transaction, user and system, from /proc around each run: what a proxy host
pays for a transaction whatever else shares the machine.  These machines are
noisy: only ratios measured in the same run mean anything.  The default run
(4 s x 3 repeats) takes about 11 minutes.  ``--report RUN.json`` prints the
tables of a run saved with ``--json`` again, running nothing.

Workloads: select-only (-S) with -M simple, extended and prepared at -c 1, 8
and 32; the TPC-B-like default script at -c 8 (-M simple, pgbench's
default); the select-only statement ten times per pipeline at -c 8 (-M
extended, one Sync: a driver's batch; no target in the issue); a 10,000-row
result per query at -c 4 (-M prepared, reported as MB/s too); connection
churn (-C: a new connection per transaction, -S -c 8) without and with TLS;
1,000 idle sessions held open (proxy memory per session); then the
deadline-to-cut lag over 200 sessions (benchmarks/expiry_lag.py, its own
server).  Not run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.env import DB, BenchEnv, cpu_per_transaction, cpu_seconds, log, pgbench_path, renice_all, rss_kb

PATHS = ("direct", "pgbouncer", "pgwarden")
NOREC = "pgwarden-norec"
BARE = "bare-relay"
BARE_RECORD = "bare-relay-record"   # the bare relay writing one chained line per statement (--record)
C_RELAY = "c-relay"                 # --c-relay: the bare relay in C (benchmarks/c_relay.c)
C_RELAY_RECORD = "c-relay-record"   # ... writing the same line per statement
FLOORS = (BARE, BARE_RECORD, C_RELAY, C_RELAY_RECORD)


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    args: tuple[str, ...]
    clients: int
    tls: bool = False
    script: str | None = None       # a custom script's file name (ROWS_SQL, PIPELINE_SQL), see write_scripts
    target: tuple[str, float] | None = None   # ("pgbouncer" | "direct", minimum pgwarden/that ratio)
    norec: bool = False             # also measure pgwarden with recording off (--norec) and the bare relay
    bare: bool = True               # with norec: the bare relays too (their record is one line per ReadyForQuery,
                                    # which is one per statement only without pipelining)

    def pgbench_args(self, duration: int, scripts: Path | None) -> list[str]:
        """pgbench's arguments; ``scripts``: the directory write_scripts filled."""
        args = ["-n", *self.args, "-c", str(self.clients), "-j", str(min(self.clients, 2)), "-T", str(duration)]
        if self.script:
            args += ["-f", str(scripts / self.script)]
        return args


ROWS_SQL = "rows10k.sql"
PIPELINE_SQL = "pipeline10.sql"


def _workloads() -> list[Workload]:
    out = []
    for mode in ("prepared", "extended", "simple"):
        for c in (1, 8, 32):
            out.append(Workload(f"select-only-{mode}-c{c}", f"select-only -M {mode}", ("-S", "-M", mode), c,
                                target=("pgbouncer", 0.9 if c == 8 else 0.8), norec=c == 8))
    out.append(Workload("tpcb-c8", "TPC-B (default script, -M simple)", ("-M", "simple"), 8,
                        target=("pgbouncer", 0.9), norec=True))
    out.append(Workload("pipeline10-c8", "select-only, 10 per pipeline (-M extended), pipelines/s",
                        ("-M", "extended"), 8, script=PIPELINE_SQL, norec=True, bare=False))
    out.append(Workload("rows10k-c4", "10,000-row result, queries/s (-M prepared)", ("-M", "prepared"), 4,
                        script=ROWS_SQL, target=("pgbouncer", 1.2), norec=True))
    out.append(Workload("churn-c8", "connection churn -C (-S, no TLS)", ("-S", "-C", "-M", "simple"), 8,
                        target=("direct", 0.7)))
    out.append(Workload("churn-tls-c8", "connection churn -C (-S, TLS on every path)", ("-S", "-C", "-M", "simple"),
                        8, tls=True, target=("direct", 0.7)))
    return out


WORKLOADS = _workloads()
IDLE_TARGET_KB = 64


# --------------------------------------------------------------------------- pgbench


def run_pgbench(env: dict[str, str], args: list[str], timeout: float) -> float:
    out = subprocess.run([pgbench_path(), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n"
                           f"{out.stderr[-2000:]}")
    m = re.search(r"^tps = ([\d.]+)", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"no tps in pgbench output:\n{out.stdout}")
    return float(m.group(1))


def rows_script(path: Path, scale: int) -> Path:
    top = scale * 100_000 - 10_000
    path.write_text(f"\\set a random(0, {top})\n"
                    "SELECT aid, bid, abalance, filler FROM pgbench_accounts "
                    "WHERE aid > :a AND aid <= :a + 10000;\n")
    return path


def pipeline_script(path: Path, scale: int, n: int = 10) -> Path:
    """pgbench's select-only statement n times in one pipeline (one Sync): what a driver's batch,
    psycopg's pipeline mode or pgjdbc's executeBatch send, answered in one read."""
    path.write_text(f"\\set aid random(1, {scale * 100_000})\n\\startpipeline\n"
                    + "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n" * n + "\\endpipeline\n")
    return path


def write_scripts(directory: Path, scale: int) -> Path:
    """The custom scripts the workloads name, in ``directory``."""
    rows_script(directory / ROWS_SQL, scale)
    pipeline_script(directory / PIPELINE_SQL, scale)
    return directory


def result_bytes(env: BenchEnv, sql: str) -> int:
    """Bytes the server sends for ``sql`` (RowDescription ... CommandComplete), over the unix socket."""
    pg = env.pg
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(pg.socket_dir / f".s.PGSQL.{pg.port}"))
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0" + DB.encode() + b"\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)

    def read_until_ready() -> int:
        total = 0
        buf = b""
        while True:
            while len(buf) < 5:
                buf += sock.recv(65536)
            mtype, length = struct.unpack("!ci", buf[:5])
            while len(buf) < 1 + length:
                buf += sock.recv(65536)
            buf = buf[1 + length:]
            if mtype == b"Z":
                return total
            if mtype == b"E":
                raise RuntimeError("server error while measuring the result size")
            total += 1 + length

    read_until_ready()
    q = sql.encode() + b"\0"
    sock.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)
    n = read_until_ready()
    sock.close()
    return n


# --------------------------------------------------------------------------- idle sessions


async def _hold(n: int, target: dict[str, str], concurrency: int = 50):
    import asyncpg

    sem = asyncio.Semaphore(concurrency)
    conns = []

    async def one():
        async with sem:
            conns.append(await asyncpg.connect(host=target["PGHOST"], port=int(target["PGPORT"]),
                                               user=target["PGUSER"], password=target["PGPASSWORD"],
                                               database=DB, ssl=False, timeout=60))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def idle_sessions(env: BenchEnv, n: int) -> dict:
    """Open ``n`` sessions through pgwarden (then PgBouncer), idle; the server process's RSS per session."""
    out: dict = {"sessions": n}
    targets = env.targets()
    for name, proc in (("pgwarden", env.pgwarden), ("pgbouncer", env.bouncer)):
        if proc is None:
            continue

        async def measure():
            before = rss_kb(proc.pid)
            t0 = time.monotonic()
            conns = await _hold(n, targets[name])
            opened = time.monotonic() - t0
            await asyncio.sleep(1.0)
            after = rss_kb(proc.pid)
            ok = await conns[0].fetchval("SELECT 1") == 1
            await asyncio.gather(*(c.close() for c in conns))
            return before, after, opened, ok

        before, after, opened, ok = asyncio.run(measure())
        per = (after - before) / n
        out[name] = {"rss_before_kb": before, "rss_after_kb": after, "kb_per_session": round(per, 1),
                     "open_seconds": round(opened, 2), "still_serving": ok}
        log(f"idle sessions via {name}: {n} opened in {opened:.1f} s, RSS {before} -> {after} KiB, "
            f"{per:.1f} KiB/session")
        time.sleep(2)           # let the backends go away before the next path
    return out


# --------------------------------------------------------------------------- deadline-to-cut lag


def expiry_lag(sessions: int = 200, spread: float = 4) -> dict:
    """Run benchmarks/expiry_lag.py (its own PostgreSQL and pgwarden) and parse its percentiles."""
    script = Path(__file__).resolve().parent / "expiry_lag.py"
    out = subprocess.run([sys.executable, str(script), "--sessions", str(sessions), "--spread", str(spread)],
                         capture_output=True, text=True, timeout=600)
    result: dict = {"sessions": sessions, "spread_s": spread}
    m = re.search(r"proxy lag \(deadline -> cut\), ms: p50 ([\d.]+)\s+p95 ([\d.]+)\s+p99 ([\d.]+)\s+max ([\d.]+)",
                  out.stdout)
    if m:
        result.update(p50_ms=float(m.group(1)), p95_ms=float(m.group(2)), p99_ms=float(m.group(3)),
                      max_ms=float(m.group(4)))
        log(f"deadline-to-cut lag over {sessions} sessions: p99 {m.group(3)} ms")
    else:
        result["error"] = (out.stdout + out.stderr)[-1500:]
        log("expiry_lag.py gave no percentiles")
    return result


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    meta: dict = field(default_factory=dict)
    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # workload -> proxy path -> one [user, system] CPU µs per transaction for each run
    cpu: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    idle: dict = field(default_factory=dict)
    rows_bytes: int = 0
    expiry: dict = field(default_factory=dict)

    def median(self, key: str, path: str) -> float | None:
        vals = self.runs.get(key, {}).get(path)
        return statistics.median(vals) if vals else None


def run(args) -> Results:
    res = Results()
    selected = [w for w in WORKLOADS if not args.only or any(w.key.startswith(o) for o in args.only)]
    floors = 2 * int(args.bare) + 2 * int(args.c_relay)
    runs = sum(3 + w.norec * (int(args.norec) + floors * int(w.bare)) for w in selected) * args.repeat
    # measured on the 2-core machine: a pgbench run takes its duration and a little; setup, the idle
    # sessions and the lag run about 40 s each
    estimate = runs * (args.duration + 0.2) + (40 if args.idle else 0) + 40 + (40 if args.expiry else 0)
    log(f"{len(selected)} workloads, {runs} pgbench runs of {args.duration} s: about {estimate / 60:.0f} min")
    t_start = time.monotonic()
    with BenchEnv(scale=args.scale, max_connections=max(200, args.idle + 200), record=not args.no_record,
                  pgbouncer=not args.no_pgbouncer, install=not args.no_install, norec=args.norec,
                  bare=args.bare, bare_record=args.bare, c_relays=args.c_relay, workers=args.workers) as env:
        res.meta = {"versions": env.versions(), "duration_s": args.duration, "repeat": args.repeat,
                    "workers": args.workers,
                    "scale": args.scale, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "pgwarden": {"scope": "write", "policy": "on", "recording": env.recording, "tls": "offered",
                                 "upstream": "TCP 127.0.0.1, no TLS"},
                    "commands": {}}
        scripts = write_scripts(env.work, args.scale)
        res.rows_bytes = result_bytes(env, "SELECT aid, bid, abalance, filler FROM pgbench_accounts "
                                           "WHERE aid > 0 AND aid <= 10000")
        log(f"10,000-row result: {res.rows_bytes} bytes on the wire per query")
        log("warming up every path (select-only prepared c8, 2 s)")
        for name, tenv in env.targets().items():
            run_pgbench(tenv, ["-n", "-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", "2"], 60)
        pids = env.proxy_pids()
        if args.nice is not None:
            renice_all(pids.values(), args.nice)
            res.meta["nice"] = args.nice
        if args.idle:
            res.idle = idle_sessions(env, args.idle)
        for w in selected:
            targets = env.targets(tls=w.tls)
            if not w.norec or w.tls:
                targets.pop(NOREC, None)
            if not w.norec or w.tls or not w.bare:
                for floor in FLOORS:
                    targets.pop(floor, None)
            pg_args = w.pgbench_args(args.duration, scripts)
            res.meta["commands"][w.key] = "pgbench " + " ".join(
                a if not w.script or a != str(scripts / w.script) else w.script for a in pg_args)
            for rep in range(args.repeat):
                for name, tenv in targets.items():       # interleaved: noise hits every path alike
                    pid = pids.get(name)
                    before = cpu_seconds(pid) if pid else None
                    tps = run_pgbench(tenv, pg_args, timeout=args.duration * 4 + 120)
                    res.runs.setdefault(w.key, {}).setdefault(name, []).append(tps)
                    cpu = ""
                    per_tx = cpu_per_transaction(pid, before, tps * args.duration) if before else None
                    if per_tx is not None:
                        used = [round(x, 2) for x in per_tx]
                        res.cpu.setdefault(w.key, {}).setdefault(name, []).append(used)
                        cpu = f"  proxy CPU {used[0]:6.1f} + {used[1]:6.1f} us/tx"
                    log(f"{w.key:26} #{rep + 1} {name:9} {tps:10.1f} tps{cpu}")
    if args.expiry:
        res.expiry = expiry_lag()
    res.meta["elapsed_s"] = round(time.monotonic() - t_start)
    return res


# --------------------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "n/a" if x is None else format(x, spec)


def table(res: Results) -> str:
    rows = ["| workload | -c | direct | PgBouncer | pgwarden | pgwarden/direct | pgwarden/PgBouncer | target | met |",
            "|---|---|---|---|---|---|---|---|---|"]
    for w in WORKLOADS:
        if w.key not in res.runs:
            continue
        d, b, p = (res.median(w.key, n) for n in PATHS)
        rd, rb = _ratio(p, d), _ratio(p, b)
        met = ""
        goal = ""
        if w.target:
            against, minimum = w.target
            r = rb if against == "pgbouncer" else rd
            goal = f"≥ {minimum} of {'PgBouncer' if against == 'pgbouncer' else 'direct'}"
            met = "n/a" if r is None else ("yes" if r >= minimum else "**no**")
        rows.append(f"| {w.label} | {w.clients} | {_fmt(d)} | {_fmt(b)} | {_fmt(p)} | {_fmt(rd, '.2f')} | "
                    f"{_fmt(rb, '.2f')} | {goal} | {met} |")
        if w.script == ROWS_SQL and res.rows_bytes:
            mb = [None if x is None else x * res.rows_bytes / 1e6 for x in (d, b, p)]
            rows.append(f"| ↳ same, result bytes/s | {w.clients} | {_fmt(mb[0])} MB/s | {_fmt(mb[1])} MB/s | "
                        f"{_fmt(mb[2])} MB/s | | | | |")
    if res.idle:
        for name in ("pgwarden", "pgbouncer"):
            i = res.idle.get(name)
            if i:
                goal = f"< {IDLE_TARGET_KB} KB" if name == "pgwarden" else ""
                met = ("yes" if i["kb_per_session"] < IDLE_TARGET_KB else "**no**") if name == "pgwarden" else ""
                rows.append(f"| {res.idle['sessions']} idle sessions: {name} RSS per session | | | | "
                            f"{i['kb_per_session']:.1f} KiB | | | {goal} | {met} |")
    if res.expiry.get("p99_ms") is not None:
        e = res.expiry
        rows.append(f"| deadline-to-cut lag, {e['sessions']} sessions: p99 (p50 / max) | | | | "
                    f"{e['p99_ms']:.1f} ms ({e['p50_ms']:.1f} / {e['max_ms']:.1f}) | | | < 100 ms | "
                    f"{'yes' if e['p99_ms'] < 100 else '**no**'} |")
    return "\n".join(rows)


def norec_table(res: Results) -> str:
    """What each layer costs, where measured: a bare Python relay (no parsing), the same relay
    writing one hash-chained line per statement (the floor under any recording relay in Python),
    the same two in C (--c-relay: what a compiled relay would keep), pgwarden with recording off
    (policy on), pgwarden as run (recording on), each as a ratio to PgBouncer."""
    measured = [w for w in WORKLOADS if any(res.median(w.key, k) is not None for k in (*FLOORS, NOREC))]
    if not measured:
        return ""
    cols = [(k, label, short) for k, label, short in (
        (BARE, "bare Python relay", "bare"),
        (BARE_RECORD, "bare relay + a chained line per statement", "bare+line"),
        (C_RELAY, "bare C relay", "C"),
        (C_RELAY_RECORD, "C relay + a chained line per statement", "C+line"),
        (NOREC, "pgwarden, recording off", "off"),
        ("pgwarden", "pgwarden, recording on", "on")) if any(res.median(w.key, k) is not None for w in measured)]
    rows = ["| workload | -c | PgBouncer | " + " | ".join(label for _, label, _ in cols) + " | "
            + " | ".join(f"{short}/PgBouncer" for _, _, short in cols) + " |",
            "|---" * (3 + 2 * len(cols)) + "|"]
    for w in measured:
        vals = [res.median(w.key, k) for k, _, _ in cols]
        b = res.median(w.key, "pgbouncer")
        rows.append(f"| {w.label} | {w.clients} | {_fmt(b)} | " + " | ".join(_fmt(v) for v in vals) + " | "
                    + " | ".join(_fmt(_ratio(v, b), ".2f") for v in vals) + " |")
    return "\n".join(rows)


def _cpu_cost(res: Results, key: str, path: str) -> tuple[float, float, float] | None:
    """Medians of a proxy's CPU µs per transaction on one workload: (user + system, user, system)."""
    runs = res.cpu.get(key, {}).get(path)
    if not runs:
        return None
    return (statistics.median(u + s for u, s in runs), statistics.median(u for u, _ in runs),
            statistics.median(s for _, s in runs))


def cpu_table(res: Results) -> str:
    """What each proxy's process spent per transaction (user + system CPU, medians over the runs):
    what a proxy host pays, whatever else shares the machine, and the transactions one core would
    carry at that cost."""
    def cell(c: tuple[float, float, float] | None) -> str:
        return "n/a" if c is None else f"{c[0]:.1f} ({c[1]:.1f} + {c[2]:.1f})"

    measured = [w for w in WORKLOADS if res.cpu.get(w.key, {}).get("pgwarden")]
    if not measured:
        return ""
    norec = any(res.cpu.get(w.key, {}).get(NOREC) for w in measured)
    rows = ["| workload | -c | PgBouncer CPU µs/tx (user + system) | pgwarden CPU µs/tx (user + system) | "
            + ("pgwarden, recording off, CPU µs/tx | " if norec else "")
            + "CPU pgwarden/PgBouncer | transactions per CPU-second: PgBouncer / pgwarden |",
            "|---" * (6 + int(norec)) + "|"]
    for w in measured:
        b, p = _cpu_cost(res, w.key, "pgbouncer"), _cpu_cost(res, w.key, "pgwarden")
        per_core = " / ".join("n/a" if c is None or not c[0] else f"{1e6 / c[0]:,.0f}" for c in (b, p))
        rows.append(f"| {w.label} | {w.clients} | {cell(b)} | {cell(p)} | "
                    + (f"{cell(_cpu_cost(res, w.key, NOREC))} | " if norec else "")
                    + f"{_fmt(_ratio(p and p[0], b and b[0]), '.2f')} | {per_core} |")
    return "\n".join(rows)


def cost_table(res: Results) -> str:
    """The answer to "what does pgwarden cost me?" per select-only statement, one per transaction:
    the time a lone client waits for each answer (-c 1: pgbench's one connection sends the next
    statement when the last answer is in, so a round trip is 1/TPS), what pgwarden adds to it over
    a direct connection and over PgBouncer, and the proxy CPU each statement takes under load
    (-c 8, user + system, medians)."""
    rows = []
    for mode in ("prepared", "extended", "simple"):
        one, load = f"select-only-{mode}-c1", f"select-only-{mode}-c8"
        d, b, p = (1e6 / x if x else None for x in (res.median(one, n) for n in PATHS))
        cpu = [c and c[0] for c in (_cpu_cost(res, load, "pgbouncer"), _cpu_cost(res, load, "pgwarden"))]
        if p is None and cpu[1] is None:
            continue
        added = [None if p is None or x is None else p - x for x in (d, b)]
        rows.append(f"| -M {mode} | {_fmt(d)} | {_fmt(b)} | {_fmt(p)} | {_fmt(added[0], '+.0f')} | "
                    f"{_fmt(added[1], '+.0f')} | {_fmt(cpu[0], '.1f')} | {_fmt(cpu[1], '.1f')} |")
    if not rows:
        return ""
    return "\n".join(["| select-only statement | round trip at -c 1, µs: direct | PgBouncer | pgwarden | "
                      "pgwarden adds, µs: over direct | over PgBouncer | proxy CPU per statement at -c 8, µs: "
                      "PgBouncer | pgwarden |", "|---" * 8 + "|", *rows])


def report(res: Results) -> str:
    """Every table the run fills, in the order they are printed."""
    text = table(res)
    for extra in (cost_table(res), norec_table(res), cpu_table(res)):
        if extra:
            text += "\n\n" + extra
    return text


def meta_text(res: Results) -> str:
    v = res.meta.get("versions", {})
    lines = [f"- {k}: {val}" for k, val in v.items()]
    lines.append(f"- runs: {res.meta.get('repeat')} x {res.meta.get('duration_s')} s per workload and path, "
                 f"interleaved, median; pgbench scale {res.meta.get('scale')}; total {res.meta.get('elapsed_s')} s")
    if res.meta.get("nice") is not None:
        lines.append(f"- every proxy at nice {res.meta['nice']} (pgbench and the server at the default)")
    return "\n".join(lines)


def chart(res: Results, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install -e '.[bench]'): no chart")
        return False
    colors = {"direct": "#7f7f7f", "pgbouncer": "#1f77b4", "pgwarden": "#d62728"}
    sel = [w for w in WORKLOADS if w.key.startswith("select-only") and w.key in res.runs]
    others = [w for w in WORKLOADS if not w.key.startswith("select-only") and w.key in res.runs]
    fig, axes = plt.subplots(2, 1, figsize=(11, 8.5), gridspec_kw={"height_ratios": [3, 2]})
    ax = axes[0]
    width = 0.27
    for i, name in enumerate(PATHS):
        xs = [j + (i - 1) * width for j in range(len(sel))]
        ys = [res.median(w.key, name) or 0 for w in sel]
        ax.bar(xs, ys, width, label={"pgbouncer": "PgBouncer (session)"}.get(name, name), color=colors[name])
    ax.set_xticks(range(len(sel)))
    ax.set_xticklabels([f"{w.args[-1]}\n-c {w.clients}" for w in sel])
    ax.set_ylabel("TPS (median)")
    ax.set_title("pgbench -S (select-only): TPS by protocol mode and client count")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1]
    allw = sel + others
    labels = [w.key.replace("select-only-", "S ") for w in allw]
    series = [("pgwarden / direct", "pgwarden", "direct", colors["direct"]),
              ("pgwarden / PgBouncer", "pgwarden", "pgbouncer", colors["pgbouncer"]),
              ("pgwarden, recording off / PgBouncer", NOREC, "pgbouncer", "#ff9896"),
              ("bare Python relay / PgBouncer", BARE, "pgbouncer", "#2ca02c"),
              ("bare relay + a chained line per statement / PgBouncer", BARE_RECORD, "pgbouncer", "#98df8a"),
              ("C relay + a chained line per statement / PgBouncer", C_RELAY_RECORD, "pgbouncer", "#9467bd")]
    series = [(label, [_ratio(res.median(w.key, a), res.median(w.key, b)) or 0 for w in allw], color)
              for label, a, b, color in series]
    series = [x for x in series if any(x[1])]
    xs = range(len(allw))
    bw = 0.8 / max(1, len(series))
    for i, (label, ys, color) in enumerate(series):
        ax.bar([x + (i - (len(series) - 1) / 2) * bw for x in xs], ys, bw, label=label, color=color)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("ratio (same run)")
    ax.set_title("pgwarden relative to the other paths (higher is better)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=4, help="seconds per pgbench run (default 4)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per workload and path; the median is reported")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10: 1M accounts)")
    ap.add_argument("--idle", type=int, default=1000, help="idle sessions to hold open (0: skip)")
    ap.add_argument("--only", nargs="+", help="workload keys (or prefixes) to run: " +
                    ", ".join(w.key for w in WORKLOADS))
    ap.add_argument("--no-expiry", dest="expiry", action="store_false",
                    help="skip the deadline-to-cut lag run (benchmarks/expiry_lag.py)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s x 1, 100 idle sessions")
    ap.add_argument("--workers", type=int, default=1, help="pgwarden worker processes (serve --workers)")
    ap.add_argument("--no-pgbouncer", action="store_true")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install pgbouncer when missing")
    ap.add_argument("--no-record", action="store_true", help="pgwarden without session recording")
    ap.add_argument("--norec", action="store_true",
                    help="also run a pgwarden with recording off on the -c 8 workloads (what recording costs)")
    ap.add_argument("--no-bare", dest="bare", action="store_false",
                    help="skip the bare Python relay (benchmarks/bare_relay.py), alone and with --record, "
                         "measured on the -c 8 workloads")
    ap.add_argument("--c-relay", action="store_true",
                    help="also the bare relay in C (benchmarks/c_relay.c), alone and with --record, on the "
                         "workloads the bare Python relay runs (skipped where it does not build)")
    ap.add_argument("--nice", type=int, metavar="N",
                    help="run every proxy (PgBouncer, pgwarden and its workers, the relays) at this nice value, "
                         "all alike (below 0 needs root); the default leaves them at the suite's own")
    ap.add_argument("--json", type=Path, help="write all runs and metadata here")
    ap.add_argument("--markdown", type=Path, help="write the results table and metadata here")
    ap.add_argument("--chart", type=Path, help="write a PNG chart here (needs matplotlib)")
    ap.add_argument("--report", type=Path, metavar="RUN.json",
                    help="run nothing: print (and --markdown, --chart) the tables of a run --json saved")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.repeat = 2, 1
        args.idle = min(args.idle, 100)
    if args.report:
        res = Results(**json.loads(args.report.read_text()))
    else:
        res = run(args)
    text = report(res)
    print(text)
    print()
    print(meta_text(res))
    for key, cmd in res.meta.get("commands", {}).items():
        print(f"  {key}: {cmd}")
    if args.json:
        args.json.write_text(json.dumps(asdict(res), indent=1))
    if args.markdown:
        args.markdown.write_text(f"{meta_text(res)}\n\n{text}\n")
    if args.chart:
        chart(res, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())

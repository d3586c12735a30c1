"""pgbench through pgwarden vs a direct connection vs PgBouncer, in one run.

Starts a throwaway PostgreSQL (proxy.embedded), a `pgwarden serve` process and,
when the `pgbouncer` binary is installed (`apt-get install -y pgbouncer`), a
PgBouncer in session mode; initialises pgbench tables; then runs every
workload against every target, interleaved and repeated, and prints median
TPS and the ratios pgwarden/direct and pgwarden/PgBouncer. These machines
are noisy: only ratios measured in the same run mean anything.

    python benchmarks/pgbench_compare.py [--duration 10] [--repeat 3] [--clients 8] [--markdown out.md]

Not run by CI (speed is measured here, never asserted in tests).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy.tokens import mint                                  # noqa: E402
from proxy.demo import write_config                             # noqa: E402
from proxy.embedded import EmbeddedPostgres, create_scope_roles  # noqa: E402
from proxy.keys import generate_keypair, load_private_key       # noqa: E402

WORKLOADS = {
    "select-only prepared": ["-S", "-M", "prepared"],
    "select-only simple": ["-S", "-M", "simple"],
    "select-only extended": ["-S", "-M", "extended"],
    "tpc-b prepared": ["-M", "prepared"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start_pgbouncer(work: Path, pg_port: int, role: str, password: str) -> tuple[subprocess.Popen, int] | None:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        return None
    port = free_port()
    d = work / "pgbouncer"
    d.mkdir()
    ini = d / "pgbouncer.ini"
    ini.write_text(f"""[databases]
appdb = host=127.0.0.1 port={pg_port} dbname=appdb user={role} password={password}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
auth_type = any
pool_mode = session
max_client_conn = 2000
default_pool_size = 100
unix_socket_dir =
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
""")
    cmd = [exe, str(ini)]
    if os.geteuid() == 0:                  # pgbouncer refuses to run as root
        work.chmod(0o755)
        shutil.chown(d, "postgres")
        ini.chmod(0o644)
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
    except RuntimeError:
        log = d / "pgbouncer.log"
        raise RuntimeError(f"pgbouncer did not start: {log.read_text() if log.exists() else 'no log'}") from None
    return proc, port


def pgbench(env: dict, args: list[str]) -> float:
    out = subprocess.run(["pgbench", "-n", *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    m = re.search(r"tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)", out.stdout)
    if not m:
        raise RuntimeError(f"no tps in pgbench output:\n{out.stdout}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per (workload, target); the median is reported")
    ap.add_argument("--clients", type=int, nargs="+", default=[8])
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--markdown", help="append a markdown table of the results to this file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
    pg = EmbeddedPostgres(max_connections=500).start()
    procs: list[subprocess.Popen] = []
    try:
        roles = create_scope_roles(pg, "appdb")
        role, password = roles["write"]
        init_env = dict(os.environ, PGPASSWORD=pg.superuser_password)
        subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(pg.port),
                        "-U", "postgres", "appdb"], env=init_env, check=True, capture_output=True)
        kp = generate_keypair(work / "keys", "bench")
        port = free_port()
        cfg = write_config(work, pg_host=pg.host, pg_port=pg.port, scope_roles=roles, listen_port=port,
                           kid=kp.kid, private_path=kp.private_path, public_path=kp.public_path)
        proxy = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--log-level",
                                  "warning", "--log-format", "json"], stdout=subprocess.DEVNULL,
                                 stderr=open(work / "pgwarden.log", "wb"))
        procs.append(proxy)
        wait_port(port)
        token = mint(load_private_key(kp.private_path), kid=kp.kid, sub="alice", db="appdb", scope="write",
                     audience="pgwarden", now=time.time(), ttl=24 * 3600, reason="benchmark")
        base = dict(os.environ, PGDATABASE="appdb", PGHOST="127.0.0.1", PGSSLMODE="disable")
        targets = {
            "direct": dict(base, PGPORT=str(pg.port), PGUSER=role, PGPASSWORD=password),
            "pgwarden": dict(base, PGPORT=str(port), PGUSER="alice", PGPASSWORD=token),
        }
        bouncer = start_pgbouncer(work, pg.port, role, password)
        if bouncer:
            procs.append(bouncer[0])
            targets["pgbouncer"] = dict(base, PGPORT=str(bouncer[1]), PGUSER=role, PGPASSWORD="x")
        else:
            print("pgbouncer not installed: comparing with a direct connection only", file=sys.stderr)

        results: dict[tuple[str, int, str], list[float]] = {}
        for workload in args.workloads:
            for c in args.clients:
                for _ in range(args.repeat):
                    for name, env in targets.items():        # interleaved: noise hits every target alike
                        tps = pgbench(env, [*WORKLOADS[workload], "-c", str(c), "-j", str(min(c, 2)),
                                            "-T", str(args.duration)])
                        results.setdefault((workload, c, name), []).append(tps)
                        print(f"{workload:22} c{c:<3} {name:9} {tps:10.0f} tps", file=sys.stderr)

        rows = []
        header = "| workload | clients | direct TPS | PgBouncer TPS | pgwarden TPS | pgwarden/direct | pgwarden/PgBouncer |"
        rows.append(header)
        rows.append("|" + "---|" * 7)
        for workload in args.workloads:
            for c in args.clients:
                med = {n: statistics.median(results[(workload, c, n)]) for n in targets}
                pb = med.get("pgbouncer")
                rows.append(f"| {workload} | {c} | {med['direct']:.0f} | {pb:.0f} | " if pb else
                            f"| {workload} | {c} | {med['direct']:.0f} | n/a | ")
                rows[-1] += (f"{med['pgwarden']:.0f} | {med['pgwarden'] / med['direct']:.2f} | "
                             + (f"{med['pgwarden'] / pb:.2f} |" if pb else "n/a |"))
        table = "\n".join(rows)
        pyver = platform.python_version()
        meta = (f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {pyver}, "
                f"{subprocess.run(['pgbench', '--version'], capture_output=True, text=True).stdout.strip()}; "
                f"{args.repeat} runs of {args.duration} s each, median; scale {args.scale}; "
                f"client, proxy and server on one machine.")
        print(table)
        print(meta)
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write(f"\n{meta}\n\n{table}\n")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

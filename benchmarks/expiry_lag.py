"""Deadline-to-cut lag: how late pgwarden ends sessions whose grant expires.

Opens N sessions through a real `pgwarden serve` (default 200) with expiries
staggered over a few seconds; half of them are running `pg_sleep(60)` at their
deadline, half are idle. pgwarden logs each cut with `lag_ms` (cut time minus
the deadline); this script collects those and prints p50/p95/p99/max, plus
how long after its deadline each client saw its connection end.

    python benchmarks/expiry_lag.py [--sessions 200] [--spread 4]

Not run by CI. Target (issue 5): p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg                                                   # noqa: E402

from policy.tokens import mint                                   # noqa: E402
from proxy.demo import write_config                              # noqa: E402
from proxy.embedded import EmbeddedPostgres, create_scope_roles  # noqa: E402
from proxy.keys import generate_keypair, load_private_key        # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def session(port: int, token: str, deadline: float, busy: bool) -> float | None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", password=token, database="appdb",
                                 ssl=False)
    try:
        if busy:
            await conn.fetchval("select pg_sleep(60)")
        else:
            await asyncio.sleep(max(0.0, deadline - time.time()) + 1.0)
            await conn.fetchval("select 1")
    except (asyncpg.PostgresError, ConnectionError, OSError, asyncpg.InterfaceError):
        # Only a busy client learns of the cut at once; an idle one at its next statement.
        return time.time() - deadline if busy else None
    finally:
        conn.terminate()
    return None


async def run(port: int, private, kid: str, n: int, spread: float, lead: float) -> list[float | None]:
    start = time.time() + lead
    tasks = []
    for i in range(n):
        deadline = start + spread * i / n
        token = mint(private, kid=kid, sub="alice", db="appdb", scope="read", audience="pgwarden",
                     now=time.time(), ttl=deadline - time.time(), reason="expiry benchmark")
        tasks.append(asyncio.create_task(session(port, token, deadline, busy=i % 2 == 0)))
    return await asyncio.gather(*tasks)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--spread", type=float, default=4.0, help="seconds over which the deadlines are spread")
    ap.add_argument("--lead", type=float, default=8.0, help="seconds before the first deadline (time to connect)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pgwarden-lag-"))
    pg = EmbeddedPostgres(max_connections=args.sessions + 50).start()
    proxy = None
    try:
        roles = create_scope_roles(pg, "appdb")
        kp = generate_keypair(work / "keys", "lag")
        port = free_port()
        cfg = write_config(work, pg_host=pg.host, pg_port=pg.port, scope_roles=roles, listen_port=port, kid=kp.kid,
                           private_path=kp.private_path, public_path=kp.public_path,
                           extra_server={"expiry_warnings": [600]})
        log_path = work / "pgwarden.log"
        proxy = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--log-format", "json"],
                                 stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        client_lags = asyncio.run(run(port, load_private_key(kp.private_path), kp.kid, args.sessions, args.spread,
                                      args.lead))
        time.sleep(0.5)
        lags = []
        for line in log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "session_cut" and rec.get("reason") == "expired":
                lags.append(rec["lag_ms"])
        seen = [1000 * x for x in client_lags if x is not None]
        print(f"sessions: {args.sessions} (half busy in pg_sleep, half idle), deadlines spread over {args.spread} s")
        print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"cuts logged: {len(lags)}")
        if lags:
            print(f"proxy lag (deadline -> cut), ms: p50 {statistics.median(lags):.1f}  p95 {pct(lags, 95):.1f}  "
                  f"p99 {pct(lags, 99):.1f}  max {max(lags):.1f}")
        if seen:
            print(f"busy clients saw their statement end, ms after deadline: p50 {statistics.median(seen):.1f}  "
                  f"p99 {pct(seen, 99):.1f}  max {max(seen):.1f}")
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

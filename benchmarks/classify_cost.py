"""Classification cost: a cold parse and classify against the cached paths.

    python benchmarks/classify_cost.py [--repeat N] [--quick]

For each statement (what pgbench, psql's \\d and pg_dump send, plus a long IN
list and a deep expression) it times, in microseconds per call (median of
``--repeat`` batches):

    parse     pglast alone (``policy.sql.parse.parse``)
    cold      ``classify()``: parse, walk, rules, catalog look-ups (what a new text costs)
    cached    ``ClassificationCache.get`` of the same text (exact-text hit)
    masked    the same statement with different literal values (masked-literal hit),
              where the class cannot depend on a literal; "-" where it can
    verdict   ``Judge`` (the proxy's adapter) on an exact repeat: the relay's real
              cost for a statement it has seen (a prepared statement's Parse, psql's
              \\d queries, -M extended's re-sent Parse)

and prints the ratio cold / verdict. Long text is classified on a big-stack
thread, as the proxy does (proxy.net.gate). Pure: no server needed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from policy.cache import ClassificationCache  # noqa: E402
from policy.sql.classify import classify  # noqa: E402
from policy.sql.parse import parse  # noqa: E402
from proxy.session.judge import Judge  # noqa: E402

PSQL_DT = (
    "SELECT n.nspname as \"Schema\",\n  c.relname as \"Name\",\n  CASE c.relkind WHEN 'r' THEN 'table' "
    "WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' "
    "WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' "
    "WHEN 'I' THEN 'partitioned index' END as \"Type\",\n  pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\"\n"
    "FROM pg_catalog.pg_class c\n     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n"
    "     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam\nWHERE c.relkind IN ('r','p','')\n"
    "      AND n.nspname <> 'pg_catalog'\n      AND n.nspname !~ '^pg_toast'\n"
    "      AND n.nspname <> 'information_schema'\n  AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 1,2;")

PG_DUMP_TABLES = (
    "SELECT c.tableoid, c.oid, c.relname, c.relnamespace, c.relkind, c.reltype, c.relowner, c.relchecks, "
    "c.relhasindex, c.relhasrules, c.relpages, c.relhastriggers, c.relpersistence, c.reloftype, c.relacl, "
    "acldefault(CASE WHEN c.relkind = 'S' THEN 's'::\"char\" ELSE 'r'::\"char\" END, c.relowner) AS acldefault, "
    "CASE WHEN c.relkind = 'f' THEN (SELECT ftserver FROM pg_catalog.pg_foreign_table WHERE ftrelid = c.oid) "
    "ELSE 0 END AS foreignserver, c.relfrozenxid, tc.relfrozenxid AS tfrozenxid, tc.oid AS toid, "
    "tc.relpages AS toastpages, tc.reloptions AS toast_reloptions, d.refobjid AS owning_tab, "
    "d.refobjsubid AS owning_col, tsp.spcname AS reltablespace, "
    "array_remove(array_remove(c.reloptions,'check_option=local'),'check_option=cascaded') AS reloptions, "
    "CASE WHEN 'check_option=local' = ANY (c.reloptions) THEN 'LOCAL'::text "
    "WHEN 'check_option=cascaded' = ANY (c.reloptions) THEN 'CASCADED'::text ELSE NULL END AS checkoption, "
    "am.amname, (d.deptype = 'i') IS TRUE AS is_identity_sequence, c.relhasoids, c.relrowsecurity, "
    "c.relforcerowsecurity, c.relminmxid, tc.relminmxid AS tminmxid, c.relispartition AS ispartition "
    "FROM pg_class c LEFT JOIN pg_depend d ON (c.relkind = 'S' AND d.classid = 'pg_class'::regclass "
    "AND d.objid = c.oid AND d.objsubid = 0 AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) "
    "LEFT JOIN pg_tablespace tsp ON (tsp.oid = c.reltablespace) LEFT JOIN pg_am am ON (c.relam = am.oid) "
    "LEFT JOIN pg_class tc ON (c.reltoastrelid = tc.oid AND c.relkind <> 'p') "
    "WHERE c.relkind IN ('r', 'S', 'v', 'c', 'm', 'f', 'p') ORDER BY c.oid")

# name -> (text, the same statement with other literal values or None)
STATEMENTS = {
    "pgbench select (prepared)": ("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", None),
    "pgbench select (simple)": ("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
                                "SELECT abalance FROM pgbench_accounts WHERE aid = 7;"),
    "pgbench update (simple)": ("UPDATE pgbench_accounts SET abalance = abalance + -4077 WHERE aid = 48213;",
                                "UPDATE pgbench_accounts SET abalance = abalance + -12 WHERE aid = 9;"),
    "pgbench insert (simple)": ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                                "VALUES (3, 1, 48213, -4077, CURRENT_TIMESTAMP);",
                                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                                "VALUES (7, 1, 11, -5, CURRENT_TIMESTAMP);"),
    "BEGIN": ("BEGIN;", None),
    "set_config (literal-dependent)": ("SELECT set_config('work_mem', '8MB', false)",
                                       "SELECT set_config('role', 'admin', false)"),
    "psql \\dt": (PSQL_DT, None),
    "pg_dump getTables": (PG_DUMP_TABLES, None),
    "IN list, 1,000 items": ("SELECT * FROM t WHERE id IN (" + ",".join(map(str, range(1000))) + ")", None),
    "1+1+... 5,000 terms": ("SELECT " + "+".join(["1"] * 5000), None),
}


def per_call_us(fn, repeat: int, number: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return statistics.median(samples) * 1e6


def measure(repeat: int, quick: bool) -> list[tuple]:
    rows = []
    for name, (text, variant) in STATEMENTS.items():
        n_cold = 3 if len(text) > 4096 else (20 if quick else 200)
        n_hot = 200 if quick else 20000
        parse_us = per_call_us(lambda: parse(text, max_length=1 << 20), repeat, n_cold)
        cold_us = per_call_us(lambda: classify(text, max_length=1 << 20), repeat, n_cold)
        cache = ClassificationCache(max_text_length=1 << 20)
        classified = classify(text, max_length=1 << 20)
        cache.put(text, classified)
        cached_us = per_call_us(lambda: cache.get(text), repeat, n_hot)
        masked_us = None
        if variant is not None:
            hit = cache.get(variant)
            if hit is not None:
                masked_us = per_call_us(lambda: cache.get(variant), repeat, n_hot)
        judge = Judge(max_length=1 << 20)
        judge(text, "write", {})
        verdict_us = per_call_us(lambda: judge(text, "write", {}), repeat, n_hot)
        rows.append((name, len(text), parse_us, cold_us, cached_us, masked_us, verdict_us,
                     classified.statements[0].statement_class.value if classified.statements else "-"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="batches per measurement (median is reported)")
    ap.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    args = ap.parse_args(argv)
    result: dict = {}

    def run() -> None:
        result["rows"] = measure(args.repeat, args.quick)

    old = threading.stack_size()
    threading.stack_size(512 << 20)              # as proxy.net.gate's worker: deep text is parsed safely
    try:
        th = threading.Thread(target=run)
        th.start()
    finally:
        threading.stack_size(old)
    th.join()

    def f(v):
        return "-" if v is None else (f"{v:.1f}" if v < 100 else f"{v:.0f}")

    print("| statement | chars | class | parse µs | cold classify µs | cache hit µs | masked hit µs "
          "| verdict (exact repeat) µs | cold / verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, p, cold, cached, masked, verdict, cls in result["rows"]:
        print(f"| {name} | {n} | {cls} | {f(p)} | {f(cold)} | {f(cached)} | {f(masked)} | {f(verdict)} "
              f"| {cold / verdict:.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

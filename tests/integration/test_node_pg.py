"""node-postgres (`pg` on npm, a pure-JavaScript protocol implementation) works through pgwarden.

A small script connects with a token as the password and prints one JSON object the test
asserts on. It proves, over a plain and a TLS connection:
- login and the scope's upstream role;
- parameterised queries (extended protocol) and a named prepared statement reused;
- BEGIN/ROLLBACK leaves nothing, BEGIN/COMMIT keeps the row;
- a server error carries its real SQLSTATE and the client stays usable;
- cancelling a running ``pg_sleep(30)`` (node-pg's ``Client#cancel``, a CancelRequest on a new
  connection to the proxy) ends it with SQLSTATE 57014 within seconds, and the session is
  usable afterwards.

Skipped when node/npm are missing or ``npm install pg@8`` fails (offline machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

pytestmark = pytest.mark.integration

NODE, NPM = shutil.which("node"), shutil.which("npm")

SCRIPT = r"""
const pg = require('pg');

const cfg = {
  host: process.env.PGW_HOST, port: Number(process.env.PGW_PORT), user: 'alice',
  password: process.env.PGW_TOKEN, database: 'appdb',
  ssl: process.env.PGW_SSL === '1' ? { rejectUnauthorized: false } : false,
  connectionTimeoutMillis: 20000,
};
const table = process.env.PGW_TABLE;

async function main() {
  const out = {};
  const client = new pg.Client(cfg);
  await client.connect();
  try {
    out.current_user = (await client.query('select current_user as u')).rows[0].u;
    out.ssl = (await client.query("select 1 as one")).rows[0].one === 1 && !!client.connection.stream.encrypted;

    const r = await client.query('select $1::int + $2::int as sum, $3::text as t', [40, 2, 'héllo']);
    out.param = r.rows[0];
    const many = await client.query('select g from generate_series(1, $1::int) g', [1000]);
    out.many = many.rowCount;

    const named = [];
    for (let i = 0; i < 5; i++) {
      const res = await client.query({ name: 'pgw_probe', text: 'select $1::int * 3 as v', values: [i] });
      named.push(res.rows[0].v);
    }
    out.named = named;
    out.named_on_server = Number((await client.query(
      "select count(*) as n from pg_prepared_statements where name = 'pgw_probe'")).rows[0].n);

    await client.query('BEGIN');
    await client.query(`insert into ${table} (id, name) values ($1, $2)`, [1, 'rolled back']);
    await client.query('ROLLBACK');
    await client.query('BEGIN');
    await client.query(`insert into ${table} (id, name) values ($1, $2)`, [2, 'committed']);
    await client.query('COMMIT');
    out.rows = (await client.query(`select id, name from ${table} order by id`)).rows;

    try {
      await client.query(`insert into ${table} (id, name) values (2, 'dup')`);
      out.duplicate = 'accepted';
    } catch (e) {
      out.duplicate = e.code;
      out.duplicate_constraint = e.constraint;
    }
    out.after_error = (await client.query("select 'usable' as s")).rows[0].s;

    // Cancel a running statement.
    const q = new pg.Query('select pg_sleep(30)');
    const started = Date.now();
    const done = new Promise((resolve) => {
      q.on('error', (e) => resolve({ code: e.code, message: e.message }));
      q.on('end', () => resolve({ code: null, message: 'completed' }));
    });
    client.query(q);
    await new Promise((res) => setTimeout(res, 1000));
    new pg.Client(cfg).cancel(client, q);
    out.cancel = await done;
    out.cancel_seconds = (Date.now() - started) / 1000;
    out.after_cancel = (await client.query("select 'usable again' as s")).rows[0].s;
  } finally {
    await client.end();
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.fixture(scope="session")
def node_pg_dir(tmp_path_factory):
    if NODE is None or NPM is None:
        pytest.skip("node/npm not installed")
    d = tmp_path_factory.mktemp("node_pg")
    try:
        proc = subprocess.run([NPM, "install", "--no-audit", "--no-fund", "--loglevel=error", "pg@8"],
                              cwd=d, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install pg@8 timed out (offline?)")
    if proc.returncode != 0 or not (d / "node_modules" / "pg").is_dir():
        pytest.skip(f"npm install pg@8 failed (offline?): {proc.stderr.strip()[-500:]}")
    (d / "probe.js").write_text(SCRIPT)
    return d


@pytest.fixture
def table(admin):
    name = f"node_{uuid.uuid4().hex[:12]}"
    admin(f"create table public.{name} (id int primary key, name text)")
    yield name
    admin(f"drop table if exists public.{name}")


@pytest.mark.parametrize("ssl", [False, True], ids=["plain", "tls"])
def test_node_pg_through_proxy(proxy, node_pg_dir, table, admin, ssl):
    env = dict(os.environ, PGW_HOST=proxy.host, PGW_PORT=str(proxy.port), PGW_TOKEN=proxy.token("write"),
               PGW_TABLE=table, PGW_SSL="1" if ssl else "0")
    proc = subprocess.run([NODE, "probe.js"], cwd=node_pg_dir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"node exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    assert out["current_user"] == "pgw_write"
    assert out["ssl"] is ssl
    assert out["param"] == {"sum": 42, "t": "héllo"}
    assert out["many"] == 1000
    assert out["named"] == [0, 3, 6, 9, 12]
    assert out["named_on_server"] == 1
    assert out["rows"] == [{"id": 2, "name": "committed"}]
    assert out["duplicate"] == "23505"
    assert out["duplicate_constraint"] == f"{table}_pkey"
    assert out["after_error"] == "usable"
    assert out["cancel"] == {"code": "57014", "message": "canceling statement due to user request"}
    assert out["cancel_seconds"] < 15
    assert out["after_cancel"] == "usable again"
    assert admin(f"select id, name from {table}") == [(2, "committed")]

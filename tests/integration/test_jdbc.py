"""pgjdbc (the PostgreSQL JDBC driver) works through pgwarden, with and without TLS.

A small Java program, compiled by the test, connects as user alice with a token as the password
and prints ``key=value`` lines the test asserts on. It proves:
- login with cleartext-password auth and the scope's upstream role;
- a PreparedStatement run 10 times: pgjdbc switches to a named server-side statement after
  ``prepareThreshold`` (5) uses, which shows up in pg_prepared_statements, and every
  execution returns the right value;
- a JDBC batch insert (pgjdbc's pipelined Parse/Bind/Execute ... Sync);
- a transaction with rollback and one with commit, on a setAutoCommit(false) connection;
- a server error (unique violation) carries SQLSTATE 23505 and the connection stays usable;
- ``Connection.isValid(2)``.
Both ``sslmode=disable`` and ``sslmode=require`` are exercised; the proxy's ``session_start``
log line for the token's grant id confirms TLS was used exactly when it was asked for.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

JAR = Path("/root/.m2/repository/org/postgresql/postgresql/42.7.13/postgresql-42.7.13.jar")
JAVA, JAVAC = shutil.which("java"), shutil.which("javac")

PROGRAM = r"""
import java.sql.*;
import java.util.Properties;

public class PgwardenJdbc {
    static void out(String k, Object v) { System.out.println(k + "=" + v); }

    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2], table = args[3];
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        try (Connection c = DriverManager.getConnection(url, p)) {
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("select current_user, current_database(), version()")) {
                rs.next();
                out("current_user", rs.getString(1));
                out("database", rs.getString(2));
                out("server_is_pg", rs.getString(3).startsWith("PostgreSQL"));
            }

            // PreparedStatement x10: server-side prepared after prepareThreshold (5) uses.
            StringBuilder results = new StringBuilder();
            try (PreparedStatement ps = c.prepareStatement("select ?::int * 7 + 0 as pgwarden_jdbc_probe")) {
                for (int i = 1; i <= 10; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        results.append(i == 1 ? "" : ",").append(rs.getInt(1));
                    }
                }
                out("server_prepared", ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare());
            }
            out("prepared_results", results);
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery(
                     "select count(*) from pg_prepared_statements where statement like '%pgwarden_jdbc_probe%'")) {
                rs.next();
                out("named_statements", rs.getInt(1));
            }

            // Batch insert.
            try (PreparedStatement ps = c.prepareStatement("insert into " + table + " (id, name) values (?, ?)")) {
                for (int i = 1; i <= 100; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "batch-" + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                int sum = 0;
                for (int n : counts) sum += n;
                out("batch_updates", counts.length + ":" + sum);
            }

            // Transactions.
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("insert into " + table + " (id, name) values (1001, 'rolled back')");
                c.rollback();
                s.executeUpdate("insert into " + table + " (id, name) values (1002, 'committed')");
                c.commit();
                try {
                    s.executeUpdate("insert into " + table + " (id, name) values (1, 'duplicate')");
                    out("duplicate", "accepted");
                } catch (SQLException e) {
                    out("duplicate_sqlstate", e.getSQLState());
                    c.rollback();
                }
                try (ResultSet rs = s.executeQuery("select count(*) from " + table + " where id > 1000")) {
                    rs.next();
                    out("rows_over_1000", rs.getInt(1));
                }
                c.commit();
            }
            c.setAutoCommit(true);
            out("valid", c.isValid(2));
        }
    }
}
"""


@pytest.fixture(scope="module")
def jdbc_program(tmp_path_factory) -> Path:
    if JAVA is None or JAVAC is None:
        pytest.skip("java/javac not installed")
    if not JAR.exists():
        pytest.skip(f"pgjdbc jar not found at {JAR}")
    d = tmp_path_factory.mktemp("jdbc")
    (d / "PgwardenJdbc.java").write_text(PROGRAM)
    proc = subprocess.run([JAVAC, "-cp", str(JAR), "-d", str(d), str(d / "PgwardenJdbc.java")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture
def table(admin):
    name = f"jdbc_{uuid.uuid4().hex[:12]}"
    admin(f"create table public.{name} (id int primary key, name text)")
    yield name
    admin(f"drop table if exists public.{name}")


def run_java(classes: Path, url: str, user: str, password: str, table: str) -> dict[str, str]:
    proc = subprocess.run([JAVA, "-cp", f"{classes}:{JAR}", "PgwardenJdbc", url, user, password, table],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"java exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_pgjdbc_through_proxy(proxy, jdbc_program, table, admin, sslmode):
    url = f"jdbc:postgresql://{proxy.host}:{proxy.port}/appdb?sslmode={sslmode}&connectTimeout=20"
    jti = uuid.uuid4().hex
    res = run_java(jdbc_program, url, "alice", proxy.token("write", sub="alice", jti=jti), table)

    assert res["current_user"] == "pgw_write"
    assert res["database"] == "appdb"
    assert res["server_is_pg"] == "true"
    assert res["prepared_results"] == ",".join(str(i * 7) for i in range(1, 11))
    assert res["server_prepared"] == "true"
    assert int(res["named_statements"]) == 1
    assert res["batch_updates"] == "100:100"
    assert res["duplicate_sqlstate"] == "23505"
    assert res["rows_over_1000"] == "1"
    assert res["valid"] == "true"
    assert admin(f"select count(*) from {table} where id <= 100") == [(100,)]
    assert admin(f"select id, name from {table} where id > 1000") == [(1002, "committed")]
    # The proxy saw the session encrypted exactly when pgjdbc was asked for TLS (no silent fallback).
    starts = [json.loads(line) for line in proxy.log().splitlines()
              if jti in line and '"session_start"' in line]
    assert [s["tls"] for s in starts] == [sslmode == "require"]

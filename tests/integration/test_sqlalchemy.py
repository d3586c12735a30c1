"""SQLAlchemy through pgwarden: an application whose DSN points at the proxy.

SQLAlchemy 2 over the two drivers pgwarden's users run it with, psycopg 3 and asyncpg
(prepared statements over the extended protocol), the token as the password:

- the dialect's first connect (server version, current schema, standard_conforming_strings,
  type lookups) passes under every scope;
- the ORM's unit of work (INSERT ... RETURNING, UPDATE, DELETE in one transaction) under the
  write scope, its results the server's;
- the Inspector, which Alembic's autogenerate runs (tables, columns, keys, indexes, constraints,
  comments, views, sequences), reflects under the read scope exactly what a direct connection
  reflects;
- a statement the scope denies raises the DBAPI's ProgrammingError with SQLSTATE 42501 and
  pgwarden's reason; after a rollback the same pooled connection serves the next request;
- ``metadata.create_all`` (what a migration runs) needs the ddl scope.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from .conftest import DB, USER

pytestmark = pytest.mark.integration


def proxied(proxy, scope: str, driver: str = "psycopg"):
    """The URL an application is given: pgwarden's host and port, the token as the password."""
    return sa.URL.create(f"postgresql+{driver}", username=USER, password=proxy.token(scope), host=proxy.host,
                         port=proxy.port, database=DB)


def direct(pg):
    return sa.make_url(pg.dsn(DB)).set(drivername="postgresql+psycopg")


@pytest.fixture
def schema(admin):
    """Tables an application would have: a parent, a child with a foreign key, a check, a unique
    constraint, an index, comments, a view and a sequence; dropped afterwards."""
    s = f"sqla_{uuid.uuid4().hex[:10]}"
    admin(f"""
        create schema {s};
        create table {s}.team (id serial primary key, name text not null unique);
        create table {s}.member (
            id bigserial primary key,
            team_id int not null references {s}.team (id) on delete cascade,
            email varchar(200) not null,
            score numeric(10, 2) default 0 check (score >= 0),
            joined timestamptz not null default now(),
            constraint member_email_unique unique (team_id, email));
        create index member_joined on {s}.member (joined desc);
        comment on table {s}.member is 'people in teams';
        comment on column {s}.member.email is 'where to write';
        create view {s}.big_teams as select team_id, count(*) from {s}.member group by team_id;
        create sequence {s}.ticket_seq;
        grant usage on schema {s} to public;
    """)
    yield s
    admin(f"drop schema {s} cascade")


def mapped(s: str):
    """ORM classes for the schema's two tables (a fresh registry each time)."""
    class Base(orm.DeclarativeBase):
        pass

    class Team(Base):
        __tablename__ = "team"
        __table_args__ = {"schema": s}
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str]
        members: orm.Mapped[list["Member"]] = orm.relationship(back_populates="team")

    class Member(Base):
        __tablename__ = "member"
        __table_args__ = {"schema": s}
        id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, primary_key=True)
        team_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey(f"{s}.team.id"))
        email: orm.Mapped[str]
        score: orm.Mapped[float] = orm.mapped_column(sa.Numeric(10, 2), server_default="0")
        team: orm.Mapped[Team] = orm.relationship(back_populates="members")

    return Team, Member


def reflect(conn, s: str) -> dict:
    """Everything the Inspector says about the schema (what Alembic's autogenerate compares)."""
    i = sa.inspect(conn)
    tables = sorted(i.get_table_names(schema=s))
    out: dict = {"tables": tables, "views": sorted(i.get_view_names(schema=s)),
                 "sequences": sorted(i.get_sequence_names(schema=s)),
                 "view_sql": i.get_view_definition("big_teams", schema=s)}
    for t in tables:
        out[t] = {
            "columns": [{k: str(v) for k, v in c.items()} for c in i.get_columns(t, schema=s)],
            "pk": i.get_pk_constraint(t, schema=s),
            "fks": i.get_foreign_keys(t, schema=s),
            "indexes": sorted(i.get_indexes(t, schema=s), key=lambda x: x["name"]),
            "unique": sorted(i.get_unique_constraints(t, schema=s), key=lambda x: x["name"]),
            "checks": i.get_check_constraints(t, schema=s),
            "comment": i.get_table_comment(t, schema=s),
        }
    return out


@pytest.mark.parametrize("scope", ["read", "write", "ddl"])
def test_first_connect_under_every_scope(proxy, scope_roles, scope):
    engine = sa.create_engine(proxied(proxy, scope))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select current_user, cast(:x as int) + 1"), {"x": 41}).one() == (
                scope_roles[scope][0], 42)
            assert engine.dialect.server_version_info[0] >= 15
            assert conn.dialect.default_schema_name == "public"
    finally:
        engine.dispose()


def test_orm_unit_of_work_under_write(proxy, schema, admin):
    Team, Member = mapped(schema)
    engine = sa.create_engine(proxied(proxy, "write"))
    try:
        with orm.Session(engine) as session:
            team = Team(name="core", members=[Member(email="a@x"), Member(email="b@x")])
            session.add(team)
            session.commit()                          # INSERT ... RETURNING id, in one transaction
            assert team.id and all(m.id and m.team_id == team.id for m in team.members)
            session.execute(sa.update(Member).where(Member.email == "a@x").values(score=7.5))
            session.delete(team.members[1])
            session.commit()
            rows = session.execute(sa.select(Member.email, Member.score).order_by(Member.email)).all()
        assert [(e, float(s)) for e, s in rows] == [("a@x", 7.5)]
        assert admin(f"select t.name, m.email, m.score::text from {schema}.member m join {schema}.team t "
                     "on t.id = m.team_id") == [("core", "a@x", "7.50")]
    finally:
        engine.dispose()


def test_reflection_under_read_is_what_a_direct_connection_reflects(proxy, pg, schema):
    through, straight = sa.create_engine(proxied(proxy, "read")), sa.create_engine(direct(pg))
    try:
        with through.connect() as a, straight.connect() as b:
            seen = reflect(a, schema)
            assert seen == reflect(b, schema)
        assert seen["tables"] == ["member", "team"] and seen["views"] == ["big_teams"]
        assert seen["sequences"] == ["member_id_seq", "team_id_seq", "ticket_seq"]
        assert seen["member"]["fks"][0]["referred_table"] == "team"
        assert seen["member"]["comment"] == {"text": "people in teams"}
        assert [c["name"] for c in seen["member"]["checks"]] == ["member_score_check"]
        # MetaData.reflect (SQLAlchemy's automap, Alembic) over the proxied connection
        meta = sa.MetaData()
        meta.reflect(through, schema=schema)
        assert sorted(meta.tables) == [f"{schema}.member", f"{schema}.team"]
    finally:
        through.dispose()
        straight.dispose()


def test_a_denied_statement_is_an_error_and_the_pooled_connection_goes_on(proxy, schema, admin):
    Team, _ = mapped(schema)
    engine = sa.create_engine(proxied(proxy, "read"), pool_size=1, max_overflow=0, pool_pre_ping=True)
    try:
        with orm.Session(engine) as session:
            backend = session.execute(sa.text("select pg_backend_pid()")).scalar()
            session.add(Team(name="nope"))
            with pytest.raises(sa.exc.ProgrammingError) as caught:
                session.commit()
            assert caught.value.orig.sqlstate == "42501"
            assert "write class" in str(caught.value.orig) and "scope is read" in str(caught.value.orig)
            session.rollback()
            assert session.execute(sa.select(sa.func.count()).select_from(Team)).scalar() == 0
        with engine.connect() as conn:               # the pool's one connection, pinged, still the same
            assert conn.execute(sa.text("select pg_backend_pid()")).scalar() == backend
        assert admin(f"select count(*) from {schema}.team") == [(0,)]
    finally:
        engine.dispose()


def test_create_all_needs_the_ddl_scope(proxy, admin, scope_roles):
    s = f"sqla_{uuid.uuid4().hex[:10]}"
    admin(f"create schema {s}; grant usage, create on schema {s} to {scope_roles['ddl'][0]}")
    meta = sa.MetaData(schema=s)
    sa.Table("audit_note", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text))
    try:
        writer = sa.create_engine(proxied(proxy, "write"))
        try:
            with pytest.raises(sa.exc.ProgrammingError) as caught:
                meta.create_all(writer)
            assert caught.value.orig.sqlstate == "42501" and "ddl" in str(caught.value.orig)
        finally:
            writer.dispose()
        owner = sa.create_engine(proxied(proxy, "ddl"))
        try:
            meta.create_all(owner)
            assert admin(f"select count(*) from pg_tables where schemaname = '{s}'") == [(1,)]
            meta.drop_all(owner)
            assert admin(f"select count(*) from pg_tables where schemaname = '{s}'") == [(0,)]
        finally:
            owner.dispose()
    finally:
        admin(f"drop schema {s} cascade")


def test_asyncpg_dialect(proxy, schema, admin):
    """create_async_engine over asyncpg: prepared statements, binary parameters, the ORM, the
    Inspector through run_sync, and a denial that leaves the connection usable."""
    Team, Member = mapped(schema)

    async def main():
        writer = create_async_engine(proxied(proxy, "write", "asyncpg"))
        reader = create_async_engine(proxied(proxy, "read", "asyncpg"), pool_size=1, max_overflow=0)
        try:
            async with AsyncSession(writer) as session:
                session.add(Team(name="async", members=[Member(email=f"{n}@x") for n in range(3)]))
                await session.commit()
                for _ in range(3):                   # the same statement again: asyncpg's prepared one
                    got = await session.execute(sa.select(Member.email).where(Member.email.like("%@x"))
                                                .order_by(Member.email))
                assert got.scalars().all() == ["0@x", "1@x", "2@x"]
            async with reader.connect() as conn:
                tables = await conn.run_sync(lambda c: sorted(sa.inspect(c).get_table_names(schema=schema)))
                assert tables == ["member", "team"]
                with pytest.raises(sa.exc.ProgrammingError) as caught:
                    await conn.execute(sa.delete(Member))
                assert "write class" in str(caught.value)
                await conn.rollback()
                assert (await conn.execute(sa.select(sa.func.count()).select_from(Member))).scalar() == 3
        finally:
            await writer.dispose()
            await reader.dispose()

    asyncio.run(main())
    assert admin(f"select count(*) from {schema}.member") == [(3,)]

"""Engine, sessions, the declarative base, and the one way to run a transaction.

`transaction()` opens a session in a transaction and commits it when the block ends (rolls it
back if it raises). Services never commit: the request dependency (`app.deps.SessionDep`) or the
job wrapper does, through `transaction()`. Reads that need no transaction use a reader session
(`create_reader`).
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, DateTime, Integer, MetaData, TypeDecorator, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from app.config import Settings, secure_sqlite_file, sqlite_path

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

IDLE_PING_AFTER_S = 5.0  # a pooled connection idle this long is checked before use
ACQUIRE_TIMEOUT_S = 10  # waiting for a pooled connection (the engine's pool_timeout too)

# SQLite only auto-increments INTEGER PRIMARY KEY columns.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


@contextlib.asynccontextmanager
async def transaction(sessionmaker: async_sessionmaker[AsyncSession]
                      ) -> AsyncIterator[AsyncSession]:
    """One transaction: committed when the block ends, rolled back if it raises. The
    connection is taken at the first statement, not before."""
    async with sessionmaker() as session, session.begin():
        yield session


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.async_database_url
    if settings.is_sqlite:
        path = sqlite_path(settings.database_url)
        if path is not None:
            secure_sqlite_file(path)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _make_sqlite_transactional(engine)
        return engine
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size // 2,  # bounded: many processes share the server
        pool_timeout=ACQUIRE_TIMEOUT_S,
        pool_recycle=1800,
        connect_args={"timeout": 5, "command_timeout": 30},
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use only if it sat idle for a while.

    SQLAlchemy's pool_pre_ping costs three round trips (BEGIN, a ping, ROLLBACK) on every
    checkout. A connection the server closed is known without asking; one in steady use needs
    no ping (if the database goes away, the failing statement invalidates the whole pool and
    the request is a 503); one idle for a while may have been cut silently, so it is pinged
    and replaced if dead.
    """
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():  # the server hung up: no round trip
            raise DisconnectionError("pooled connection was closed by the server")
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_AFTER_S:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


def _make_sqlite_transactional(engine: AsyncEngine) -> None:
    """Every SQLite transaction takes the write lock up front (BEGIN IMMEDIATE).

    That serialises writers, so a read-check-write such as a credit charge cannot interleave,
    and no transaction fails late trying to upgrade a read lock.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def create_reader(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads (and single-statement writes) outside a transaction: on PostgreSQL
    each statement commits on its own, which spares the BEGIN and COMMIT round trips. SQLite
    keeps ordinary sessions (its BEGIN IMMEDIATE hook must see a real transaction)."""
    if engine.dialect.name == "sqlite":
        return create_sessionmaker(engine)
    return create_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))


class DirectPool:
    """PostgreSQL without SQLAlchemy, for the hottest single statements of a request (the key
    lookup, the balance read): an asyncpg pool of its own, opened on first use in the running
    event loop. A statement costs ~0.16 ms of CPU here against ~0.75 ms through an ORM session
    (docs/performance.md). Its errors are asyncpg's own (`app.errors.is_unavailable` knows
    them): a connection the server closed fails its statement (a 503) and is replaced."""

    SIZE = 5  # per process, beside the engine's pool: short statements, no transactions

    def __init__(self, database_url: str) -> None:
        self.dsn = make_url(database_url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None

    async def pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn, min_size=1, max_size=self.SIZE, timeout=5, command_timeout=30,
                    max_inactive_connection_lifetime=300, reset=_keep_as_is)
        return self._pool

    async def fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        pool = await self.pool()
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as connection:
            return await connection.fetchrow(sql, *args)

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        pool = await self.pool()
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as connection:
            return await connection.fetch(sql, *args)

    async def execute(self, sql: str, *args: object) -> None:
        pool = await self.pool()
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as connection:
            await connection.execute(sql, *args)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


async def _keep_as_is(_connection: asyncpg.Connection) -> None:
    """asyncpg resets a connection on release by default (a round trip: RESET ALL, UNLISTEN,
    ...); these single statements leave no session state to reset."""


def create_direct_pool(settings: Settings) -> DirectPool | None:
    return None if settings.is_sqlite else DirectPool(settings.async_database_url)

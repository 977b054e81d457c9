"""The migrations build exactly the schema the ORM models declare (on PostgreSQL and SQLite),
and go down and up again."""

import asyncio

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import async_url
from app.db import Base
from app.migrate import alembic_config, upgrade


async def differences(url: str) -> list[object]:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata))
    finally:
        await engine.dispose()


async def test_postgresql_schema_matches_the_models(pg_url: str) -> None:
    assert await differences(pg_url) == []


async def test_sqlite_schema_matches_the_models(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'gih.db'}"
    await asyncio.to_thread(upgrade, url)  # alembic runs an event loop of its own
    assert await differences(url) == []


def test_downgrade_to_the_start_and_up_again(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'gih.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    upgrade(url)

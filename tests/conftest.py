"""Shared fixtures: a real PostgreSQL database built by the migrations, SQLite twins, the app."""

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx2
import pytest
from fastapi import FastAPI

from app import api_keys, credits, users
from app.config import Settings
from app.main import create_app
from app.migrate import upgrade
from app.models import User

POSTGRES_ADMIN_URL = os.environ.get("GIH_TEST_POSTGRES_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_SECRET = "test-secret-" + "x" * 40


def _admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, built by `alembic upgrade head`.

    PostgreSQL being down is a failure, never a skip: CI starts it (see .ci/run).
    """
    name = f"gih_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required for the test suite ({POSTGRES_ADMIN_URL}): {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    yield url
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'gih.db'}"
    upgrade(url)
    return url


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"database_url": database_url, "secret_key": TEST_SECRET,
                                 "provider": "mock", "public_base_url": "http://testserver"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Client:
    """An HTTP client on a running app, plus shortcuts to set up accounts directly."""

    app: FastAPI
    http: httpx2.AsyncClient

    async def user(self, credits_: int = 0, *, expires_at: datetime | None = None,
                   account_type: str = "PRO") -> User:
        async with self.app.state.sessionmaker() as session, session.begin():
            user = await users.create(session, f"u{secrets.token_hex(6)}@example.com",
                                      account_type=account_type)
            if credits_:
                await credits.grant(session, user.id, credits_, expires_at=expires_at)
        return user

    async def key(self, user: User, *, expires_at: datetime | None = None) -> str:
        async with self.app.state.sessionmaker() as session, session.begin():
            issued = await api_keys.issue(session, user, secret=self.app.state.key_secret,
                                          expires_at=expires_at)
        return issued.raw_key

    async def user_with_key(self, credits_: int = 0, **kw: object) -> tuple[User, str]:
        user = await self.user(credits_, **kw)  # type: ignore[arg-type]
        return user, await self.key(user)

    def session(self):  # noqa: ANN201
        return self.app.state.sessionmaker()


async def running_client(settings: Settings) -> AsyncIterator[Client]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Client(app=app, http=http)


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Client]:
    async for client in running_client(make_settings(pg_url)):
        yield client


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_db(request: pytest.FixtureRequest, pg_url: str,
                 sqlite_url: str) -> AsyncIterator[Client]:
    """The smoke subset runs on both backends."""
    url = pg_url if request.param == "postgresql" else sqlite_url
    async for client in running_client(make_settings(url)):
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


REPO = Path(__file__).resolve().parent.parent

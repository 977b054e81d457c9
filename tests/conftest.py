"""Shared fixtures: a real PostgreSQL database built by the migrations, SQLite twins, the app,
and the production path (Redis, SeaweedFS, the OpenAI fake, a real `gih worker`).

Every test starts from a known state: it makes its own users and keys (`Client.user_with_key`,
`create_account`), the OpenAI fake is reset before each test that uses it, the session's
`gih worker` is running when a test starts (whatever the test before did to it), and a test on
the production path leaves no job of its own running behind it. Session resources are per
process, so that `pytest -n N` (pytest-xdist) runs each worker against its own databases, queue,
S3 server, fake and `gih worker`; `--dist loadscope` (as `make test` runs it) keeps a module's
tests on one worker, so that its module-scoped servers start once.
"""

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import httpx2
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.accounts import service as users
from app.config import Settings
from app.credits import service as credits
from app.db import create_engine, create_sessionmaker
from app.keys import service as api_keys
from app.main import create_app
from app.migrate import upgrade
from app.models import Generation, User
from tests.fakes.processes import WorkerProcess, free_port
from tests.waiting import wait_until_async

if TYPE_CHECKING:
    from tests.fakes.openai_fake import OpenAIFake
    from tests.fakes.seaweed import SeaweedS3

POSTGRES_ADMIN_URL = os.environ.get("GIH_TEST_POSTGRES_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_SECRET = "test-secret-" + "x" * 40
REPO = Path(__file__).resolve().parent.parent
FINAL = ("succeeded", "failed")
T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, on a loop of its own in a thread (a sync test may be
    called while the session's loop exists)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_sync(run())


@contextlib.contextmanager
def fresh_database(label: str) -> Iterator[str]:
    """A new PostgreSQL database built by `alembic upgrade head`, dropped afterwards.

    PostgreSQL being down is a failure, never a skip: CI starts it (see .ci/run).
    """
    name = f"gih_{label}_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required for the test suite ({POSTGRES_ADMIN_URL}): {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        yield url
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The database of the in-process tests (`pg`, `any_db`) and of the CLI's."""
    with fresh_database("test") as url:
        yield url


@pytest.fixture(scope="session")
def prod_db_url() -> Iterator[str]:
    """The database of the production path (`prod_env`: the session's `gih worker` and what
    talks to it). Apart from pg_url, so that the worker's sweep never picks up a generation
    that an in-process test left queued, nor runs it against the OpenAI fake."""
    with fresh_database("prod") as url:
        yield url


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


# --- accounts ----------------------------------------------------------------------------------

@dataclass
class Account:
    user_id: str
    email: str
    key: str
    key_id: str


async def create_account(settings: Settings, credits_: int = 0, *, account_type: str = "PRO",
                         email: str | None = None, key_name: str | None = None) -> Account:
    """A user (with a first grant) and a key, written through the app's services as `gih users
    create` and `gih keys create` write them, in the database `settings` name: for set-ups
    against a server running in another process, where the CLI would cost a second a call."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            user = await users.create(session, email or f"u{secrets.token_hex(6)}@example.com",
                                      account_type=account_type)
            if credits_:
                await credits.grant(session, user.id, credits_)
            issued = await api_keys.issue(session, user, secret=settings.hashing_secret(),
                                          name=key_name)
            return Account(user.id, user.email, issued.raw_key, issued.key.id)
    finally:
        await engine.dispose()


def create_account_sync(settings: Settings, credits_: int = 0, **kw: Any) -> Account:
    return run_sync(create_account(settings, credits_, **kw))


async def audit_problems(settings: Settings) -> list[str]:
    """What `gih credits audit` checks (balance = Σ ledger = Σ lots, for every user)."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            return [f"{p.email}: {p.message}" for p in await credits.audit(session)]
    finally:
        await engine.dispose()


@dataclass
class Client:
    """An HTTP client on a running app, plus shortcuts to set up accounts directly."""

    app: FastAPI
    http: httpx2.AsyncClient
    user_ids: list[str] = field(default_factory=list)

    async def user(self, credits_: int = 0, *, expires_at: datetime | None = None,
                   account_type: str = "PRO") -> User:
        async with self.app.state.runtime.sessionmaker() as session, session.begin():
            user = await users.create(session, f"u{secrets.token_hex(6)}@example.com",
                                      account_type=account_type)
            if credits_:
                await credits.grant(session, user.id, credits_, expires_at=expires_at)
        self.user_ids.append(user.id)
        return user

    async def key(self, user: User, *, expires_at: datetime | None = None) -> str:
        async with self.app.state.runtime.sessionmaker() as session, session.begin():
            issued = await api_keys.issue(session, user, secret=self.app.state.runtime.secret,
                                          expires_at=expires_at)
        return issued.raw_key

    async def user_with_key(self, credits_: int = 0, **kw: object) -> tuple[User, str]:
        user = await self.user(credits_, **kw)  # type: ignore[arg-type]
        return user, await self.key(user)

    def session(self):
        return self.app.state.runtime.sessionmaker()

    async def settled(self) -> bool:
        """No generation of this client's users is still queued or running."""
        if not self.user_ids:
            return True
        async with self.session() as session:
            return not await session.scalar(
                select(func.count()).select_from(Generation).where(
                    Generation.user_id.in_(self.user_ids), Generation.status.not_in(FINAL)))


@contextlib.asynccontextmanager
async def running_client(settings: Settings) -> AsyncIterator[Client]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Client(app=app, http=http)


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Client]:
    async with running_client(make_settings(pg_url)) as client:
        yield client


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_db(request: pytest.FixtureRequest, pg_url: str,
                 sqlite_url: str) -> AsyncIterator[Client]:
    """The smoke subset runs on both backends."""
    url = pg_url if request.param == "postgresql" else sqlite_url
    async with running_client(make_settings(url)) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the production path: Redis, SeaweedFS, the OpenAI fake and a real `gih worker` ---------

REDIS_TEST_URL = os.environ.get("GIH_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
S3_BUCKET = "gih-test"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis for the run (each test process has a queue of its own: GIH_QUEUE_NAME). Redis
    being down fails the run."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required for the test suite ({REDIS_TEST_URL}): {exc}")
    finally:
        client.close()
    return REDIS_TEST_URL


@pytest.fixture(scope="session")
def openai_server() -> Iterator["OpenAIFake"]:
    """The OpenAI fake's process, for the whole run; tests take it as `openai_fake`."""
    from tests.fakes.openai_fake import OpenAIFake

    with OpenAIFake() as fake:
        yield fake


@pytest.fixture
def openai_fake(openai_server: "OpenAIFake") -> "OpenAIFake":
    """The OpenAI fake with its default behaviour and no recorded request."""
    openai_server.reset()
    return openai_server


@pytest.fixture(scope="session")
def s3() -> Iterator["SeaweedS3"]:
    from tests.fakes.seaweed import SeaweedS3

    with SeaweedS3() as server:
        yield server


@pytest.fixture(scope="session")
def prod_env(prod_db_url: str, redis_url: str, s3, openai_server) -> dict[str, str]:
    """The production configuration, as environment variables (for `gih worker`)."""
    return {
        "GIH_DATABASE_URL": prod_db_url, "GIH_REDIS_URL": redis_url, "GIH_SECRET_KEY": TEST_SECRET,
        "GIH_STORAGE": "s3", "GIH_S3_BUCKET": S3_BUCKET, "GIH_S3_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1", "GIH_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_BASE_URL": openai_server.base_url,
        "GIH_PROVIDER_TIMEOUT_S": "4", "GIH_PROVIDER_MAX_RETRIES": "1",
        "GIH_STALE_AFTER_S": "4", "GIH_SWEEP_INTERVAL_S": "1", "GIH_JOB_TIMEOUT_S": "60",
        "GIH_PUBLIC_BASE_URL": "http://testserver",
        "GIH_WORKER_METRICS_PORT": str(free_port()),
        "GIH_QUEUE_NAME": f"gih-test-{os.getpid()}",
    }


def own_queue_env(prod_env: dict[str, str], **changes: str) -> dict[str, str]:
    """The production env with a queue of its own and no worker metrics port, plus `changes`:
    for a test that runs its own `gih worker` (and API) beside the session's."""
    return {**prod_env, "GIH_QUEUE_NAME": f"gih-own-{secrets.token_hex(4)}",
            "GIH_WORKER_METRICS_PORT": "0", **changes}


def settings_from_env(env: dict[str, str], **overrides: object) -> Settings:
    values = {k.removeprefix("GIH_").lower(): v for k, v in env.items() if k.startswith("GIH_")}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def session_worker(prod_env: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = WorkerProcess(prod_env, tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield process
    process.stop()


@pytest.fixture
def worker(session_worker: WorkerProcess) -> WorkerProcess:
    """The session's `gih worker` on GIH_QUEUE_NAME, running (a test may kill it: the next one
    finds it started again)."""
    return session_worker.ensure_running()


@pytest.fixture
def prod_sdk_env(prod_env: dict[str, str], openai_fake) -> Iterator[None]:
    """The variables the OpenAI and AWS SDKs read themselves, for an in-process API."""
    names = [k for k in prod_env if k.startswith(("OPENAI_", "AWS_"))]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: prod_env[k] for k in names})
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
async def prod(prod_env: dict[str, str], worker: WorkerProcess,
               prod_sdk_env: None) -> AsyncIterator[Client]:
    """The API in-process, configured for production, with the real worker behind it."""
    async with running_client(settings_from_env(prod_env)) as client:
        yield client
        # No job of this test may run on into the next one (and meet its fake's switches).
        await wait_until_async(client.settled, timeout=60, interval=0.1,
                               what="the test's generations final at its end")


async def poll(client: Client, key: str, generation_id: str, *, timeout: float = 30,
               until: tuple[str, ...] = FINAL) -> dict:
    """GET the generation, as a client polls, until its status is in `until`."""
    seen: dict[str, Any] = {}

    async def reached() -> dict | None:
        response = await client.http.get(f"/api/v1/generations/{generation_id}",
                                         headers=bearer(key))
        assert response.status_code == 200, response.text
        seen.update(response.json())
        return seen if seen["status"] in until else None

    return await wait_until_async(reached, timeout=timeout, interval=0.1,
                                  what=lambda: f"{generation_id} still {seen.get('status')}")

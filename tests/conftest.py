"""Shared fixtures: a real PostgreSQL database built by the migrations, SQLite twins, the app."""

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import httpx2
import pytest
from fastapi import FastAPI

from app.accounts import service as users
from app.config import Settings
from app.credits import service as credits
from app.keys import service as api_keys
from app.main import create_app
from app.migrate import upgrade
from app.models import User

if TYPE_CHECKING:
    from tests.fakes.openai_fake import OpenAIFake
    from tests.fakes.seaweed import SeaweedS3

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
        async with self.app.state.runtime.sessionmaker() as session, session.begin():
            user = await users.create(session, f"u{secrets.token_hex(6)}@example.com",
                                      account_type=account_type)
            if credits_:
                await credits.grant(session, user.id, credits_, expires_at=expires_at)
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


REPO = Path(__file__).resolve().parent.parent


# --- the production path: Redis, SeaweedFS, the OpenAI fake and a real `gih worker` ---------

REDIS_TEST_URL = os.environ.get("GIH_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
S3_BUCKET = "gih-test"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis for the run (each run has a queue of its own: GIH_QUEUE_NAME). Redis being down
    fails the run."""
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
def openai_fake() -> Iterator["OpenAIFake"]:
    from tests.fakes.openai_fake import OpenAIFake

    fake = OpenAIFake().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator["SeaweedS3"]:
    from tests.fakes.seaweed import SeaweedS3

    server = SeaweedS3().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prod_env(pg_url: str, redis_url: str, s3, openai_fake) -> dict[str, str]:
    """The production configuration, as environment variables (for `gih worker`)."""
    return {
        "GIH_DATABASE_URL": pg_url, "GIH_REDIS_URL": redis_url, "GIH_SECRET_KEY": TEST_SECRET,
        "GIH_STORAGE": "s3", "GIH_S3_BUCKET": S3_BUCKET, "GIH_S3_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1", "GIH_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_BASE_URL": openai_fake.base_url,
        "GIH_PROVIDER_TIMEOUT_S": "4", "GIH_PROVIDER_MAX_RETRIES": "1",
        "GIH_STALE_AFTER_S": "4", "GIH_SWEEP_INTERVAL_S": "1", "GIH_JOB_TIMEOUT_S": "60",
        "GIH_PUBLIC_BASE_URL": "http://testserver",
        "GIH_WORKER_METRICS_PORT": str(_free_port()),
        "GIH_QUEUE_NAME": f"gih-test-{os.getpid()}",
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_from_env(env: dict[str, str], **overrides: object) -> Settings:
    values = {k.removeprefix("GIH_").lower(): v for k, v in env.items() if k.startswith("GIH_")}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class WorkerProcess:
    """A real `gih worker` process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**{k: v for k, v in os.environ.items()
                       if not k.startswith(("GIH_", "OPENAI_", "AWS_"))}, **env}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "gih"), "worker"],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while b"gih worker ready" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gih worker did not start:\n" + self.log_tail())
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        return self.log_path.read_bytes()[-4000:].decode(errors="replace")


@pytest.fixture(scope="session")
def worker(prod_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = WorkerProcess(prod_env, tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield process
    process.stop()


@pytest.fixture
def prod_sdk_env(prod_env: dict[str, str], openai_fake) -> Iterator[None]:
    """The variables the OpenAI and AWS SDKs read themselves, for an in-process API."""
    names = [k for k in prod_env if k.startswith(("OPENAI_", "AWS_"))]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: prod_env[k] for k in names})
    openai_fake.reset()
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


async def poll(client: Client, key: str, generation_id: str, *, timeout: float = 30,
               until: tuple[str, ...] = ("succeeded", "failed")) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.http.get(f"/api/v1/generations/{generation_id}",
                                         headers=bearer(key))
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in until:
            return body
        assert time.monotonic() < deadline, f"still {body['status']} after {timeout}s"
        await asyncio.sleep(0.1)

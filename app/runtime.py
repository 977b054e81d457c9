"""What the API process and the worker share: database, storage, provider, queue, catalog."""

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.catalog.catalog import Catalog, load_catalog
from app.config import Settings
from app.db import (
    DirectPool,
    create_direct_pool,
    create_engine,
    create_reader,
    create_sessionmaker,
    transaction,
)
from app.generations.heartbeats import Heartbeats
from app.generations.waiting import StatusReads, create_status_reads
from app.providers import ImageProvider, create_provider
from app.queue import ArqQueue, InProcessQueue, JobQueue
from app.storage import create_storage
from app.storage.base import Storage


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    reader: async_sessionmaker[AsyncSession]  # autocommit: reads that need no transaction
    storage: Storage
    make_provider: Callable[[], ImageProvider]
    catalog: Catalog
    queue: JobQueue
    secret: bytes
    statuses: StatusReads  # waiting requests' status re-reads, batched
    direct: DirectPool | None = None  # PostgreSQL's hottest statements, without SQLAlchemy
    heartbeats: Heartbeats = field(default_factory=Heartbeats)  # of the jobs running here
    _provider: ImageProvider | None = None
    _finishing: asyncio.Semaphore | None = None

    @property
    def finishing(self) -> asyncio.Semaphore:
        """The turns of the jobs' last steps (storing the images, the finishing write), as
        many as the pool holds connections: when hundreds of upstream answers land at once
        (1,000 jobs in a worker), they queue here in order rather than race for the pool and
        fail on its 10 s timeout, which stays for a database that does not answer
        (docs/reliability.md); and the few that hold a turn are not slowed down by every other
        job's storing, so a generation is announced right after it is finished."""
        if self._finishing is None:
            self._finishing = asyncio.Semaphore(self.settings.db_pool_size)
        return self._finishing

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session in one transaction, committed when the block ends (`app.db.transaction`)."""
        return transaction(self.sessionmaker)

    def statement(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for one writing statement (or several, each standing alone): on
        PostgreSQL it commits on its own (no BEGIN and COMMIT round trips); SQLite keeps a
        transaction (its BEGIN IMMEDIATE hook must see one)."""
        return self.transaction() if self.settings.is_sqlite else self.reader()

    @property
    def provider(self) -> ImageProvider:
        """Made on first use: an API process whose jobs run in a worker never loads the SDK."""
        if self._provider is None:
            self._provider = self.make_provider()
        return self._provider

    async def close_provider(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()


def open_runtime(settings: Settings, *, queue: JobQueue | None = None) -> Runtime:
    engine = create_engine(settings)
    provider_budget = max(settings.job_timeout_s - 30, settings.job_timeout_s * 0.8)
    if queue is None:
        queue = (ArqQueue(settings.redis_url, queue_name=settings.queue_name)
                 if settings.redis_url
                 else InProcessQueue(settings.job_concurrency, grace_s=settings.shutdown_grace_s))
    reader = create_reader(engine)
    direct = create_direct_pool(settings)
    return Runtime(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        reader=reader,
        storage=create_storage(settings),
        make_provider=lambda: create_provider(
            settings.provider_name, timeout_s=settings.provider_timeout_s,
            max_retries=settings.provider_max_retries, total_timeout_s=provider_budget,
            concurrency=settings.job_concurrency),
        catalog=load_catalog(settings.catalog_path),
        queue=queue,
        secret=settings.hashing_secret(),
        statuses=create_status_reads(reader, direct),
        direct=direct,
    )


async def close_runtime(runtime: Runtime) -> None:
    await runtime.queue.close()
    await runtime.heartbeats.close()
    await runtime.close_provider()
    if runtime.direct is not None:
        await runtime.direct.close()
    await runtime.engine.dispose()

"""Requests waiting for their generation to end: woken by the queue's announcement, they re-read
the generation's status, and those re-reads are batched per process. Whoever asks while a read
is on its way joins the next one, so 5,000 waiters woken at once cost a handful of statements
(`SELECT ... WHERE id = ANY(...)`), not 5,000 trips through a pool of five connections."""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import DirectPool
from app.models import Generation, GenerationStatus
from app.queue import JobQueue

RECHECK_S = 15.0  # a waiting request re-reads the database this often if no wake-up comes
BATCH_MAX = 1000  # ids per statement

StatusFetch = Callable[[list[str]], Awaitable[Iterable[tuple[str, str]]]]

STATUSES_SQL = "SELECT id, status FROM generations WHERE id = ANY($1::text[])"


class StatusReads:
    """The status of generations, read for many waiters at once."""

    def __init__(self, fetch: StatusFetch) -> None:
        self.fetch = fetch
        self.wanted: dict[str, list[asyncio.Future[GenerationStatus | None]]] = {}
        self.reading: asyncio.Task[None] | None = None

    async def status(self, generation_id: str) -> GenerationStatus | None:
        future: asyncio.Future[GenerationStatus | None] = (
            asyncio.get_running_loop().create_future())
        self.wanted.setdefault(generation_id, []).append(future)
        if self.reading is None or self.reading.done():
            self.reading = asyncio.create_task(self._read(), name="gih-status-reads")
        return await future

    async def _read(self) -> None:
        """Until nobody is left asking: take everything asked so far, read it, answer it."""
        await asyncio.sleep(0)  # let the waiters woken by the same announcement join
        while self.wanted:
            batch, self.wanted = self.wanted, {}
            ids = list(batch)
            for start in range(0, len(ids), BATCH_MAX):
                chunk = ids[start:start + BATCH_MAX]
                try:
                    found = {key: GenerationStatus(status) for key, status
                             in await self.fetch(chunk)}
                except Exception as exc:  # each waiter gets the error, as its own read would
                    _answer(batch, chunk, exc=exc)
                else:
                    _answer(batch, chunk, found=found)


def _answer(batch: dict[str, list[asyncio.Future[Any]]], ids: list[str], *,
            found: dict[str, GenerationStatus] | None = None,
            exc: Exception | None = None) -> None:
    for key in ids:
        for future in batch[key]:
            if future.done():  # its request went away
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result((found or {}).get(key))


def direct_fetch(direct: DirectPool) -> StatusFetch:
    async def fetch(ids: list[str]) -> list[tuple[str, str]]:
        return [(row["id"], row["status"]) for row in await direct.fetch(STATUSES_SQL, ids)]
    return fetch


def session_fetch(reader: async_sessionmaker[AsyncSession]) -> StatusFetch:
    async def fetch(ids: list[str]) -> list[tuple[str, str]]:
        async with reader() as session:
            rows = await session.execute(
                select(Generation.id, Generation.status).where(Generation.id.in_(ids)))
            return [(key, str(status)) for key, status in rows.tuples()]
    return fetch


def create_status_reads(reader: async_sessionmaker[AsyncSession],
                        direct: DirectPool | None) -> StatusReads:
    return StatusReads(direct_fetch(direct) if direct is not None else session_fetch(reader))


async def wait_until_final(statuses: StatusReads, queue: JobQueue, generation_id: str,
                           timeout: float) -> None:
    """Sleep until the job announces the end (or `timeout` passes), re-reading the status only
    on a wake-up or every RECHECK_S as a fallback, in a batched read that holds no
    connection while it waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with queue.watch(generation_id) as watch:
        while True:
            status = await statuses.status(generation_id)
            if status is not None and status.is_final:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await watch.wait(min(remaining, RECHECK_S))

"""A worker killed in the middle of a job: the generation still ends, once, and is billed once."""

import asyncio
import time

from sqlalchemy import select

from app.credits import service as credits
from app.models import CreditLedgerEntry, Generation
from tests.conftest import bearer, poll
from tests.waiting import wait_until_async


async def status_of(client, generation_id: str) -> str | None:
    async with client.session() as session:
        return await session.scalar(select(Generation.status)
                                    .where(Generation.id == generation_id))


async def test_sigkilled_worker_mid_job_then_restarted(prod, worker, openai_fake) -> None:
    _, key = await prod.user_with_key(50)
    openai_fake.configure(latency_ms=2500)
    response = await prod.http.post(
        "/api/v1/images/generations", headers=bearer(key),
        json={"model": "gpt-image-2", "prompt": "a lighthouse", "n": 2, "async": True})
    assert response.status_code == 202
    generation_id = response.json()["id"]
    # The job is running and its upstream call in flight: the fake has it (it answers in 2.5 s).
    await wait_until_async(lambda: asyncio.to_thread(openai_fake.requests), timeout=20,
                           what="the upstream call")
    assert await status_of(prod, generation_id) == "running"
    worker.kill()
    calls_before_restart = len(openai_fake.requests())
    await asyncio.to_thread(worker.start)

    started = time.monotonic()
    done = await poll(prod, key, generation_id, timeout=60)
    assert done["status"] == "succeeded", done
    assert time.monotonic() - started < 60
    assert len(done["images"]) == 2
    assert len({image["url"].split("?")[0] for image in done["images"]}) == 2
    assert len(openai_fake.requests()) > calls_before_restart  # the job ran again
    assert (await prod.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"] == 34
    async with prod.session() as session:
        kinds = list(await session.scalars(
            select(CreditLedgerEntry.kind)
            .where(CreditLedgerEntry.generation_id == generation_id)))
        generation = await session.get(Generation, generation_id)
        assert await credits.audit(session) == []
    assert kinds == ["charge"]
    assert generation.attempts == 2

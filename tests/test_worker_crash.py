"""A worker killed in the middle of a job: the generation still ends, once, and is billed once."""

import time

from sqlalchemy import select

from app.credits import service as credits
from app.models import CreditLedgerEntry, Generation
from tests.conftest import bearer, poll


async def wait_for_status(client, generation_id: str, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with client.session() as session:
            current = await session.scalar(select(Generation.status)
                                           .where(Generation.id == generation_id))
        if current == status:
            return
        assert time.monotonic() < deadline, f"never reached {status} (is {current})"
        time.sleep(0.05)


async def test_sigkilled_worker_mid_job_then_restarted(prod, worker, openai_fake) -> None:
    _, key = await prod.user_with_key(50)
    openai_fake.configure(latency_ms=2500)
    response = await prod.http.post(
        "/api/v1/images/generations", headers=bearer(key),
        json={"model": "gpt-image-2", "prompt": "a lighthouse", "n": 2, "async": True})
    assert response.status_code == 202
    generation_id = response.json()["id"]
    await wait_for_status(prod, generation_id, "running")
    time.sleep(0.5)  # the upstream call is in flight
    worker.kill()
    calls_before_restart = len(openai_fake.requests())
    worker.start()

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

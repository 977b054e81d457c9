"""How `gih worker` takes and keeps jobs (issue 14): an enqueue wakes an idle worker at once,
however slow its poll; a running job leaves the queue (so 1,000 running jobs cost a poll
nothing); the heartbeats of the jobs a worker runs keep them from the sweep."""

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis
from sqlalchemy import select

from app.models import Generation
from tests.conftest import bearer, own_queue_env, poll, running_client, settings_from_env
from tests.fakes.processes import WorkerProcess
from tests.waiting import wait_until_async


async def post(client, key: str, **fields) -> dict:
    response = await client.http.post(
        "/api/v1/images/generations", headers=bearer(key), timeout=60,
        json={"model": "gpt-image-2", "prompt": "picked up", **fields})
    assert response.status_code in (200, 202), response.text
    return response.json()


async def test_an_idle_worker_starts_a_job_at_once_despite_a_slow_poll(
        prod_env, prod_sdk_env, openai_fake, tmp_path: Path) -> None:
    env = own_queue_env(prod_env, GIH_WORKER_POLL_S="5")  # polling alone: up to 5 s a job
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        async with running_client(settings_from_env(env)) as client:
            _, key = await client.user_with_key(100)
            await asyncio.sleep(1)  # past the worker's first poll: it now waits its 5 s
            took = []
            for _ in range(3):
                started = time.monotonic()
                body = await post(client, key)
                took.append(time.monotonic() - started)
                assert body["status"] == "succeeded", body
            assert max(took) < 2, took  # woken by each enqueue, not found by a poll
    finally:
        worker.stop()


async def test_a_running_job_leaves_the_queue_and_its_heartbeat_keeps_it(
        prod_env, prod_sdk_env, openai_fake, tmp_path: Path) -> None:
    """Three jobs run longer than GIH_STALE_AFTER_S (4 s): their heartbeats (one statement for
    all of them) keep the sweep off; none is queued while it runs; each runs once."""
    env = own_queue_env(prod_env, GIH_PROVIDER_TIMEOUT_S="20")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    redis = aioredis.from_url(env["GIH_REDIS_URL"])
    try:
        async with running_client(settings_from_env(env)) as client:
            _, key = await client.user_with_key(100)
            openai_fake.configure(latency_ms=6000)
            ids = [(await post(client, key, **{"async": True}))["id"] for _ in range(3)]

            async def all_running() -> bool:
                async with client.session() as session:
                    statuses = set(await session.scalars(
                        select(Generation.status).where(Generation.id.in_(ids))))
                return statuses == {"running"}

            await wait_until_async(all_running, timeout=20, what="the three jobs running")
            assert await redis.zcard(env["GIH_QUEUE_NAME"]) == 0
            for generation_id in ids:
                assert await redis.exists(f"arq:in-progress:gen:{generation_id}:1")
            for generation_id in ids:
                done = await poll(client, key, generation_id, timeout=30)
                assert done["status"] == "succeeded", done
            async with client.session() as session:
                attempts = list(await session.scalars(
                    select(Generation.attempts).where(Generation.id.in_(ids))))
            assert attempts == [1, 1, 1]  # never re-enqueued by the sweep
            assert len(openai_fake.requests()) == 3
    finally:
        await redis.aclose()
        worker.stop()

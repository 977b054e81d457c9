"""Dependencies failing under a running service: Redis, S3 and PostgreSQL go away and come back.

Every scenario has its own `gih worker` (and its own Redis or a TCP proxy in front of the
shared server), so the faults never reach the session's shared worker, Redis or PostgreSQL.

What must hold (api-contract.md sections 1 and 5): a dependency that is down gives 503
`serviceUnavailable` in the error envelope, never a 500 `internalError` and never a hang;
nothing is charged or lost; when the dependency is back the service works again without a
restart (`gih worker` keeps running through a Redis outage and reconnects by itself).
"""

import asyncio
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import func, select

from app.models import CreditLedgerEntry, Generation
from tests.conftest import (
    audit_problems,
    bearer,
    make_settings,
    own_queue_env,
    running_client,
    settings_from_env,
)
from tests.fakes.processes import RedisServer, WorkerProcess
from tests.fakes.tcp_proxy import TcpProxy
from tests.waiting import wait_until_async

GENERATIONS = "/api/v1/images/generations"
BODY = {"model": "gpt-image-2", "prompt": "a lighthouse at dusk", "size": "1024x1024"}
CREDITS_PER_IMAGE = 8  # gpt-image-2 at 1K

# Bounds, generous: two shared cores, other suites running beside this one.
UNAVAILABLE_WITHIN_S = 10.0  # a request while a dependency is down answers 503 within this
STORAGE_FAIL_WITHIN_S = 60.0  # bounded storage retries, then failed + refunded
REQUEST_HANG_S = 30.0  # any single request longer than this is a hang


@pytest.fixture
def pg_url(prod_db_url: str) -> str:
    """In this module, the production path's database (where the session's `gih worker` and
    the tests' own run)."""
    return prod_db_url


def scenario_env(prod_env: dict[str, str], **changes: str) -> dict[str, str]:
    """The production env with a queue of its own (for the scenario's own worker)."""
    return own_queue_env(prod_env, **changes)


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def audit(pg_url: str) -> None:
    """What `gih credits audit` checks, on the real database (not through any proxy)."""
    assert await audit_problems(make_settings(pg_url)) == []


async def ledger(client, generation_id: str) -> list[tuple[str, int]]:
    async with client.session() as session:
        rows = await session.execute(
            select(CreditLedgerEntry.kind, CreditLedgerEntry.amount)
            .where(CreditLedgerEntry.generation_id == generation_id)
            .order_by(CreditLedgerEntry.id))
        return [(kind, amount) for kind, amount in rows]


async def generations_of(client, user_id: str) -> list[Generation]:
    async with client.session() as session:
        return list(await session.scalars(
            select(Generation).where(Generation.user_id == user_id)
            .order_by(Generation.created_at)))


async def status_of(client, generation_id: str) -> str | None:
    async with client.session() as session:
        return await session.scalar(select(Generation.status)
                                    .where(Generation.id == generation_id))


async def wait_for_status(client, generation_id: str, statuses: tuple[str, ...],
                          timeout: float) -> str:
    seen: list[str | None] = [None]

    async def reached() -> str | None:
        seen[0] = await status_of(client, generation_id)
        return seen[0] if seen[0] in statuses else None

    return await wait_until_async(reached, timeout=timeout,
                                  what=lambda: f"{generation_id} {statuses} (is {seen[0]})")


async def running_generation(client, user_id: str, timeout: float) -> str:
    """The id of the user's (only) generation that is running, once one is."""
    async def found() -> str | None:
        async with client.session() as session:
            return await session.scalar(select(Generation.id).where(
                Generation.user_id == user_id, Generation.status == "running"))

    return await wait_until_async(found, timeout=timeout, what="a generation running")


async def poll_final(client, key: str, generation_id: str, timeout: float) -> dict:
    """Poll through the API (as a client does) until the generation is final."""
    seen: dict = {}

    async def final() -> dict | None:
        response = await client.http.get(f"/api/v1/generations/{generation_id}",
                                         headers=bearer(key))
        assert response.status_code == 200, response.text
        seen.update(response.json())
        return seen if seen["status"] in ("succeeded", "failed") else None

    return await wait_until_async(final, timeout=timeout, interval=0.2,
                                  what=lambda: f"{generation_id} final (is {seen.get('status')})")


async def upstream_called(openai_fake, prompt: str = "a lighthouse at dusk") -> bool:
    calls = await asyncio.to_thread(openai_fake.requests)
    return any(c["fields"].get("prompt") == prompt for c in calls)


async def balance(client, key: str) -> int:
    response = await client.http.get("/api/v1/credits", headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()["credits"]


async def wait_ready(client, timeout: float = 20) -> None:
    async def ready() -> bool:
        return (await client.http.get("/readyz")).status_code == 200

    await wait_until_async(ready, timeout=timeout, interval=0.1, what="/readyz 200")


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"]["code"] == "serviceUnavailable", body
    assert "detail" not in body


# --- a. Redis down when a generation is submitted ---------------------------------------------

async def test_redis_down_at_submit_is_503_charged_and_refunded(
        prod_env, prod_sdk_env, pg_url, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    env = scenario_env(prod_env, GIH_REDIS_URL=redis.url)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        async with running_client(settings_from_env(env)) as client:
            user, key = await client.user_with_key(100)
            redis.stop()

            started = time.monotonic()
            sync = await client.http.post(GENERATIONS, headers={
                **bearer(key), "Idempotency-Key": "redis-down-sync"}, json=BODY)
            sync_503_s = time.monotonic() - started
            started = time.monotonic()
            async_ = await client.http.post(GENERATIONS, headers={
                **bearer(key), "Idempotency-Key": "redis-down-async"},
                json={**BODY, "async": True})
            async_503_s = time.monotonic() - started
            assert_unavailable(sync)
            assert_unavailable(async_)
            assert max(sync_503_s, async_503_s) < UNAVAILABLE_WITHIN_S
            assert await balance(client, key) == 100  # Redis down: the DB still answers

            # Charged, then refunded at once: charge + refund of the same amount, the
            # generation failed (serviceUnavailable) and its Idempotency-Key released.
            failed = await generations_of(client, user.id)
            assert len(failed) == 2
            ledgers = {}
            for generation in failed:
                assert generation.status == "failed"
                assert generation.error_code == "serviceUnavailable"
                assert generation.idempotency_key is None
                assert generation.credits_refunded == generation.credits_requested == 8
                ledgers[generation.id] = await ledger(client, generation.id)
                assert ledgers[generation.id] == [("charge", -8), ("refund", 8)]

            assert worker.alive(), "gih worker exited when Redis went away"
            redis.start()  # same port, empty (no persistence)
            await wait_ready(client)

            # The client's retries, same keys: fresh generations that succeed.
            retry = await client.http.post(GENERATIONS, headers={
                **bearer(key), "Idempotency-Key": "redis-down-sync"}, json=BODY)
            assert retry.status_code == 200, retry.text
            assert retry.json()["status"] == "succeeded"
            assert retry.json()["id"] not in ledgers
            retry_async = await client.http.post(GENERATIONS, headers={
                **bearer(key), "Idempotency-Key": "redis-down-async"},
                json={**BODY, "async": True})
            assert retry_async.status_code == 202, retry_async.text
            assert retry_async.json()["id"] not in ledgers
            done = await poll_final(client, key, retry_async.json()["id"], 30)
            assert done["status"] == "succeeded", done
            replay = await client.http.post(GENERATIONS, headers={
                **bearer(key), "Idempotency-Key": "redis-down-sync"}, json=BODY)
            assert replay.status_code == 200 and replay.json()["id"] == retry.json()["id"]
            assert await balance(client, key) == 100 - 16
            assert await ledger(client, retry.json()["id"]) == [("charge", -8)]
            assert worker.alive()  # the same process did the retries' jobs
        await audit(pg_url)
    finally:
        worker.stop()
        redis.stop()


# --- b. Redis goes away while a job runs, and comes back -------------------------------------

async def test_redis_down_mid_job_and_back(
        prod_env, prod_sdk_env, openai_fake, pg_url, tmp_path: Path) -> None:
    """One generation running at the provider, one still waiting in the queue (the worker
    takes one job at a time) when Redis stops; Redis comes back empty (no persistence), so the
    waiting job is lost with it. Both must end, billed once; polling works throughout."""
    redis = RedisServer(tmp_path).start()
    env = scenario_env(prod_env, GIH_REDIS_URL=redis.url, GIH_JOB_CONCURRENCY="1")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        async with running_client(settings_from_env(env)) as client:
            user, key = await client.user_with_key(100)
            openai_fake.configure(latency_ms=3000)

            async def sync_post() -> tuple[int, dict, float]:
                started = time.monotonic()
                response = await asyncio.wait_for(client.http.post(
                    GENERATIONS, headers={**bearer(key), "Idempotency-Key": "sync-mid-job"},
                    json=BODY), 90)
                return response.status_code, response.json(), time.monotonic() - started

            sync_task = asyncio.create_task(sync_post())  # a client waiting on the running job
            running_id = await running_generation(client, user.id, 20)
            waiting = await client.http.post(GENERATIONS, headers=bearer(key),
                                             json={**BODY, "async": True})
            assert waiting.status_code == 202, waiting.text
            waiting_id = waiting.json()["id"]
            # The running job's upstream call is in flight; the other job waits in the queue.
            await wait_until_async(lambda: upstream_called(openai_fake), timeout=20,
                                   what="the running job's upstream call")
            assert await status_of(client, waiting_id) == "queued"

            redis.stop()
            down_at = time.monotonic()
            while time.monotonic() - down_at < 5:  # Redis stays down ~5 s; clients poll
                response = await client.http.get(f"/api/v1/generations/{running_id}",
                                                 headers=bearer(key))
                assert response.status_code == 200, response.text  # needs only the database
                await asyncio.sleep(0.2)
            assert worker.alive(), "gih worker exited when Redis went away"
            redis.start()  # same port, empty

            openai_fake.configure(latency_ms=0)
            # The waiting job was lost with Redis: the sweep re-enqueues it.
            done = {waiting_id: await poll_final(client, key, waiting_id, 60)}
            # The client waiting on the running job: its wake-up was published while Redis
            # was down, so it learns of the end at its next database re-check (15 s).
            sync_status, sync_body, sync_s = await sync_task
            assert sync_status == 200 and sync_body["id"] == running_id, sync_body
            assert sync_s < 30, sync_s
            done[running_id] = await poll_final(client, key, running_id, 10)
            for gid, body in done.items():
                entries = await ledger(client, gid)
                if body["status"] == "succeeded":
                    assert entries == [("charge", -8)], entries
                else:  # failed: the full refund, once
                    assert entries == [("charge", -8), ("refund", 8)], entries
            succeeded = sum(body["status"] == "succeeded" for body in done.values())
            assert await balance(client, key) == 100 - 8 * succeeded

            # And the queue works again for new work.
            again = await client.http.post(GENERATIONS, headers=bearer(key),
                                           json={**BODY, "async": True})
            assert again.status_code == 202, again.text
            assert (await poll_final(client, key, again.json()["id"], 30))["status"] \
                == "succeeded"
            assert worker.alive()
        await audit(pg_url)
    finally:
        worker.stop()
        redis.stop()


# --- c. S3 down when the images are uploaded --------------------------------------------------

async def test_s3_down_at_upload_fails_and_refunds_in_bounded_time(
        prod_env, prod_sdk_env, openai_fake, s3, pg_url, tmp_path: Path) -> None:
    endpoint = urlsplit(s3.endpoint_url)
    proxy = TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80).start()
    env = scenario_env(prod_env, GIH_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        async with running_client(settings_from_env(env)) as client:
            _, key = await client.user_with_key(100)
            openai_fake.configure(latency_ms=1000)
            response = await client.http.post(GENERATIONS, headers=bearer(key),
                                              json={**BODY, "async": True})
            assert response.status_code == 202, response.text
            generation_id = response.json()["id"]
            await wait_for_status(client, generation_id, ("running",), 20)
            # S3 goes down while the upstream call is in flight: the upload comes after.
            await wait_until_async(lambda: upstream_called(openai_fake), timeout=20,
                                   what="the upstream call")

            proxy.down(refuse=False)  # accept and reset: lets us count the attempts
            down_at = time.monotonic()
            done = await poll_final(client, key, generation_id, STORAGE_FAIL_WITHIN_S + 10)
            failed_after_s = time.monotonic() - down_at
            attempts_seen = proxy.rejected
            assert done["status"] == "failed", done
            assert done["error"]["code"] == "serviceUnavailable"  # a dependency, not the provider
            assert "storage" in done["error"]["message"]
            assert done["usage"]["credits"] == 0
            assert await ledger(client, generation_id) == [("charge", -8), ("refund", 8)]
            assert await balance(client, key) == 100
            assert failed_after_s < STORAGE_FAIL_WITHIN_S
            assert attempts_seen >= 3  # retried, and (asserted above) bounded

            # While S3 is down a sync request fails the same way: refunded, never charged.
            openai_fake.configure(latency_ms=0)
            sync_down = await client.http.post(GENERATIONS, headers=bearer(key), json=BODY)
            assert sync_down.status_code == 503, sync_down.text
            assert sync_down.json()["error"]["code"] == "serviceUnavailable"
            assert sync_down.json()["error"]["generation_id"].startswith("gen_")
            assert await balance(client, key) == 100

            proxy.up()
            ok = await client.http.post(GENERATIONS, headers=bearer(key), json=BODY)
            assert ok.status_code == 200, ok.text
            assert ok.json()["status"] == "succeeded"
            url = ok.json()["images"][0]["url"]
            with urllib.request.urlopen(url, timeout=10) as image:
                assert image.read(8) == b"\x89PNG\r\n\x1a\n"
            assert await balance(client, key) == 92
        await audit(pg_url)
    finally:
        worker.stop()
        proxy.stop()


# --- d. PostgreSQL restarts under load ---------------------------------------------------------

class Load:
    """A stream of GET /credits and async POSTs (each with an Idempotency-Key), recorded."""

    def __init__(self, client, key: str) -> None:
        self.client = client
        self.key = key
        self.records: list[dict] = []
        self.running = True
        self.counter = 0

    async def one(self, kind: str) -> None:
        headers = bearer(self.key)
        idem = None
        started = time.monotonic()
        if kind == "post":
            self.counter += 1
            idem = f"load-{self.counter}"
            call = self.client.http.post(GENERATIONS, headers={**headers, "Idempotency-Key": idem},
                                         json={**BODY, "async": True})
        else:
            call = self.client.http.get("/api/v1/credits", headers=headers)
        try:
            response = await asyncio.wait_for(call, REQUEST_HANG_S)
            status, body = response.status_code, response.json()
        except TimeoutError:
            status, body = None, {"hang": True}
        self.records.append({"kind": kind, "key": idem, "start": started,
                             "end": time.monotonic(), "status": status, "body": body})

    async def run(self, kind: str, pause: float) -> None:
        while self.running:
            await self.one(kind)
            await asyncio.sleep(pause)

    def ok_after(self, kind: str, moment: float) -> float | None:
        """When the first success of `kind` started at or after `moment` ended."""
        ends = [r["end"] for r in self.records
                if r["kind"] == kind and r["start"] >= moment and r["status"] in (200, 202)]
        return min(ends) if ends else None


async def test_postgres_restart_under_load(
        prod_env, prod_sdk_env, openai_fake, pg_url, tmp_path: Path) -> None:
    target = urlsplit(pg_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    env = scenario_env(prod_env, GIH_DATABASE_URL=with_port(pg_url, proxy.port))
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        async with running_client(settings_from_env(env)) as client:
            user, key = await client.user_with_key(2000)
            openai_fake.configure(latency_ms=1500)
            before = []
            for index in range(3):  # in flight (queued or at the provider) during the outage
                response = await client.http.post(GENERATIONS, headers={
                    **bearer(key), "Idempotency-Key": f"before-{index}"},
                    json={**BODY, "async": True})
                assert response.status_code == 202, response.text
                before.append(response.json()["id"])

            load = Load(client, key)
            tasks = [asyncio.create_task(load.run("get", 0.05)),
                     asyncio.create_task(load.run("post", 0.15))]
            await wait_until_async(lambda: load.ok_after("get", 0) and load.ok_after("post", 0),
                                   timeout=20, what="the load served before the outage")

            async def sync_post() -> tuple[int, dict, float]:
                started = time.monotonic()
                response = await asyncio.wait_for(client.http.post(GENERATIONS, headers={
                    **bearer(key), "Idempotency-Key": "sync-in-flight"}, json=BODY), 90)
                return response.status_code, response.json(), time.monotonic() - started

            sync_task = asyncio.create_task(sync_post())  # waiting on its job at the outage

            async def sync_accepted() -> bool:
                async with client.session() as session:
                    return bool(await session.scalar(
                        select(func.count()).select_from(Generation).where(
                            Generation.user_id == user.id,
                            Generation.idempotency_key == "sync-in-flight")))

            await wait_until_async(sync_accepted, timeout=20, what="the sync request accepted")
            proxy.down()  # refused, as while PostgreSQL restarts
            down_at = time.monotonic()
            await asyncio.sleep(3)  # the outage
            proxy.up()
            up_at = time.monotonic()
            try:
                await wait_until_async(lambda: load.ok_after("get", up_at + 0.5)
                                       and load.ok_after("post", up_at + 0.5),
                                       timeout=30, interval=0.1,
                                       what="both kinds of request served after the outage")
            finally:
                load.running = False
                await asyncio.gather(*tasks)

            sync_status, sync_body, sync_s = await sync_task
            assert sync_status in (200, 503), sync_body  # never 500 internalError
            if sync_status == 200:
                assert sync_body["status"] == "succeeded"
            else:
                assert sync_body["error"]["code"] == "serviceUnavailable"

            records = load.records
            problems = [r for r in records if r["status"] not in (200, 202, 503)]
            assert not problems, problems[:5]  # never a 500 internalError, never a hang
            unavailable = [r for r in records if r["status"] == 503]
            for record in unavailable:
                assert record["body"]["error"]["code"] == "serviceUnavailable", record
            slowest = max(r["end"] - r["start"] for r in records)
            assert slowest < UNAVAILABLE_WITHIN_S, slowest
            first_503 = min((r["end"] for r in unavailable if r["start"] >= down_at),
                            default=None)
            assert first_503 is not None, "no request failed while PostgreSQL was down"
            outage_requests = [r for r in records if r["start"] >= down_at + 0.2
                               and r["end"] <= up_at]
            assert outage_requests and all(r["status"] == 503 for r in outage_requests)
            get_back, post_back = load.ok_after("get", up_at), load.ok_after("post", up_at)
            assert get_back is not None and post_back is not None, "never recovered"
            recovery_s = max(get_back, post_back) - up_at
            assert recovery_s < 15, recovery_s
            assert (await client.http.get("/readyz")).status_code == 200

            # The client retries what got a 503 with the same key: one generation per key,
            # whether the first try had committed or not.
            for record in unavailable:
                if record["kind"] != "post":
                    continue
                retry = await client.http.post(GENERATIONS, headers={
                    **bearer(key), "Idempotency-Key": record["key"]},
                    json={**BODY, "async": True})
                assert retry.status_code in (200, 202), retry.text
            async with client.session() as session:
                keys = list(await session.scalars(
                    select(Generation.idempotency_key).where(Generation.user_id == user.id)))
            assert len(keys) == len(set(keys)), "a key made two generations"

            openai_fake.configure(latency_ms=0)
            for generation in await generations_of(client, user.id):
                await poll_final(client, key, generation.id, 60)
            for generation_id in before:
                assert await status_of(client, generation_id) == "succeeded"
            generations = await generations_of(client, user.id)
            succeeded = sum(g.status == "succeeded" for g in generations)
            for generation in generations:
                if generation.status == "failed":
                    assert generation.credits_refunded == generation.credits_requested
            assert await balance(client, key) == 2000 - CREDITS_PER_IMAGE * succeeded
        await audit(pg_url)
    finally:
        worker.stop()
        proxy.stop()


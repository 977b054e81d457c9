"""Webhooks on the production path: PostgreSQL, Redis and real `gih worker` processes (on a
queue and a database of this module's own, allowed to call the receiver on 127.0.0.1), SeaweedFS
S3 (image URLs presigned), the OpenAI fake upstream. The receiver and the checks are
tests/test_webhooks.py's.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    Client,
    bearer,
    fresh_database,
    own_queue_env,
    poll,
    running_client,
    settings_from_env,
)
from tests.fakes.processes import WorkerProcess
from tests.test_webhooks import (
    Receiver,
    assert_one_verified_event,
    attempts_of,
    audit_and_no_pending_event,
    event_of,
    secret_of,
    settled_event,
    submit,
)
from tests.waiting import wait_until_async

TIMEOUT_S = "2"  # the attempt timeout of these workers (the 15 s default is tested embedded)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().up()
    yield server
    server.down()


@pytest.fixture(scope="module")
def hooks_db_url() -> Iterator[str]:
    """Not the session's production database: the other modules' workers (which may not call
    127.0.0.1, and retry on the default backoff) would sweep this module's due events onto
    their own queues."""
    with fresh_database("hooks") as url:
        yield url


@pytest.fixture
def own_hooks_db_url() -> Iterator[str]:
    """For a test that runs its own worker: not even this module's worker may sweep its
    events (it would take over the attempt the test is about)."""
    with fresh_database("hooks") as url:
        yield url
        audit_and_no_pending_event(url)


def hooks_env(prod_env: dict[str, str], database_url: str) -> dict[str, str]:
    return own_queue_env(prod_env, GIH_DATABASE_URL=database_url,
                         GIH_WEBHOOK_ALLOW_PRIVATE="true", GIH_WEBHOOK_RETRY_DELAYS_S="0.5",
                         GIH_WEBHOOK_TIMEOUT_S=TIMEOUT_S)


@pytest.fixture(scope="module")
def module_env(prod_env: dict[str, str], hooks_db_url: str) -> dict[str, str]:
    return hooks_env(prod_env, hooks_db_url)


@pytest.fixture(scope="module")
def module_worker(module_env: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(module_env, tmp_path_factory.mktemp("hooks") / "worker.log").start()
    yield worker
    worker.stop()


@pytest.fixture
async def prod(module_env: dict[str, str], module_worker: WorkerProcess,
               prod_sdk_env: None) -> AsyncIterator[Client]:
    """The API in-process, production settings, this module's worker behind it."""
    module_worker.ensure_running()
    async with running_client(settings_from_env(module_env)) as client:
        yield client
        await wait_until_async(client.settled, timeout=60, interval=0.1,
                               what="the test's generations final at its end")


@pytest.fixture(scope="module", autouse=True)
def audit_after_module(hooks_db_url: str) -> Iterator[None]:
    yield
    audit_and_no_pending_event(hooks_db_url)


async def test_succeeded_and_failed_generations_are_delivered_by_the_worker(
        prod: Client, receiver: Receiver, openai_fake) -> None:
    _, key = await prod.user_with_key(100)
    done = await submit(prod, key, webhook_url=receiver.url("/ok"))
    assert done.status_code == 200, done.text
    delivery = await assert_one_verified_event(prod, key, receiver, done.json()["id"],
                                               "generation.succeeded", path="/ok")
    [image] = delivery.json["data"]["images"]
    assert "X-Amz-Signature" in image["url"]  # presigned when sent

    openai_fake.configure(fail_status=500)
    failed = await submit(prod, key, webhook_url=receiver.url("/failed"), **{"async": True})
    assert failed.status_code == 202, failed.text
    await poll(prod, key, failed.json()["id"])
    await assert_one_verified_event(prod, key, receiver, failed.json()["id"],
                                    "generation.failed", path="/failed")


async def test_canceled_generation_is_delivered_by_the_worker(
        prod_env: dict[str, str], own_hooks_db_url: str, prod_sdk_env: None,
        receiver: Receiver, tmp_path: Path) -> None:
    """No worker yet on this queue: the generation stays queued, is canceled by the API
    (which queues the delivery), and a worker started afterwards delivers it."""
    env = hooks_env(prod_env, own_hooks_db_url)
    async with running_client(settings_from_env(env)) as client:
        _, key = await client.user_with_key(100)
        queued = await submit(client, key, webhook_url=receiver.url(), **{"async": True})
        generation_id = queued.json()["id"]
        canceled = await client.http.post(f"/api/v1/generations/{generation_id}/cancel",
                                          headers=bearer(key))
        assert canceled.status_code == 200, canceled.text
        await asyncio.sleep(0.5)
        assert receiver.count() == 0
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        try:
            await assert_one_verified_event(client, key, receiver, generation_id,
                                            "generation.canceled")
        finally:
            worker.stop()


async def test_receiver_down_then_up_is_delivered_on_a_retry(prod: Client,
                                                             receiver: Receiver) -> None:
    _, key = await prod.user_with_key(100)
    receiver.down()
    response = await submit(prod, key, webhook_url=receiver.url())
    generation_id = response.json()["id"]

    async def refused_twice() -> bool:
        event = await event_of(prod, generation_id)
        return len(await attempts_of(prod, event.id)) >= 2

    await wait_until_async(refused_twice, timeout=20, what="two refused attempts")
    receiver.up()
    event = await settled_event(prod, generation_id)
    [delivery] = receiver.received
    assert delivery.id == event.id
    delivery.verify(await secret_of(prod, key))
    attempts = await attempts_of(prod, event.id)
    assert [a.status_code for a in attempts][-1] == 200 and len(attempts) == event.attempts >= 3


async def test_410_and_timeouts(prod: Client, receiver: Receiver) -> None:
    """410: no more tries. A receiver that does not answer: timed out (here after 2 s) and
    retried."""
    _, key = await prod.user_with_key(100)
    receiver.script = ["410"]
    gone = await submit(prod, key, webhook_url=receiver.url("/gone"))
    event = await settled_event(prod, gone.json()["id"], status="gone")
    receiver.script = ["hang"]
    slow = await submit(prod, key, webhook_url=receiver.url("/slow"))
    retried = await settled_event(prod, slow.json()["id"], timeout=30)
    receiver.release.set()
    first, second = await attempts_of(prod, retried.id)
    assert first.error == f"timed out after {TIMEOUT_S} s" and second.status_code == 200
    await asyncio.sleep(1.5)
    assert receiver.count("/gone") == 1 and event.attempts == 1


async def test_worker_killed_mid_delivery_delivers_after_restart(
        prod_env: dict[str, str], own_hooks_db_url: str, prod_sdk_env: None,
        receiver: Receiver, tmp_path: Path) -> None:
    """SIGKILL while the generation is final and its event is being sent: the attempt holds
    the event for its lease (the timeout + 15 s); once that has passed, the restarted worker's
    sweep sends it again, with the same webhook-id."""
    # time enough to kill it
    env = {**hooks_env(prod_env, own_hooks_db_url), "GIH_WEBHOOK_TIMEOUT_S": "5"}
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        async with running_client(settings_from_env(env)) as client:
            _, key = await client.user_with_key(100)
            receiver.script = ["hang"]
            response = await submit(client, key, webhook_url=receiver.url(), **{"async": True})
            generation_id = response.json()["id"]
            [first] = await receiver.wait_for(1, timeout=30)
            worker.kill()
            assert (await poll(client, key, generation_id))["status"] == "succeeded"
            event = await event_of(client, generation_id)
            assert (event.status, event.attempts) == ("pending", 1)
            receiver.release.set()  # from now on: 200
            worker.start()
            event = await settled_event(client, generation_id, timeout=40)
            received = receiver.received
            assert [d.id for d in received] == [event.id, event.id] and first.id == event.id
            received[1].verify(await secret_of(client, key))
            assert event.attempts == 2
            # the killed attempt never came back to record itself; the second did
            assert [a.status_code for a in await attempts_of(client, event.id)] == [200]
    finally:
        worker.stop()

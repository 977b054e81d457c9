"""The per-process batching behind waiting requests and running jobs (issue 14): many waiters'
status re-reads in one statement, many jobs' heartbeats in one statement; a waiting request's
wait (woken, or timed out by one timer for all) and the lean parts of its connection."""

import asyncio

import pytest

from app.generations.heartbeats import Heartbeats
from app.generations.waiting import StatusReads
from app.models import GenerationStatus
from app.ops.http_protocol import LeanEvent, Pipeline
from app.queue import Waiters


class Fetch:
    def __init__(self, statuses: dict[str, str], fail: Exception | None = None) -> None:
        self.statuses, self.fail, self.calls = statuses, fail, []

    async def __call__(self, ids: list[str]) -> list[tuple[str, str]]:
        self.calls.append(list(ids))
        await asyncio.sleep(0.01)  # a round trip: whoever asks meanwhile joins the next read
        if self.fail is not None:
            raise self.fail
        return [(i, self.statuses[i]) for i in ids if i in self.statuses]


async def test_thousands_of_waiters_woken_at_once_cost_a_few_statements() -> None:
    statuses = {f"gen_{n}": "succeeded" if n % 2 else "running" for n in range(2500)}
    fetch = Fetch(statuses)
    reads = StatusReads(fetch)
    found = await asyncio.gather(*(reads.status(f"gen_{n}") for n in range(2500)),
                                 reads.status("gen_missing"))
    assert found[:4] == [GenerationStatus.RUNNING, GenerationStatus.SUCCEEDED] * 2
    assert found[-1] is None
    assert len(fetch.calls) == 3 and max(len(c) for c in fetch.calls) == 1000  # batches of 1000
    # asked while a read is out: they go in the next one, together
    first = asyncio.ensure_future(reads.status("gen_1"))
    await asyncio.sleep(0.001)
    later = [asyncio.ensure_future(reads.status(f"gen_{n}")) for n in range(10)]
    await asyncio.gather(first, *later)
    assert [len(c) for c in fetch.calls[3:]] == [1, 10]


async def test_a_failed_read_fails_each_waiter_and_a_gone_waiter_harms_none() -> None:
    reads = StatusReads(Fetch({}, fail=OSError("database away")))
    results = await asyncio.gather(*(reads.status(f"gen_{n}") for n in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)

    reads = StatusReads(Fetch({"gen_a": "queued", "gen_b": "failed"}))
    gone = asyncio.ensure_future(reads.status("gen_a"))
    stays = asyncio.ensure_future(reads.status("gen_a"))
    other = asyncio.ensure_future(reads.status("gen_b"))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stays == GenerationStatus.QUEUED and await other == GenerationStatus.FAILED
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_the_heartbeats_of_every_running_job_go_in_one_statement() -> None:
    beats: list[list[str]] = []

    async def beat(ids: list[str]) -> None:
        beats.append(ids)

    heartbeats = Heartbeats()

    async def job(generation_id: str, seconds: float) -> None:
        async with heartbeats.hold(generation_id, beat, 0.05):
            await asyncio.sleep(seconds)

    await asyncio.gather(job("gen_a", 0.18), job("gen_b", 0.18), job("gen_c", 0.08))
    assert beats[0] == ["gen_a", "gen_b", "gen_c"]  # one statement for all three
    assert beats[-1] == ["gen_a", "gen_b"]  # gen_c ended: no longer beaten
    assert 3 <= len(beats) <= 4
    await asyncio.sleep(0.12)
    assert len(beats) <= 4 and heartbeats.running == set()  # nothing left: no more beats
    await heartbeats.close()

async def test_a_wait_ends_when_woken_or_when_its_time_comes_whichever_is_first() -> None:
    waiters = Waiters()
    loop = asyncio.get_running_loop()
    with waiters.watch("gen_a") as a, waiters.watch("gen_b") as b, \
            waiters.watch("gen_b") as b2:
        started = loop.time()
        waits = [a.wait(0.05), b.wait(5), b2.wait(0.2)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waits)
        await waits[0]  # its time came
        assert 0.04 <= loop.time() - started < 1 and not waits[1].done()
        waiters.wake("gen_b")  # both watches of gen_b
        await asyncio.wait_for(asyncio.gather(waits[1], waits[2]), 1)
        # woken while not waiting: the next wait ends at once, the one after does not
        waiters.wake("gen_a")
        await asyncio.wait_for(a.wait(5), 1)
        late = a.wait(0.3)
        await asyncio.sleep(0.25)  # the deadline of gen_b's woken 0.2 s wait passes: harmless
        assert not late.done()
        await asyncio.wait_for(late, 1)
    assert waiters.by_id == {}


async def test_thousands_of_deadlines_end_each_wait_on_time() -> None:
    waiters = Waiters()
    loop = asyncio.get_running_loop()
    watches = [waiters.watch(f"gen_{n}").__enter__() for n in range(2000)]
    late: list[float] = []  # how long after its time each wait ended
    waits = []
    for n, watch in enumerate(watches):
        due = loop.time() + 0.01 + (n % 50) / 1000
        future = watch.wait(due - loop.time())
        future.add_done_callback(lambda _f, due=due: late.append(loop.time() - due))
        waits.append(future)
    await asyncio.wait_for(asyncio.gather(*waits), 2)
    assert len(late) == 2000 and min(late) >= -0.002 and max(late) < 0.5
    assert waiters.deadlines.heap == [] and waiters.deadlines.timer is None
    for watch in watches:
        watch.__exit__()
    assert waiters.by_id == {}


def test_deadlines_start_afresh_on_another_event_loop() -> None:
    waiters = Waiters()

    async def wait_once(timeout: float) -> None:
        with waiters.watch("gen_a") as watch:
            await asyncio.wait_for(watch.wait(timeout), 2)

    asyncio.run(wait_once(0.01))
    # a wait left pending on a loop that is gone must not hold up the next loop's
    async def leave_pending() -> None:
        waiters.watch("gen_b").wait(60)
    asyncio.run(leave_pending())
    asyncio.run(wait_once(0.05))


async def test_a_connection_holds_lists_where_uvicorn_holds_deques() -> None:
    event = LeanEvent()
    waiting = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    assert isinstance(event._waiters, list) and len(event._waiters) == 1
    event.set()
    assert await waiting is True and event._waiters == []
    event.clear()
    assert not event.is_set()
    pipeline = Pipeline()
    pipeline.appendleft("first")
    pipeline.appendleft("second")
    assert pipeline.pop() == "first" and pipeline and pipeline.pop() == "second"
    assert not pipeline

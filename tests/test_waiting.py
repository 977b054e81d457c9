"""The per-process batching behind waiting requests and running jobs (issue 14): many waiters'
status re-reads in one statement, many jobs' heartbeats in one statement."""

import asyncio

import pytest

from app.generations.heartbeats import Heartbeats
from app.generations.waiting import StatusReads
from app.models import GenerationStatus


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

"""How our processes use Redis under load (issue 14): a command does not wait for every other
command's connection check (app/redis_pool.py), and a worker's poll claims its jobs in one
atomic round trip (worker/wakeable.py's CLAIM_SCRIPT), each job by one worker only."""

import asyncio
import secrets
import time

import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix

from app.redis_pool import CheckOutsideLockPool, use_lean_pool
from worker.wakeable import CLAIM_SCRIPT


async def test_commands_of_a_busy_process_do_not_take_turns_for_a_connection(
        redis_url: str) -> None:
    """The event loop's every turn takes 5 ms (a process holding thousands of requests): 300
    concurrent commands end within a few turns, not one per turn (redis-py's own pool holds its
    lock across a check that lasts a turn: 300 turns, 1.5 s)."""
    client = aioredis.from_url(redis_url, socket_connect_timeout=3)
    await use_lean_pool(client)
    assert isinstance(client.connection_pool, CheckOutsideLockPool)
    busy = True

    def turn() -> None:  # the rest of the loop's work, each turn
        if busy:
            time.sleep(0.005)
            asyncio.get_running_loop().call_soon(turn)

    try:
        await client.ping()
        asyncio.get_running_loop().call_soon(turn)
        started = time.monotonic()
        answers = await asyncio.wait_for(
            asyncio.gather(*(client.incr(f"gih-test:busy:{secrets.token_hex(4)}")
                             for _ in range(300))), 10)
        took = time.monotonic() - started
        assert answers == [1] * 300
        assert took < 0.75, f"{took:.2f} s for 300 commands at 5 ms a loop turn"
    finally:
        busy = False
        keys = await client.keys("gih-test:busy:*")
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_poll_claims_due_jobs_not_running_each_by_one_worker(redis_url: str) -> None:
    client = aioredis.from_url(redis_url, socket_connect_timeout=3)
    queue = f"gih-test:claims:{secrets.token_hex(4)}"
    now = int(time.time() * 1000)
    ids = [f"job-{n:02d}" for n in range(40)]
    try:
        await client.zadd(queue, {job: now - 1000 + n for n, job in enumerate(ids)})
        await client.zadd(queue, {"later": now + 60_000})  # deferred: not due
        await client.psetex(in_progress_key_prefix + "job-03", 60_000, b"1")  # running already
        claim = client.register_script(CLAIM_SCRIPT)

        async def poll(free: int) -> list[str]:
            taken = await claim(keys=[queue], args=[now, free, in_progress_key_prefix, 1000,
                                                    60_000])
            assert all(float(score) <= now for score in taken[1::2])
            return [job.decode() for job in taken[0::2]]

        firsts = await asyncio.gather(*(poll(16) for _ in range(5)))  # five workers at once
        everything = [job for got in firsts for job in got]
        assert sorted(everything) == [job for job in ids if job != "job-03"]  # each once
        assert sorted(len(got) for got in firsts) == [0, 0, 7, 16, 16]
        first = next(got for got in firsts if "job-00" in got)
        assert first == ids[:3] + ids[4:17]  # in the queue's order, the running one left
        assert await poll(16) == []  # all in progress now; the deferred one not due
        for job in everything:
            assert await client.pttl(in_progress_key_prefix + job) > 50_000
        assert await client.zcard(queue) == 41  # the jobs leave the queue as they start
    finally:
        await client.delete(queue, *(in_progress_key_prefix + job for job in [*ids, "later"]))
        await client.aclose()

"""arq's worker, woken by the enqueue: it polls its queue every `poll_delay` (arq's own loop), and
between polls it also listens on the queue's wake channel, which `app.queue` publishes on when
it enqueues a job that is due now. A job then starts a millisecond or two after it is queued
rather than up to `poll_delay` later, with no faster polling. A lost wake-up costs only that
delay: the poll still runs (deferred jobs and retries are found by it, as before).

A poll also claims its jobs in one round trip (CLAIM_SCRIPT) where arq checks each candidate
in turn (WATCH, EXISTS, ZSCORE, then MULTI/EXEC): three to five round trips a job, raced by
every worker woken by the same enqueue. The script skips what is in progress and marks what it
takes as in progress the way arq does, atomically, so every job still runs once at a time; it
takes at most CLAIM_AT_ONCE a poll, so the jobs spread over the workers. And a poll looks only
at the jobs that ended since the last one, where arq looks at every task it holds (1,000)."""

import asyncio
import contextlib
import functools
from typing import Any

from arq.connections import create_pool
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms, to_seconds
from arq.worker import Worker

from app.queue import listen_forever, wake_channel
from app.redis_pool import use_lean_pool

CLAIM_AT_ONCE = 16

# KEYS: the queue; ARGV: now (ms), how many to take, the in-progress key prefix, how many of the
# queue's due jobs to look at, the in-progress key's expiry (ms). Returns [id, score, ...].
CLAIM_SCRIPT = """
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[4]))
local taken = {}
for i = 1, #due, 2 do
  if #taken >= 2 * tonumber(ARGV[2]) then break end
  local key = ARGV[3] .. due[i]
  if redis.call('exists', key) == 0 then
    redis.call('psetex', key, ARGV[5], '1')
    taken[#taken + 1] = due[i]
    taken[#taken + 1] = due[i + 1]
  end
end
return taken
"""


class WakeableWorker(Worker):
    def __init__(self, *args: Any, poll_delay: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, poll_delay=0, **kwargs)  # arq's loop: no sleep of its own
        self.idle_s = float(to_seconds(poll_delay) or 0.5)
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._claim: Any = None
        self._finished: list[str] = []  # jobs whose task ended since the last poll

    async def main(self) -> None:
        if self._pool is None:  # arq's own, on a pool that does not queue every command
            self._pool = await create_pool(
                self.redis_settings, job_serializer=self.job_serializer,
                job_deserializer=self.job_deserializer, default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms)
            await use_lean_pool(self._pool)
        await super().main()

    async def _poll_iteration(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="gih-worker-wake")
        self._wake.clear()  # a wake-up from here on asks for another poll
        if self.burst:  # arq's own (gih worker does not run in burst mode)
            await super()._poll_iteration()
            more_due = False
        else:
            more_due = await self._claim_and_start()
            if self.allow_abort_jobs:
                await self._cancel_aborted_jobs()
            finished, self._finished = self._finished, []  # not a look at every task
            for job_id in finished:
                task = self.tasks.pop(job_id, None)
                if task is not None:
                    task.result()  # as arq: an error of run_job itself propagates
            await self.heart_beat()
        if self.job_counter >= self.max_jobs:  # full: a new job could not start anyway
            await asyncio.sleep(self.idle_s)
            return
        if more_due:  # take them now (the other workers take theirs too)
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.idle_s)

    async def _claim_and_start(self) -> bool:
        """Claim and start up to CLAIM_AT_ONCE due jobs (fewer if fewer slots are free): a
        worker woken with 1,000 free slots does not take every job queued, so the jobs spread
        over the workers woken by the same enqueues. True if it took all it asked for (more
        may be due)."""
        free = min(self.max_jobs - self.job_counter, CLAIM_AT_ONCE)
        if not self.allow_pick_jobs or free <= 0:
            return False
        if self._claim is None:
            self._claim = self.pool.register_script(CLAIM_SCRIPT)
        taken = await self._claim(keys=[self.queue_name], args=[
            timestamp_ms(), free, in_progress_key_prefix, self.queue_read_limit,
            int(self.in_progress_timeout_s * 1000)])
        for i in range(0, len(taken), 2):
            job_id = taken[i].decode() if isinstance(taken[i], bytes) else str(taken[i])
            await self.sem.acquire()  # free: at most as many as the semaphore has left
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(taken[i + 1]))))
            task.add_done_callback(functools.partial(self._ended, job_id))
            self.tasks[job_id] = task
        return len(taken) == 2 * free

    def _ended(self, job_id: str, _task: "asyncio.Task[None]") -> None:
        self._release_sem_dec_counter_on_complete()
        self._finished.append(job_id)

    async def _listen(self) -> None:
        """Until cancelled; with Redis away the poll goes on at its own pace."""
        await listen_forever(self.pool, lambda _channel: self._wake.set(),
                             channels=(wake_channel(self.queue_name),), what="worker wake-up")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await super().close()

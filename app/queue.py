"""Enqueue generation jobs and wait for them: arq on Redis in production, in-process when embedded.

Only ids cross the queue. A job id is derived from the generation id and its attempt number, so
a re-enqueue by the sweep never collides with the job it replaces. Completion is announced on a
Redis channel (or an in-process event), so a waiting request wakes at once, without polling.

A streaming request also reads the partial images its job relays: kept in a Redis stream per
generation (or in memory), so a reader that comes late, or reconnects, misses none.

Other jobs (webhook deliveries) go through `enqueue_task`: by function name to `gih worker`, or
as a task of this process when embedded; one job per job id while it waits.
"""

import asyncio
import contextlib
import heapq
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from arq.connections import ArqRedis

log = logging.getLogger("gih.queue")

DONE_CHANNEL = "gih:done:"
PARTIALS_KEY = "gih:partials:"  # a Redis stream per generation, and a wake-up channel
PARTIALS_TTL_S = 3600
PARTIALS_KEPT = 64  # per generation: 3 partial images for each of 4 images, with room
JOB_FUNCTION = "run_generation"

Partial = dict[str, Any]

Runner = Callable[[str, int], Awaitable[None]]
Call = Callable[[], Awaitable[None]]  # a job of another kind, run in-process


def wake_channel(queue_name: str) -> str:
    """Where an enqueue tells idle `gih worker`s that a job is due (worker/wakeable.py)."""
    return queue_name + ":wake"


def job_id(generation_id: str, attempt: int) -> str:
    return f"gen:{generation_id}:{attempt}"


class QueueUnavailable(Exception):
    """The job queue cannot take the job now."""


class JobQueue(Protocol):
    #: Jobs run in this process (embedded), so it also runs the sweep.
    runs_jobs: bool

    async def start(self, runner: Runner) -> None:
        """Connect; `runner` runs a job, where this queue runs jobs itself."""

    async def enqueue(self, generation_id: str, attempt: int) -> None: ...

    async def enqueue_task(self, function: str, *args: str | int, job_id: str,
                           defer_s: float = 0, run: Call) -> None:
        """Queue a job of another kind: `function(*args)` of `gih worker`, or `run()` where
        this queue runs jobs itself; after `defer_s` seconds; ignored while a job with this
        `job_id` waits or runs."""

    async def is_pending(self, generation_id: str, attempt: int) -> bool: ...
    async def notify(self, generation_id: str) -> None: ...
    def watch(self, generation_id: str) -> "Watch": ...

    async def add_partial(self, generation_id: str, partial: Partial) -> None:
        """Keep a partial image for the generation's streaming readers, and wake them."""

    async def partials_after(self, generation_id: str,
                             cursor: str) -> tuple[list[Partial], str]:
        """The partial images kept since `cursor` ("0": from the first), and the new cursor."""

    async def ping(self) -> None: ...
    async def depth(self) -> int: ...
    async def close(self) -> None: ...


class Watch:
    """Set when the generation it watches is announced; register before checking its state.
    A wait is a future and an entry in its `Waiters`' deadlines (not `asyncio.wait_for`, which
    makes a task each time, nor a coroutine, whose frame a waiting request would hold, nor a
    timer each): a waiting request costs as little memory as it can (docs/performance.md,
    scenario L)."""

    __slots__ = ("waiters", "generation_id", "woken", "_future", "_deadline")

    def __init__(self, waiters: "Waiters", generation_id: str) -> None:
        self.waiters = waiters
        self.generation_id = generation_id
        self.woken = False  # since the last wait began, with no wait pending to end
        self._future: asyncio.Future[None] | None = None
        self._deadline = 0  # the pending wait's entry in the deadlines (0: none)

    def set(self) -> None:
        if self._future is None:
            self.woken = True  # the next wait ends at once
        else:
            self._end()

    def wait(self, timeout: float) -> "asyncio.Future[None]":
        """Done when woken (or if woken since the last wait), or when `timeout` passes."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.woken:
            self.woken = False
            future.set_result(None)
            return future
        self._end()  # a wait nobody awaits any more (its request went away)
        self._future = future
        self._deadline = self.waiters.deadlines.add(self, timeout)
        return future

    def expire(self, deadline: int) -> None:
        if deadline == self._deadline:  # not an earlier wait's
            self._end()

    def _end(self) -> None:
        future, self._future, self._deadline = self._future, None, 0
        if future is not None and not future.done():
            future.set_result(None)

    def __enter__(self) -> "Watch":
        self.waiters.add(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.waiters.remove(self)
        self._end()


class Deadlines:
    """When the pending waits time out: a heap and one timer for its earliest, rather than a
    timer per wait (~0.5 KB each with uvloop). An entry outlives a wait woken before it (until
    its time comes, then it is dropped); its number tells it from the watch's next wait."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Watch]] = []
        self.count = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf

    def add(self, watch: Watch, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new loop (tests run several): what the old held is moot
            self.heap, self.loop, self.timer, self.timer_at = [], loop, None, math.inf
        self.count += 1
        when = loop.time() + timeout
        heapq.heappush(self.heap, (when, self.count, watch))
        if when < self.timer_at:
            self._arm(loop, when)
        return self.count

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.timer_at = loop.call_at(when, self._fire, loop), when

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer, self.timer_at = None, math.inf
        if loop is not self.loop:
            return
        now = loop.time() + 0.001  # a timer may fire a hair early (the loop's resolution)
        while self.heap and self.heap[0][0] <= now:
            _, deadline, watch = heapq.heappop(self.heap)
            watch.expire(deadline)
        if self.heap:
            self._arm(loop, self.heap[0][0])


class Waiters:
    """Requests waiting for generations to finish, by generation id: its one watch (nearly
    always), or a list of them (no `set` per waiting request: 216 bytes or more each)."""

    def __init__(self) -> None:
        self.by_id: dict[str, Watch | list[Watch]] = {}
        self.deadlines = Deadlines()

    def watch(self, generation_id: str) -> Watch:
        return Watch(self, generation_id)

    def add(self, watch: Watch) -> None:
        held = self.by_id.get(watch.generation_id)
        if held is None:
            self.by_id[watch.generation_id] = watch
        elif isinstance(held, Watch):
            self.by_id[watch.generation_id] = [held, watch]
        else:
            held.append(watch)

    def remove(self, watch: Watch) -> None:
        held = self.by_id.get(watch.generation_id)
        if held is watch:
            del self.by_id[watch.generation_id]
        elif isinstance(held, list) and watch in held:
            held.remove(watch)
            if len(held) == 1:
                self.by_id[watch.generation_id] = held[0]

    def wake(self, generation_id: str) -> None:
        held = self.by_id.get(generation_id)
        if isinstance(held, Watch):
            held.set()
        elif held is not None:
            for watch in held:
                watch.set()

    def wake_all(self) -> None:
        """Announcements may have been lost: every waiter re-reads the database now."""
        for held in self.by_id.values():
            for watch in (held,) if isinstance(held, Watch) else held:
                watch.set()


class InProcessQueue:
    """Embedded mode: jobs run as tasks of this process, a few at a time."""

    runs_jobs = True

    def __init__(self, concurrency: int = 4, *, grace_s: float = 0) -> None:
        self.runner: Runner | None = None
        self.grace_s = grace_s
        self.waiters = Waiters()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._other_slots = asyncio.Semaphore(concurrency)  # generations never wait on these
        self._other: dict[str, asyncio.Task[None]] = {}
        self._deferred: set[str] = set()  # of _other: still waiting for their time
        self._partials: dict[str, tuple[float, list[Partial]]] = {}

    async def start(self, runner: Runner) -> None:
        self.runner = runner

    async def enqueue(self, generation_id: str, attempt: int) -> None:
        if self.runner is None:
            raise QueueUnavailable("the in-process job runner has not started")
        key = job_id(generation_id, attempt)
        if key in self._tasks:
            return
        task = asyncio.create_task(self._run(generation_id, attempt), name=key)
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    async def _run(self, generation_id: str, attempt: int) -> None:
        assert self.runner is not None
        async with self._slots:
            try:
                await self.runner(generation_id, attempt)
            except Exception:
                log.exception("job %s failed", job_id(generation_id, attempt))

    async def enqueue_task(self, function: str, *args: str | int, job_id: str,
                           defer_s: float = 0, run: Call) -> None:
        if self.runner is None:
            raise QueueUnavailable("the in-process job runner has not started")
        if job_id in self._other:
            return
        task = asyncio.create_task(self._run_task(job_id, run, defer_s), name=job_id)
        self._other[job_id] = task
        task.add_done_callback(lambda _t: self._other.pop(job_id, None))

    async def _run_task(self, key: str, run: Call, defer_s: float) -> None:
        if defer_s > 0:
            self._deferred.add(key)
            try:
                await asyncio.sleep(defer_s)
            finally:
                self._deferred.discard(key)
        async with self._other_slots:
            try:
                await run()
            except Exception:
                log.exception("job %s failed", key)

    async def is_pending(self, generation_id: str, attempt: int) -> bool:
        return job_id(generation_id, attempt) in self._tasks

    async def notify(self, generation_id: str) -> None:
        self.waiters.wake(generation_id)

    async def add_partial(self, generation_id: str, partial: Partial) -> None:
        now = time.monotonic()
        for stale in [g for g, (born, _) in self._partials.items() if now - born > PARTIALS_TTL_S]:
            del self._partials[stale]
        kept = self._partials.setdefault(generation_id, (now, []))[1]
        if len(kept) < PARTIALS_KEPT:
            kept.append(partial)
        self.waiters.wake(generation_id)

    async def partials_after(self, generation_id: str,
                             cursor: str) -> tuple[list[Partial], str]:
        kept = self._partials.get(generation_id, (0.0, []))[1]
        start = int(cursor)
        return kept[start:], str(len(kept))

    def watch(self, generation_id: str) -> Watch:
        return self.waiters.watch(generation_id)

    async def ping(self) -> None:
        return None

    async def depth(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        self.runner = None
        for key in list(self._deferred):  # not begun: nothing to finish (the sweep has them)
            if key in self._other:
                self._other[key].cancel()
        tasks = list(self._tasks.values()) + list(self._other.values())
        if tasks and self.grace_s > 0:
            await asyncio.wait(tasks, timeout=self.grace_s)
        for task in tasks:  # cut off: the sweep picks these up at the next start
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def listen_forever(redis: Any, on_message: Callable[[str], None], *,
                         channels: tuple[str, ...] = (), patterns: tuple[str, ...] = (),
                         on_resubscribed: Callable[[], None] | None = None,
                         what: str) -> None:
    """Call `on_message(channel)` for every message on `channels` or `patterns`, until
    cancelled; a lost connection is re-opened a second later (then `on_resubscribed()`)."""
    lost = False
    while True:
        pubsub = redis.pubsub()
        try:
            if channels:
                await pubsub.subscribe(*channels)
            if patterns:
                await pubsub.psubscribe(*patterns)
            if lost and on_resubscribed is not None:
                on_resubscribed()
            lost = False
            async for message in pubsub.listen():
                if message.get("type") in ("message", "pmessage"):
                    channel = message["channel"]
                    on_message(channel.decode() if isinstance(channel, bytes) else channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis went away: what relies on this has a fallback
            lost = True
            log.warning("%s lost Redis (%s); reconnecting", what, exc)
            await asyncio.sleep(1)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


# KEYS: the job's key, its result's key, the queue; ARGV: expiry (ms), job, score, job id, and
# the channel that wakes idle workers ("" for a deferred job: nothing to wake them for yet).
ENQUEUE_SCRIPT = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('publish', ARGV[5], '1') end
return 1
"""


class ArqQueue:
    """Production: arq jobs in Redis (run by `gih worker`), completion over Redis pub/sub."""

    runs_jobs = False

    def __init__(self, redis_url: str, *, queue_name: str = "arq:queue",
                 listen: bool = True) -> None:
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.listen = listen
        self.waiters = Waiters()
        self.pool: ArqRedis | None = None
        self._owns_pool = True
        self._listener: asyncio.Task[None] | None = None
        self._enqueue_script: Any = None

    async def start(self, runner: Runner) -> None:
        """Connect (the runner is not used: `gih worker` runs the jobs)."""
        from arq import create_pool
        from arq.connections import RedisSettings

        from app.redis_pool import use_lean_pool

        settings = RedisSettings.from_dsn(self.redis_url)
        settings.conn_timeout = 3
        settings.conn_retries = 2
        self.pool = await create_pool(settings)
        await use_lean_pool(self.pool)
        if self.listen:
            self._listener = asyncio.create_task(self._listen(), name="gih-done-listener")

    def use_pool(self, pool: "ArqRedis") -> None:
        """Share the worker's own arq connection instead of opening one (arq closes it)."""
        self.pool = pool
        self._owns_pool = False
        self._enqueue_script = None

    async def enqueue(self, generation_id: str, attempt: int) -> None:
        await self._enqueue(JOB_FUNCTION, (generation_id, attempt),
                            job_id(generation_id, attempt))

    async def enqueue_task(self, function: str, *args: str | int, job_id: str,
                           defer_s: float = 0, run: Call) -> None:
        await self._enqueue(function, args, job_id, defer_s)

    async def _enqueue(self, function: str, args: tuple[str | int, ...], job_id: str,
                       defer_s: float = 0) -> None:
        """arq's `enqueue_job` in one round trip (it takes three: WATCH, EXISTS, MULTI/EXEC):
        the same job record and queue entry, written by a Lua script, so just as atomic; a job
        id that is queued, running or has a result is left alone. A job due now also wakes
        the idle workers, which would otherwise find it at their next poll."""
        from arq.constants import job_key_prefix, result_key_prefix
        from arq.jobs import serialize_job
        from redis.exceptions import RedisError

        redis = self.redis
        now_ms = int(time.time() * 1000)
        score = now_ms + int(defer_s * 1000) if defer_s > 0 else now_ms
        job = serialize_job(function, args, {}, None, now_ms, serializer=redis.job_serializer)
        try:
            if self._enqueue_script is None:
                self._enqueue_script = redis.register_script(ENQUEUE_SCRIPT)
            await self._enqueue_script(
                keys=[job_key_prefix + job_id, result_key_prefix + job_id, self.queue_name],
                args=[score - now_ms + redis.expires_extra_ms, job, score, job_id,
                      "" if defer_s > 0 else wake_channel(self.queue_name)])
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"Redis: {exc}") from exc

    async def is_pending(self, generation_id: str, attempt: int) -> bool:
        from arq.jobs import Job, JobStatus

        status = await Job(job_id(generation_id, attempt), self.redis,
                           _queue_name=self.queue_name).status()
        # Not in_progress: a live worker claims its generation at once, so a queued generation
        # whose job is "in progress" past the stale deadline belongs to a dead worker.
        return status in (JobStatus.queued, JobStatus.deferred)

    async def notify(self, generation_id: str) -> None:
        await self.redis.publish(DONE_CHANNEL + generation_id, "1")

    async def add_partial(self, generation_id: str, partial: Partial) -> None:
        key = PARTIALS_KEY + generation_id
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"e": json.dumps(partial)}, maxlen=PARTIALS_KEPT, approximate=False)
            pipe.expire(key, PARTIALS_TTL_S)
            pipe.publish(key, "1")
            await pipe.execute()

    async def partials_after(self, generation_id: str,
                             cursor: str) -> tuple[list[Partial], str]:
        start = "-" if cursor == "0" else f"({cursor}"
        entries = await self.redis.xrange(PARTIALS_KEY + generation_id, min=start, max="+")
        if not entries:
            return [], cursor
        last = entries[-1][0]
        return ([json.loads(fields[b"e"]) for _, fields in entries],
                last.decode() if isinstance(last, bytes) else last)

    async def ping(self) -> None:
        await self.redis.ping()

    async def depth(self) -> int:
        return int(await self.redis.zcard(self.queue_name))

    def watch(self, generation_id: str) -> Watch:
        return self.waiters.watch(generation_id)

    async def _listen(self) -> None:
        """One subscription per process for every waiting request; what was announced while
        Redis was away is gone, so every waiter re-checks the database on reconnecting."""
        await listen_forever(
            self.redis,
            lambda channel: self.waiters.wake(channel.removeprefix(DONE_CHANNEL)
                                              .removeprefix(PARTIALS_KEY)),
            patterns=(DONE_CHANNEL + "*", PARTIALS_KEY + "*"),
            on_resubscribed=self.waiters.wake_all, what="completion listener")

    @property
    def redis(self) -> "ArqRedis":
        if self.pool is None:
            raise QueueUnavailable("the queue is not connected")
        return self.pool

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self.pool is not None and self._owns_pool:
            await self.pool.aclose()

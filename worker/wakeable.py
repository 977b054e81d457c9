"""arq's worker, woken by the enqueue: it polls its queue every `poll_delay` (arq's own loop), and
between polls it also listens on the queue's wake channel, which `app.queue` publishes on when
it enqueues a job that is due now. A job then starts a millisecond or two after it is queued
rather than up to `poll_delay` later, with no faster polling. A lost wake-up costs only that
delay: the poll still runs (deferred jobs and retries are found by it, as before)."""

import asyncio
import contextlib
from typing import Any

from arq.utils import to_seconds
from arq.worker import Worker

from app.queue import listen_forever, wake_channel


class WakeableWorker(Worker):
    def __init__(self, *args: Any, poll_delay: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, poll_delay=0, **kwargs)  # arq's loop: no sleep of its own
        self.idle_s = float(to_seconds(poll_delay) or 0.5)
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def _poll_iteration(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="gih-worker-wake")
        self._wake.clear()  # a wake-up from here on asks for another poll
        await super()._poll_iteration()
        if self.job_counter >= self.max_jobs:  # full: a new job could not start anyway
            await asyncio.sleep(self.idle_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.idle_s)

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

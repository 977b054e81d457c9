"""The heartbeats of the generations a process is running: one statement for all of them every
interval (a worker holding 1,000 jobs used to send 1,000 transactions per interval), so the
sweep leaves them alone while they run."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger("gih.generations.heartbeats")

Beat = Callable[[list[str]], Awaitable[None]]  # refreshes these generations' heartbeat_at


class Heartbeats:
    def __init__(self) -> None:
        self.running: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def hold(self, generation_id: str, beat: Beat, interval: float) -> AsyncIterator[None]:
        """Beat `generation_id` every `interval` (at most) while the block runs."""
        self.running.add(generation_id)
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.create_task(self._beat(beat, interval), name="gih-heartbeats")
        try:
            yield
        finally:
            self.running.discard(generation_id)

    async def _beat(self, beat: Beat, interval: float) -> None:
        while self.running:
            await asyncio.sleep(interval)
            ids = sorted(self.running)
            if not ids:
                return
            try:
                await beat(ids)
            except Exception as exc:  # the database may be briefly away; keep trying
                log.warning("heartbeat of %d running generations failed: %s", len(ids), exc)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task

"""The arq worker (`gih worker`): runs generation jobs, webhook deliveries and the sweep."""

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.worker import func

from app.config import get_settings
from app.generations.jobs import run_generation as run_generation_job
from app.generations.jobs import sweep_forever
from app.queue import ArqQueue
from app.runtime import close_runtime, open_runtime
from app.webhooks.jobs import DELIVERY_FUNCTION, run_delivery
from app.webhooks.policy import get_policy

log = logging.getLogger("gih.worker")
settings = get_settings()


async def run_generation(ctx: dict[str, Any], generation_id: str, attempt: int) -> None:
    """Named as app.queue.JOB_FUNCTION: the name the API enqueues.

    The job leaves the queue's sorted set as it starts (arq keeps it there until it ends, and
    every poll of every worker re-checks each running job in three round trips: with 1,000
    jobs waiting on a slow upstream, the workers did little else). What arq's entry was for is
    kept: a job cut off by a shutdown goes back into the queue, to run again; a worker that
    dies leaves a running generation whose heartbeat goes stale, and the sweep re-enqueues it."""
    redis, key = ctx["redis"], ctx["job_id"]
    await redis.zrem(settings.queue_name, key)
    try:
        await run_generation_job(ctx["runtime"], generation_id, attempt)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await redis.zadd(settings.queue_name, {key: int(time.time() * 1000)})
        raise


async def deliver_webhook(ctx: dict[str, Any], event_id: str, attempt: int) -> None:
    """Named as app.webhooks.jobs.DELIVERY_FUNCTION: one numbered attempt of an event."""
    await run_delivery(ctx["runtime"], event_id, attempt)


async def startup(ctx: dict[str, Any]) -> None:
    settings.check()
    queue = ArqQueue(settings.redis_url or "", queue_name=settings.queue_name, listen=False)
    queue.use_pool(ctx["redis"])
    rt = open_runtime(settings, queue=queue)
    try:
        await rt.storage.check()
    except Exception as exc:
        log.warning("storage check failed at start: %s", exc)
    ctx["runtime"] = rt
    ctx["sweep"] = asyncio.create_task(sweep_forever(rt), name="gih-sweep")
    log.info("gih worker ready: provider %s, %s storage", rt.provider.name,
             settings.storage)


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["sweep"].cancel()
    await asyncio.gather(ctx["sweep"], return_exceptions=True)
    await close_runtime(ctx["runtime"])  # the queue's pool is arq's own: closed by arq


class WorkerSettings:
    # A delivery keeps no result, so its job id is free again once it ran (a later attempt
    # has another id anyway); it never outlives the lease its attempt holds. (A bad
    # GIH_WEBHOOK_* setting stops the worker here, at start.)
    functions: ClassVar = [run_generation,
                           func(deliver_webhook, name=DELIVERY_FUNCTION, keep_result=0,
                                timeout=get_policy().lease_s, max_tries=3)]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(settings.redis_url or "redis://127.0.0.1:6379/0")
    queue_name = settings.queue_name
    job_timeout = settings.job_timeout_s
    max_jobs = settings.job_concurrency
    poll_delay = settings.worker_poll_s
    max_tries = 3
    keep_result = 3600
    health_check_interval = 30
    # One health key per host (container), so `gih worker --check` speaks for this worker.
    health_check_key = f"arq:health-check:{socket.gethostname()}"
    allow_abort_jobs = False
    # SIGTERM: take no new jobs, let running ones finish for up to the grace period.
    job_completion_wait = int(settings.shutdown_grace_s)

"""The generation job and the sweep: the wrappers that own the transactions (one per step)
around `service`. Every step is safe to run twice (arq may run a job again).

A job claims its generation, calls the provider, stores the images under fixed keys, then
finishes it in one transaction with the refund it owes; `conclude` does what follows a final
state, whoever reached it (the job, the sweep, a failed enqueue).
"""

import asyncio
import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from app.db import utcnow
from app.errors import ErrorCode, ServiceUnavailable
from app.generations import images, job_sql
from app.generations import service as generations
from app.models import Generation, GenerationStatus, ReferenceImage
from app.ops import metrics
from app.providers.base import ImageRequest, ImageResult, OnPartial, PartialImage, ProviderError
from app.queue import QueueUnavailable
from app.runtime import Runtime
from app.storage.base import StorageError
from app.webhooks import jobs as webhooks

log = logging.getLogger("gih.generations.jobs")

HEARTBEAT_S = 10.0
MAX_ATTEMPTS = 3
REFERENCE_CLEANUP_AFTER = timedelta(minutes=1)


async def run_generation(rt: Runtime, generation_id: str, attempt: int) -> None:
    started = time.perf_counter()
    claimed = await claim(rt, generation_id, attempt)
    if claimed is None:
        log.info("generation %s: attempt %s has nothing to do", generation_id, attempt)
        return
    generation, references = claimed
    try:
        async with heartbeat(rt, generation_id):
            # a folder for the references only when there are some (an edit)
            with (tempfile.TemporaryDirectory(prefix="gih-job-") if references
                  else contextlib.nullcontext("")) as tmp:
                inputs, mask = await images.fetch_references(rt.storage, references, Path(tmp))
                options = dict(generation.options or {})
                request = ImageRequest(
                    model=generation.provider_model, prompt=generation.prompt,
                    size=generation.size, quality=generation.render_quality, n=generation.n,
                    output_format=generation.output_format, references=inputs, mask=mask,
                    partial_images=int(options.pop("partial_images", 0) or 0), options=options)
                relay = relay_to(rt, generation_id) if request.partial_images else None
                result = await call_provider(rt, request, relay)
            async with rt.finishing:  # what is nearest its end goes first (Runtime.finishing)
                keys = await images.store_images(rt.storage, rt.secret, generation_id,
                                                 result.images)
                final = await finish_succeeded(rt, generation_id, result, keys)
    except ProviderError as exc:
        await fail(rt, generation_id, f"the image provider failed: {exc.message}",
                   retryable=exc.retryable, attempt=attempt, started=started)
    except StorageError as exc:
        log.warning("generation %s: storage failed: %s", generation_id, exc)
        await fail(rt, generation_id, "image storage is unavailable; the credits were refunded",
                   code=ErrorCode.SERVICE_UNAVAILABLE, retryable=True, attempt=attempt,
                   started=started)
    else:
        await conclude(rt, generation_id, final, attempt=attempt, started=started)


async def claim(rt: Runtime, generation_id: str, attempt: int
                ) -> tuple[Generation, list[ReferenceImage]] | None:
    """One UPDATE ... RETURNING (+ the references of an edit)."""
    if rt.direct is None:
        async with rt.statement() as session:
            return await generations.claim(session, generation_id, attempt)
    generation = await job_sql.claim(rt.direct, generation_id, attempt, utcnow())
    if generation is None:
        return None
    if not generation.reference_count:
        return generation, []
    async with rt.reader() as session:
        return generation, await generations.references_of(session, generation_id)


async def finish_succeeded(rt: Runtime, generation_id: str, result: ImageResult,
                           keys: list[str]) -> Generation | None:
    """Every image delivered, no webhook: one statement on PostgreSQL (the common case);
    anything else (a refund owed, an event to record, already final) in a transaction."""
    if rt.direct is not None:
        final = await job_sql.finish_all_delivered(rt.direct, generation_id, result.images,
                                                   keys, result.usage, utcnow())
        if final is not None:
            return final
    async with rt.transaction() as session:
        return await generations.finish_succeeded(session, generation_id, result.images,
                                                  keys, result.usage)


async def fail(rt: Runtime, generation_id: str, message: str, *,
               code: ErrorCode = ErrorCode.GENERATION_FAILED, retryable: bool = False,
               attempt: int, started: float | None = None) -> Generation | None:
    """Fail and refund the generation (if it is not final yet), then conclude it."""
    async with rt.finishing, rt.transaction() as session:
        final = await generations.finish_failed(session, generation_id, message, code,
                                                retryable=retryable)
    await conclude(rt, generation_id, final, attempt=attempt, started=started)
    return final


async def conclude(rt: Runtime, generation_id: str, final: Generation | None, *, attempt: int,
                   started: float | None = None) -> None:
    """After a finishing transaction: wake the waiting requests, count and log the outcome
    (when this call made it final), and delete what the final generation no longer needs."""
    if final is not None:  # logged first: once announced, the answer may be read at once
        elapsed = time.perf_counter() - started if started is not None else 0.0
        log_outcome(rt, final, attempt, elapsed)
    await announce(rt, generation_id)
    if final is not None:
        await webhooks.dispatch(rt, generation_id)
        if final.reference_count:
            await discard_references(rt, final.id)
    if final is None or final.credits_refunded:  # some images (maybe stored) not delivered
        await discard_undelivered(rt, generation_id)


def relay_to(rt: Runtime, generation_id: str) -> OnPartial:
    """Partial images go to the generation's streaming readers (they cost nothing, and a lost
    one loses nothing: the generation goes on)."""
    async def relay(partial: PartialImage) -> None:
        try:
            await rt.queue.add_partial(generation_id, {
                "partial_image_index": partial.partial_image_index,
                "image_index": partial.image_index, "b64_json": partial.b64_json})
        except Exception as exc:
            log.warning("generation %s: a partial image was not relayed: %s", generation_id, exc)
    return relay


async def call_provider(rt: Runtime, request: ImageRequest,
                        on_partial: OnPartial | None = None) -> ImageResult:
    name = rt.provider.name
    started = time.perf_counter()
    try:
        result = await (rt.provider.generate(request, on_partial) if on_partial
                        else rt.provider.generate(request))
    except ProviderError as exc:
        metrics.provider_latency.labels(name, "error").observe(time.perf_counter() - started)
        metrics.provider_errors.labels(name, exc.code).inc()
        raise
    metrics.provider_latency.labels(name, "ok").observe(time.perf_counter() - started)
    return result


def log_outcome(rt: Runtime, generation: Generation, attempt: int, elapsed: float) -> None:
    mode = metrics.mode_of(generation.is_async)
    metrics.generations.labels(generation.model, generation.status, mode).inc()
    metrics.credits_refunded.inc(generation.credits_refunded)
    fields = {"event": "job", "generation_id": generation.id, "user_id": generation.user_id,
              "status": generation.status, "attempt": attempt, "mode": mode,
              "duration_ms": round(elapsed * 1000, 1),
              "credits_refunded": generation.credits_refunded}
    if generation.status == GenerationStatus.FAILED:
        fields["error"] = generation.error_message
    if rt.settings.log_prompts:
        fields["prompt"] = generation.prompt
    log.info("generation %s %s", generation.id, generation.status, extra=fields)


def heartbeat(rt: Runtime, generation_id: str) -> contextlib.AbstractAsyncContextManager[None]:
    """Keep `heartbeat_at` fresh while the job works, so the sweep leaves it alone: with every
    other job of this process, in one statement per interval."""
    return rt.heartbeats.hold(generation_id, lambda ids: beat_all(rt, ids),
                              min(HEARTBEAT_S, rt.settings.stale_after_s / 3))


async def beat_all(rt: Runtime, generation_ids: list[str]) -> None:
    async with rt.statement() as session:
        await generations.beat(session, generation_ids)


async def discard_undelivered(rt: Runtime, generation_id: str) -> None:
    try:
        async with rt.reader() as session:
            generation = await session.get(Generation, generation_id)
            if generation is None or not generation.status.is_final:
                return
            delivered = await generations.delivered_keys(session, generation_id)
        await images.discard_undelivered(rt.storage, rt.secret, generation_id, generation.n,
                                         delivered)
    except Exception as exc:  # harmless leftovers: the generation is final and billed
        log.warning("generation %s: could not delete undelivered images: %s",
                    generation_id, exc)


async def discard_references(rt: Runtime, generation_id: str) -> None:
    """A final generation's reference images are deleted (the sweep retries what fails)."""
    try:
        async with rt.reader() as session:
            rows = await generations.references_of(session, generation_id)
        if rows and await images.discard(rt.storage, [row.storage_key for row in rows]):
            async with rt.transaction() as session:
                await generations.forget_references(session, generation_id)
    except Exception as exc:
        log.warning("generation %s: could not delete its references: %s", generation_id, exc)


async def announce(rt: Runtime, generation_id: str) -> None:
    try:
        await rt.queue.notify(generation_id)
    except Exception as exc:  # waiters re-check the database on their own
        log.warning("could not announce %s: %s", generation_id, exc)


async def enqueue_or_refund(rt: Runtime, generation_id: str) -> None:
    """Queue the first attempt of a just-committed generation. One that cannot be queued is
    failed and refunded at once, and its Idempotency-Key released, so the client's retry starts
    afresh; the caller answers 503."""
    try:
        await rt.queue.enqueue(generation_id, 1)
    except QueueUnavailable as exc:
        log.warning("enqueue of %s failed: %s", generation_id, exc)
        async with rt.transaction() as session:
            final = await generations.finish_failed(session, generation_id,
                                                    "the job queue is unavailable",
                                                    ErrorCode.SERVICE_UNAVAILABLE, retryable=True)
            await generations.release_idempotency_key(session, generation_id)
        await conclude(rt, generation_id, final, attempt=1)
        raise ServiceUnavailable(
            "the job queue is unavailable; the credits were refunded, retry later") from None


# --- the sweep ---------------------------------------------------------------------------------

@dataclass
class SweepReport:
    requeued: int = 0
    failed: int = 0


async def sweep(rt: Runtime) -> SweepReport:
    """Find generations that nobody is working on and re-enqueue them, or fail and refund them.

    - past the deadline since creation: failed and refunded;
    - running with a stale heartbeat (the worker died): re-enqueued, up to MAX_ATTEMPTS;
    - queued with no job in the queue (lost on the way): re-enqueued, up to MAX_ATTEMPTS.
    Then final generations whose reference images are still stored have them deleted.
    """
    settings = rt.settings
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after_s)
    too_old = now - timedelta(seconds=settings.generation_deadline_s)
    report = SweepReport()
    metrics.sweeps.inc()
    async with rt.reader() as session:
        candidates = await generations.unfinished(session)
    for gen in candidates:
        if gen.created_at < too_old:
            if await fail(rt, gen.id, "the generation did not finish in time",
                          attempt=gen.attempts):
                report.failed += 1
            continue
        if (gen.heartbeat_at or gen.created_at) >= stale_before:
            continue
        if gen.status == GenerationStatus.QUEUED and await rt.queue.is_pending(gen.id,
                                                                             gen.attempts):
            continue
        if gen.attempts >= MAX_ATTEMPTS:
            message = f"the generation was interrupted {gen.attempts} times and was given up"
            if await fail(rt, gen.id, message, attempt=gen.attempts):
                report.failed += 1
            continue
        if await requeue(rt, gen.id, gen.attempts):
            report.requeued += 1
    await clean_references(rt, ended_before=now - REFERENCE_CLEANUP_AFTER)
    await webhooks.deliver_due(rt)
    metrics.sweep_actions.labels("requeued").inc(report.requeued)
    metrics.sweep_actions.labels("failed").inc(report.failed)
    if report.requeued or report.failed:
        log.info("sweep: %s re-enqueued, %s failed and refunded", report.requeued, report.failed)
    return report


async def requeue(rt: Runtime, generation_id: str, attempts: int) -> bool:
    async with rt.transaction() as session:
        moved = await generations.mark_requeued(session, generation_id, attempts)
    if moved:
        await rt.queue.enqueue(generation_id, attempts + 1)
    return moved


async def clean_references(rt: Runtime, *, ended_before: datetime) -> None:
    """References of final generations that `conclude` could not delete (storage was down, or
    the process died in between)."""
    async with rt.reader() as session:
        leftovers = await generations.final_with_references(session, ended_before=ended_before)
    for generation_id in leftovers:
        await discard_references(rt, generation_id)


async def sweep_forever(rt: Runtime) -> None:
    while True:
        try:
            await sweep(rt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dependency is down: try again next round
            log.warning("sweep failed: %s", exc)
        await asyncio.sleep(rt.settings.sweep_interval_s)

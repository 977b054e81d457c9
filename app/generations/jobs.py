"""The generation job and the sweep. Every step is safe to run twice.

A job claims its generation, calls the provider, stores the images under deterministic keys
(a re-run overwrites), then finishes it in one transaction with the refund it owes. Finishing
locks the generation row and does nothing if it is already final, so refunds happen once.
"""

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from app import credits, metrics
from app.db import utcnow
from app.generations.views import FINAL_STATUSES
from app.ids import new_id
from app.models import Generation, GenerationImage, ReferenceImage
from app.providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderError,
    ReferenceInput,
)
from app.runtime import Runtime
from app.storage import EXTENSIONS, StorageError, image_key

log = logging.getLogger("gih.jobs")

HEARTBEAT_S = 10.0
MAX_ATTEMPTS = 3
STORAGE_TRIES = 3


async def run_generation(rt: Runtime, generation_id: str, attempt: int) -> None:
    started = time.perf_counter()
    claimed = await claim(rt, generation_id, attempt)
    if claimed is None:
        return
    generation, references = claimed
    try:
        async with heartbeat(rt, generation_id):
            with tempfile.TemporaryDirectory(prefix="gih-job-") as tmp:
                request = await build_request(rt, generation, references, Path(tmp))
                result = await call_provider(rt, request)
            keys = await store_images(rt, generation_id, result.images)
    except ProviderError as exc:
        final = await finish_failed(rt, generation_id,
                                    f"the image provider failed: {exc.message}")
    except StorageError as exc:
        log.warning("generation %s: storage failed: %s", generation_id, exc)
        final = await finish_failed(rt, generation_id, "image storage is unavailable; the "
                                    "credits were refunded", code="serviceUnavailable")
    else:
        final = await finish_succeeded(rt, generation_id, result.images, keys, result.usage)
    await announce(rt, generation_id)
    if final is not None:
        log_job(rt, final, attempt, time.perf_counter() - started)
    if final is None or final.credits_refunded:  # some images (maybe stored) not delivered
        await discard_undelivered(rt, generation_id)


async def call_provider(rt: Runtime, request: ImageRequest) -> ImageResult:
    name = rt.provider.name
    started = time.perf_counter()
    try:
        result = await rt.provider.generate(request)
    except ProviderError as exc:
        metrics.provider_latency.labels(name, "error").observe(time.perf_counter() - started)
        metrics.provider_errors.labels(name, exc.code).inc()
        raise
    metrics.provider_latency.labels(name, "ok").observe(time.perf_counter() - started)
    return result


def log_job(rt: Runtime, generation: Generation, attempt: int, elapsed: float) -> None:
    mode = metrics.mode_of(generation.is_async)
    metrics.generations.labels(generation.model, generation.status, mode).inc()
    fields = {"event": "job", "generation_id": generation.id, "user_id": generation.user_id,
              "status": generation.status, "attempt": attempt, "mode": mode,
              "duration_ms": round(elapsed * 1000, 1), "credits_refunded":
              generation.credits_refunded}
    if generation.status == "failed":
        fields["error"] = generation.error_message
    if rt.settings.log_prompts:
        fields["prompt"] = generation.prompt
    log.info("generation %s %s", generation.id, generation.status, extra=fields)


async def claim(rt: Runtime, generation_id: str,
                attempt: int) -> tuple[Generation, list[ReferenceImage]] | None:
    """Mark the generation running, unless it is final or a newer attempt owns it."""
    async with rt.sessionmaker() as session, session.begin():
        generation = await session.get(Generation, generation_id, with_for_update=True)
        if generation is None or generation.status in FINAL_STATUSES:
            return None
        if generation.attempts != attempt:
            log.info("generation %s: attempt %s superseded by %s", generation_id, attempt,
                     generation.attempts)
            return None
        now = utcnow()
        generation.status = "running"
        generation.started_at = generation.started_at or now
        generation.heartbeat_at = now
        references = []
        if generation.reference_count:
            references = list(await session.scalars(
                select(ReferenceImage).where(ReferenceImage.generation_id == generation_id)
                .order_by(ReferenceImage.index)))
    return generation, references


@contextlib.asynccontextmanager
async def heartbeat(rt: Runtime, generation_id: str) -> AsyncIterator[None]:
    """Keep `heartbeat_at` fresh while the job works, so the sweep leaves it alone."""

    interval = min(HEARTBEAT_S, rt.settings.stale_after_s / 3)

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                async with rt.sessionmaker() as session, session.begin():
                    await session.execute(
                        update(Generation)
                        .where(Generation.id == generation_id, Generation.status == "running")
                        .values(heartbeat_at=utcnow()))
            except Exception as exc:  # the database may be briefly away; keep trying
                log.warning("heartbeat of %s failed: %s", generation_id, exc)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def build_request(rt: Runtime, generation: Generation, references: list[ReferenceImage],
                        tmp: Path) -> ImageRequest:
    inputs = []
    for ref in references:
        path = tmp / f"reference-{ref.index}"
        await with_retries(lambda ref=ref, path=path: rt.storage.get_file(ref.storage_key, path))
        inputs.append(ReferenceInput(path=path, filename=ref.filename or f"reference-{ref.index}",
                                     content_type=ref.content_type))
    return ImageRequest(model=generation.provider_model, prompt=generation.prompt,
                        size=generation.size, quality=generation.render_quality, n=generation.n,
                        output_format=generation.output_format, references=tuple(inputs))


async def store_images(rt: Runtime, generation_id: str,
                       images: list[GeneratedImage]) -> list[str]:
    keys = []
    for index, image in enumerate(images):
        key = image_key(generation_id, index, image.content_type, rt.secret)
        await with_retries(lambda key=key, image=image: rt.storage.put_bytes(
            key, image.data, image.content_type))
        keys.append(key)
    return keys


async def with_retries(action, tries: int = STORAGE_TRIES) -> None:  # noqa: ANN001
    for attempt in range(1, tries + 1):
        try:
            await action()
            return
        except StorageError:
            if attempt == tries:
                raise
            await asyncio.sleep(0.5 * 2 ** attempt)


async def finish_succeeded(rt: Runtime, generation_id: str, images: list[GeneratedImage],
                           keys: list[str], usage: dict | None) -> Generation | None:
    if not images:
        return await finish_failed(rt, generation_id, "the image provider returned no images")
    async with rt.sessionmaker() as session, session.begin():
        generation = await session.get(Generation, generation_id, with_for_update=True)
        if generation is None or generation.status in FINAL_STATUSES:
            return None
        now = utcnow()
        delivered = min(len(images), generation.n)
        for index in range(delivered):
            image = images[index]
            session.add(GenerationImage(
                id=new_id("img"), generation_id=generation_id, index=index,
                storage_key=keys[index], width=image.width, height=image.height,
                content_type=image.content_type, byte_size=len(image.data), created_at=now))
        missing = generation.n - delivered
        if missing:
            owed = missing * (generation.credits_requested // generation.n)
            await credits.refund(session, generation.user_id, generation_id, owed,
                                 note=f"{missing} of {generation.n} images not delivered")
            generation.credits_refunded = owed
        generation.status = "succeeded"
        generation.provider_usage = usage
        generation.completed_at = now
    metrics.credits_refunded.inc(generation.credits_refunded)
    return generation


async def finish_failed(rt: Runtime, generation_id: str, message: str,
                        code: str = "generationFailed") -> Generation | None:
    """Fail the generation and refund everything it still holds; None if already final."""
    async with rt.sessionmaker() as session, session.begin():
        generation = await session.get(Generation, generation_id, with_for_update=True)
        if generation is None or generation.status in FINAL_STATUSES:
            return None
        owed = generation.credits_requested - generation.credits_refunded
        if owed > 0:
            await credits.refund(session, generation.user_id, generation_id, owed,
                                 note="generation failed")
        generation.credits_refunded = generation.credits_requested
        generation.status = "failed"
        generation.error_code = code
        generation.error_message = message
        generation.completed_at = utcnow()
    metrics.credits_refunded.inc(owed)
    return generation


async def discard_undelivered(rt: Runtime, generation_id: str) -> None:
    """Delete image objects a final generation does not deliver (left by an earlier attempt
    that stored more images, or by a failed one), so the bucket holds only what is billed."""
    try:
        async with rt.reader() as session:
            generation = await session.get(Generation, generation_id)
            if generation is None or generation.status not in FINAL_STATUSES:
                return
            delivered = set(await session.scalars(
                select(GenerationImage.storage_key)
                .where(GenerationImage.generation_id == generation_id)))
        if len(delivered) == generation.n:
            return
        await rt.storage.delete([
            key for index in range(generation.n) for content_type in EXTENSIONS
            if (key := image_key(generation_id, index, content_type, rt.secret)) not in delivered])
    except Exception as exc:  # harmless leftovers: the generation is final and billed
        log.warning("generation %s: could not delete undelivered images: %s",
                    generation_id, exc)


async def announce(rt: Runtime, generation_id: str) -> None:
    try:
        await rt.queue.notify(generation_id)
    except Exception as exc:  # waiters re-check the database on their own
        log.warning("could not announce %s: %s", generation_id, exc)


@dataclass
class SweepReport:
    requeued: int = 0
    failed: int = 0


async def sweep(rt: Runtime) -> SweepReport:
    """Find generations that nobody is working on and re-enqueue them, or fail and refund them.

    - past the deadline since creation: failed and refunded;
    - running with a stale heartbeat (the worker died): re-enqueued, up to MAX_ATTEMPTS;
    - queued with no job in the queue (lost on the way): re-enqueued, up to MAX_ATTEMPTS.
    """
    settings = rt.settings
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after_s)
    report = SweepReport()
    metrics.sweeps.inc()
    async with rt.sessionmaker() as session:
        rows = (await session.execute(
            select(Generation.id, Generation.status, Generation.attempts, Generation.created_at,
                   Generation.heartbeat_at)
            .where(Generation.status.in_(("queued", "running")))
            .order_by(Generation.created_at).limit(1000))).all()
    for gen_id, status, attempts, created_at, beat in rows:
        if created_at < now - timedelta(seconds=settings.generation_deadline_s):
            failed = await finish_failed(rt, gen_id, "the generation did not finish in time")
            if failed:
                report.failed += 1
                await announce(rt, gen_id)
                log_job(rt, failed, attempts, 0.0)
                await discard_undelivered(rt, gen_id)
            continue
        if (beat or created_at) >= stale_before:
            continue
        if status == "queued" and await rt.queue.is_pending(gen_id, attempts):
            continue
        if attempts >= MAX_ATTEMPTS:
            failed = await finish_failed(rt, gen_id, f"the generation was interrupted "
                                                     f"{attempts} times and was given up")
            if failed:
                report.failed += 1
                await announce(rt, gen_id)
                log_job(rt, failed, attempts, 0.0)
                await discard_undelivered(rt, gen_id)
            continue
        if await requeue(rt, gen_id, attempts):
            report.requeued += 1
    metrics.sweep_actions.labels("requeued").inc(report.requeued)
    metrics.sweep_actions.labels("failed").inc(report.failed)
    if report.requeued or report.failed:
        log.info("sweep: %s re-enqueued, %s failed and refunded", report.requeued, report.failed)
    return report


async def requeue(rt: Runtime, generation_id: str, attempts: int) -> bool:
    async with rt.sessionmaker() as session, session.begin():
        moved = await session.execute(
            update(Generation)
            .where(Generation.id == generation_id, Generation.attempts == attempts,
                   Generation.status.in_(("queued", "running")))
            .values(attempts=attempts + 1, status="queued", heartbeat_at=utcnow()))
    if moved.rowcount != 1:
        return False
    await rt.queue.enqueue(generation_id, attempts + 1)
    return True


async def sweep_forever(rt: Runtime) -> None:
    while True:
        try:
            await sweep(rt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dependency is down: try again next round
            log.warning("sweep failed: %s", exc)
        await asyncio.sleep(rt.settings.sweep_interval_s)

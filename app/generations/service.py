"""Accepting a generation: idempotency, reference storage, the charge, the enqueue, the wait."""

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app import credits, metrics
from app.api_keys import Principal
from app.db import utcnow
from app.errors import IdempotencyConflict, NotFound, ServiceUnavailable
from app.generations.inputs import GenerationInput
from app.generations.jobs import finish_failed
from app.generations.views import FINAL_STATUSES
from app.ids import new_id
from app.jobs import QueueUnavailable
from app.models import Generation, GenerationImage, ReferenceImage, User
from app.runtime import Runtime
from app.storage import StorageError, reference_key
from app.uploads import ReferenceFile

log = logging.getLogger("gih.generations")

RECHECK_S = 15.0  # a waiting request re-reads the database this often if no wake-up comes


@dataclass(frozen=True)
class Accepted:
    generation_id: str
    created: bool  # False: an Idempotency-Key replay of an earlier request
    # A new generation as written, and the balance after its charge: enough to answer an
    # async request without reading them back.
    generation: Generation | None = None
    balance: credits.Balance | None = None


async def submit(rt: Runtime, principal: Principal, request: GenerationInput,
                 references: list[ReferenceFile], *, idempotency_key: str | None) -> Accepted:
    fingerprint = request.fingerprint([r.sha256 for r in references])
    if idempotency_key:
        earlier = await replayed(rt, principal.user.id, idempotency_key, fingerprint)
        if earlier:
            return Accepted(earlier, created=False)
    generation_id = new_id("gen")
    rows = await store_references(rt, generation_id, references)
    try:
        async with rt.sessionmaker() as session, session.begin():
            generation = Generation(
                id=generation_id, user_id=principal.user.id, api_key_id=principal.key_id,
                status="queued", model=request.model.id,
                provider_model=request.model.provider_model, prompt=request.prompt,
                size=request.resolved.size, aspect_ratio=request.resolved.aspect_ratio,
                quality=request.resolved.tier, render_quality=request.resolved.render_quality,
                output_format=request.output_format, n=request.n, is_async=request.is_async,
                reference_count=len(rows), credits_requested=request.credits_requested,
                idempotency_key=idempotency_key, request_hash=fingerprint, attempts=1,
                created_at=utcnow(), heartbeat_at=utcnow())
            session.add(generation)
            await session.flush()  # the idempotency key's uniqueness is checked here
            session.add_all(rows)
            balance = await credits.charge(
                session, principal.user.id, request.credits_requested,
                generation_id=generation_id,
                note=f"{request.n} x {request.model.id} {request.resolved.tier}")
    except IntegrityError:
        await discard_references(rt, rows)
        if idempotency_key:  # lost the race to a concurrent request with the same key
            earlier = await replayed(rt, principal.user.id, idempotency_key, fingerprint)
            if earlier:
                return Accepted(earlier, created=False)
            raise IdempotencyConflict("a request with this Idempotency-Key is in progress") \
                from None
        raise
    except BaseException:
        await discard_references(rt, rows)
        raise
    metrics.generations.labels(request.model.id, "accepted",
                               metrics.mode_of(request.is_async)).inc()
    metrics.credits_charged.inc(request.credits_requested)
    await enqueue_or_refund(rt, generation_id)
    return Accepted(generation_id, created=True, generation=generation, balance=balance)


async def replayed(rt: Runtime, user_id: str, idempotency_key: str,
                   fingerprint: str) -> str | None:
    async with rt.reader() as session:
        row = (await session.execute(
            select(Generation.id, Generation.request_hash)
            .where(Generation.user_id == user_id,
                   Generation.idempotency_key == idempotency_key))).first()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request")
    return row.id


async def store_references(rt: Runtime, generation_id: str,
                           references: list[ReferenceFile]) -> list[ReferenceImage]:
    rows = []
    try:
        for index, ref in enumerate(references):
            key = reference_key(generation_id, index, ref.content_type, rt.secret)
            await rt.storage.put_file(key, ref.path, ref.content_type)
            rows.append(ReferenceImage(generation_id=generation_id, index=index,
                                       storage_key=key, filename=ref.filename[:255],
                                       content_type=ref.content_type, byte_size=ref.size))
    except StorageError as exc:
        await discard_references(rt, rows)
        log.warning("storing references failed: %s", exc)
        raise ServiceUnavailable("image storage is unavailable; nothing was charged") from None
    return rows


async def discard_references(rt: Runtime, rows: list[ReferenceImage]) -> None:
    try:
        await rt.storage.delete([row.storage_key for row in rows])
    except Exception as exc:  # best effort: an orphan object costs storage, not money
        log.warning("could not delete unused references: %s", exc)


async def enqueue_or_refund(rt: Runtime, generation_id: str) -> None:
    """A generation that cannot be queued is failed and refunded at once, and its
    Idempotency-Key released, so the client's retry starts afresh."""
    try:
        await rt.queue.enqueue(generation_id, 1)
    except QueueUnavailable as exc:
        log.warning("enqueue of %s failed: %s", generation_id, exc)
        await finish_failed(rt, generation_id, "the job queue is unavailable",
                            code="serviceUnavailable")
        async with rt.sessionmaker() as session, session.begin():
            await session.execute(update(Generation).where(Generation.id == generation_id)
                                  .values(idempotency_key=None))
        raise ServiceUnavailable(
            "the job queue is unavailable; the credits were refunded, retry later") from None


async def wait_until_final(rt: Runtime, generation_id: str, timeout: float) -> None:
    """Sleep until the job announces the end (or `timeout` passes), re-reading the database
    only on a wake-up or every RECHECK_S as a fallback."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with rt.queue.watch(generation_id) as watch:
        while True:
            if await status_of(rt, generation_id) in FINAL_STATUSES:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await watch.wait(min(remaining, RECHECK_S))


async def status_of(rt: Runtime, generation_id: str) -> str | None:
    async with rt.reader() as session:
        return await session.scalar(select(Generation.status)
                                    .where(Generation.id == generation_id))


async def load(rt: Runtime, generation_id: str, user_id: str, *, with_balance: bool = False
               ) -> tuple[Generation, list[GenerationImage], credits.Balance | None]:
    """A generation and its images, for its owner only (anyone else gets notFound), and the
    owner's balance if asked."""
    async with rt.reader() as session:
        generation = await session.get(Generation, generation_id)
        if generation is None or generation.user_id != user_id:
            raise NotFound(f"no generation {generation_id}")
        images = []
        if generation.status == "succeeded":  # images are written with that status
            images = list(await session.scalars(
                select(GenerationImage).where(GenerationImage.generation_id == generation_id)))
        balance = None
        if with_balance:
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound("no such user")
            balance = await credits.balance(session, user)
    return generation, images, balance

"""A generation's life in the database: accept (with its charge), claim, heartbeat, finish (with
its refund), requeue, read. Every function works in the session it is given and never commits:
the endpoint or the job wrapper (`jobs.py`) owns the transaction.

Finishing locks the generation row and does nothing if it is already final, so a job that runs
twice never refunds twice.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.credits import service as credits
from app.credits.schemas import Balance
from app.db import utcnow
from app.errors import ErrorCode, IdempotencyConflict, NotCancelable, NotFound
from app.generations.request import GenerationInput
from app.ids import new_id
from app.keys.service import Principal
from app.limits import service as limits
from app.models import (
    UNFINISHED_STATUSES,
    Generation,
    GenerationImage,
    GenerationStatus,
    ReferenceImage,
    User,
)
from app.providers.base import GeneratedImage
from app.webhooks import service as webhooks

GENERATION_ID = "gen_"


@dataclass(frozen=True)
class Accepted:
    generation: Generation
    created: bool  # False: an Idempotency-Key replay of an earlier request
    balance: Balance | None = None  # after the charge, when created


async def accept(session: AsyncSession, principal: Principal, wanted: GenerationInput, *,
                 generation_id: str, references: list[ReferenceImage], fingerprint: str,
                 idempotency_key: str | None, settings: Settings,
                 retry_window: timedelta | None = None) -> Accepted:
    """Write the generation, its references and its charge (InsufficientCredits: nothing is
    written), or return the earlier generation this request repeats: the same Idempotency-Key,
    or (given `retry_window`) the same request by the same key, recently, not failed."""
    user_id = principal.user.id
    if idempotency_key:
        earlier = await find_replay(session, user_id, idempotency_key, fingerprint)
        if earlier:
            return Accepted(earlier, created=False)
    elif retry_window is not None:
        earlier = await find_retried(session, principal, fingerprint, retry_window)
        if earlier:
            return Accepted(earlier, created=False)
    generation = new_generation(principal, wanted, generation_id=generation_id,
                                reference_count=len(references), fingerprint=fingerprint,
                                idempotency_key=idempotency_key)
    if idempotency_key:
        try:
            # The key's uniqueness is checked here; a request that loses the race to a
            # concurrent one with the same key undoes its reservation of the key's limits too.
            async with session.begin_nested():
                generation.spend_period = await limits.reserve(
                    session, principal, wanted.credits_requested, settings=settings)
                session.add(generation)
                await session.flush()
        except IntegrityError:  # lost the race to a concurrent request with the same key
            earlier = await find_replay(session, user_id, idempotency_key, fingerprint)
            if earlier:
                return Accepted(earlier, created=False)
            raise IdempotencyConflict(
                "a request with this Idempotency-Key is in progress") from None
    else:
        generation.spend_period = await limits.reserve(
            session, principal, wanted.credits_requested, settings=settings)
        session.add(generation)
        await session.flush()
    session.add_all(references)
    balance = await credits.charge(session, user_id, wanted.credits_requested,
                                   generation_id=generation_id, note=charge_note(wanted))
    return Accepted(generation, created=True, balance=balance)


def new_generation(principal: Principal, wanted: GenerationInput, *, generation_id: str,
                   reference_count: int, fingerprint: str,
                   idempotency_key: str | None) -> Generation:
    now = utcnow()
    return Generation(
        id=generation_id, user_id=principal.user.id, api_key_id=principal.key_id,
        status=GenerationStatus.QUEUED, model=wanted.model.id,
        provider_model=wanted.model.provider_model, prompt=wanted.prompt,
        size=wanted.resolved.size, aspect_ratio=wanted.resolved.aspect_ratio,
        quality=wanted.resolved.tier, render_quality=wanted.resolved.render_quality,
        output_format=wanted.output_format, n=wanted.n, is_async=wanted.is_async,
        reference_count=reference_count, credits_requested=wanted.credits_requested,
        options=wanted.options or None,
        webhook_url=wanted.webhook_url,
        webhook_events=list(wanted.webhook_events) if wanted.webhook_events else None,
        idempotency_key=idempotency_key, request_hash=fingerprint, attempts=1,
        created_at=now, heartbeat_at=now)


def charge_note(wanted: GenerationInput) -> str:
    return f"{wanted.n} x {wanted.model.id} {wanted.resolved.tier}"


async def find_replay(session: AsyncSession, user_id: str, idempotency_key: str,
                      fingerprint: str) -> Generation | None:
    earlier = await session.scalar(
        select(Generation).where(Generation.user_id == user_id,
                                 Generation.idempotency_key == idempotency_key))
    if earlier is not None and earlier.request_hash != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request")
    return earlier


async def find_retried(session: AsyncSession, principal: Principal, fingerprint: str,
                       window: timedelta) -> Generation | None:
    """The latest generation of this key with this fingerprint within `window` that did not
    fail (a failed one was refunded: its retry is a new generation)."""
    return await session.scalar(
        select(Generation)
        .where(Generation.user_id == principal.user.id,
               Generation.api_key_id == principal.key_id,
               Generation.request_hash == fingerprint,
               Generation.created_at > utcnow() - window,
               Generation.status != GenerationStatus.FAILED)
        .order_by(Generation.created_at.desc()).limit(1))


async def release_idempotency_key(session: AsyncSession, generation_id: str) -> None:
    """So that the client's retry starts afresh (used when the job could not be queued)."""
    await session.execute(update(Generation).where(Generation.id == generation_id)
                          .values(idempotency_key=None))


async def claim(session: AsyncSession, generation_id: str,
                attempt: int) -> tuple[Generation, list[ReferenceImage]] | None:
    """Mark the generation running, unless it is final or a newer attempt owns it: one
    conditional UPDATE ... RETURNING (the row lock and the check in one statement)."""
    now = utcnow()
    generation = await session.scalar(
        update(Generation)
        .where(Generation.id == generation_id, Generation.attempts == attempt,
               Generation.status.in_(UNFINISHED_STATUSES))
        .values(status=GenerationStatus.RUNNING,
                started_at=func.coalesce(Generation.started_at,
                                         literal(now, Generation.started_at.type)),
                heartbeat_at=now)
        .returning(Generation)
        .execution_options(populate_existing=True))
    if generation is None:
        return None
    references = await references_of(session, generation_id) if generation.reference_count else []
    return generation, references


async def references_of(session: AsyncSession, generation_id: str) -> list[ReferenceImage]:
    """The stored inputs of a generation (reference images, then the mask), in order."""
    return list(await session.scalars(
        select(ReferenceImage).where(ReferenceImage.generation_id == generation_id)
        .order_by(ReferenceImage.index)))


async def beat(session: AsyncSession, generation_ids: list[str]) -> None:
    """Refresh the heartbeat of these generations where they still run, so the sweep leaves
    them alone."""
    for start in range(0, len(generation_ids), 500):
        await session.execute(
            update(Generation)
            .where(Generation.id.in_(generation_ids[start:start + 500]),
                   Generation.status == GenerationStatus.RUNNING)
            .values(heartbeat_at=utcnow()))


async def finish_succeeded(session: AsyncSession, generation_id: str,
                           images: list[GeneratedImage], keys: list[str],
                           usage: dict[str, object] | None) -> Generation | None:
    """Record the delivered images and refund the missing ones; None if already final."""
    if not images:
        return await finish_failed(session, generation_id, "the image provider returned no images")
    generation = await session.get(Generation, generation_id, with_for_update=True)
    if generation is None or generation.status.is_final:
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
        await limits.give_back(session, generation, owed)
        generation.credits_refunded = owed
    generation.status = GenerationStatus.SUCCEEDED
    generation.provider_usage = usage
    generation.input_tokens, generation.output_tokens = token_counts(usage)
    generation.completed_at = now
    await webhooks.record_final(session, generation)
    return generation


def token_counts(usage: dict[str, object] | None) -> tuple[int | None, int | None]:
    """The provider's input and output tokens, when it reported them."""
    def count(name: str) -> int | None:
        value = (usage or {}).get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return count("input_tokens"), count("output_tokens")


async def finish_failed(session: AsyncSession, generation_id: str, message: str,
                        code: ErrorCode = ErrorCode.GENERATION_FAILED, *,
                        retryable: bool = False) -> Generation | None:
    """Fail the generation and refund everything it still holds; None if already final."""
    generation = await session.get(Generation, generation_id, with_for_update=True)
    if generation is None or generation.status.is_final:
        return None
    await refund_all(session, generation, note="generation failed")
    generation.status = GenerationStatus.FAILED
    generation.error_code = code
    generation.error_message = message
    generation.retryable = retryable
    generation.completed_at = utcnow()
    await webhooks.record_final(session, generation)
    return generation


async def cancel(session: AsyncSession, generation_id: str, user_id: str) -> Generation:
    """A queued generation becomes canceled, fully refunded; its job then does nothing.
    NotCancelable once it runs or is final; NotFound for anyone but its owner."""
    generation = None
    if is_generation_id(generation_id):
        generation = await session.get(Generation, generation_id, with_for_update=True)
    if generation is None or generation.user_id != user_id:
        raise NotFound(f"no generation {generation_id[:64]}")
    if generation.status != GenerationStatus.QUEUED:
        raise NotCancelable(f"generation {generation_id} is {generation.status.value}; only a "
                            "queued generation can be canceled", generation_id=generation_id)
    await refund_all(session, generation, note="generation canceled")
    generation.status = GenerationStatus.CANCELED
    generation.completed_at = utcnow()
    await webhooks.record_final(session, generation)
    return generation


async def refund_all(session: AsyncSession, generation: Generation, *, note: str) -> None:
    """Give back everything the generation still holds (its key's allowance too)."""
    owed = generation.credits_requested - generation.credits_refunded
    if owed > 0:
        await credits.refund(session, generation.user_id, generation.id, owed, note=note)
        await limits.give_back(session, generation, owed)
    generation.credits_refunded = generation.credits_requested


@dataclass(frozen=True)
class Unfinished:
    id: str
    status: GenerationStatus
    attempts: int
    created_at: datetime
    heartbeat_at: datetime | None


async def unfinished(session: AsyncSession, limit: int = 1000) -> list[Unfinished]:
    """Queued and running generations, oldest first (for the sweep)."""
    rows = await session.execute(
        select(Generation.id, Generation.status, Generation.attempts, Generation.created_at,
               Generation.heartbeat_at)
        .where(Generation.status.in_(UNFINISHED_STATUSES))
        .order_by(Generation.created_at).limit(limit))
    return [Unfinished(*row) for row in rows]


async def mark_requeued(session: AsyncSession, generation_id: str, attempts: int) -> bool:
    """Hand the generation to a new attempt (older attempts then do nothing); False if it
    moved on meanwhile."""
    moved = await session.execute(
        update(Generation)
        .where(Generation.id == generation_id, Generation.attempts == attempts,
               Generation.status.in_(UNFINISHED_STATUSES))
        .values(attempts=attempts + 1, status=GenerationStatus.QUEUED, heartbeat_at=utcnow()))
    return moved.rowcount == 1  # type: ignore[attr-defined]


async def delivered_keys(session: AsyncSession, generation_id: str) -> set[str]:
    return set(await session.scalars(
        select(GenerationImage.storage_key).where(GenerationImage.generation_id == generation_id)))


async def final_with_references(session: AsyncSession, *, ended_before: datetime,
                                limit: int = 100) -> list[str]:
    """Ids of final generations whose reference images are still stored (for the sweep)."""
    return list(await session.scalars(
        select(Generation.id).distinct()
        .join(ReferenceImage, ReferenceImage.generation_id == Generation.id)
        .where(Generation.status.not_in(UNFINISHED_STATUSES),
               Generation.completed_at < ended_before)
        .limit(limit)))


async def forget_references(session: AsyncSession, generation_id: str) -> None:
    """The reference rows of a final generation whose objects have been deleted."""
    await session.execute(
        delete(ReferenceImage).where(ReferenceImage.generation_id == generation_id))


def is_generation_id(value: str) -> bool:
    """The shape new_id("gen") makes; anything else cannot exist (and never reaches SQL)."""
    body = value.removeprefix(GENERATION_ID)
    return (value.startswith(GENERATION_ID) and 0 < len(body) <= 64
            and body.isascii() and body.isalnum())


async def get_for_owner(session: AsyncSession, generation_id: str,
                        user_id: str) -> tuple[Generation, list[GenerationImage]]:
    """A generation and its images, for its owner only (anyone else gets notFound)."""
    generation = None
    if is_generation_id(generation_id):
        generation = await session.get(Generation, generation_id)
    if generation is None or generation.user_id != user_id:
        raise NotFound(f"no generation {generation_id[:64]}")
    images: list[GenerationImage] = []
    if generation.status == GenerationStatus.SUCCEEDED:  # images are written with that status
        images = list(await session.scalars(
            select(GenerationImage).where(GenerationImage.generation_id == generation_id)))
    return generation, images


async def balance_of(session: AsyncSession, user_id: str) -> Balance:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    return await credits.balance(session, user)



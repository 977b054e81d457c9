"""Webhooks in the database: checked targets, the event row written in the transaction that ends
a generation, the users' signing secrets, and each event's claims and attempts. Every function
works in the session it is given and never commits. (Sending is in delivery.py, the jobs that
drive it in jobs.py.)

An attempt is claimed before it is sent: `claim` moves `attempts` from N-1 to N and holds the
event for a lease, in one conditional UPDATE, so two jobs (or a job and the sweep's next one)
never send one event at once; the outcome is recorded only by the holder of attempt N. A
worker that dies mid-attempt leaves the event pending: once the lease passes, it is due again.
"""

import secrets as random
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import InvalidRequest, NotFound
from app.ids import new_id
from app.models import Generation, User, WebhookAttempt, WebhookEvent, WebhookSecret, WebhookStatus
from app.webhooks import ssrf
from app.webhooks.delivery import Answer
from app.webhooks.policy import DeliveryPolicy
from app.webhooks.signing import derive_secret

ROTATION_OVERLAP = timedelta(hours=24)  # a rotated secret still signs this long
CLAIM_SLACK = timedelta(seconds=1)  # a retry job may run a little early by another's clock
RECORDED_KEPT = 10_000

# Generations whose event this process wrote and has not dispatched yet. `dispatch` runs right
# after the commit, in the process that wrote the event, so for every other generation (most
# have no webhook) it skips its query. A hint lost (a rollback, the bound) only leaves the
# event to the sweep, which sends whatever is due.
_recorded: OrderedDict[str, None] = OrderedDict()


# --- targets and events --------------------------------------------------------------------------

async def check_target(url: str | None, *, allow_private: bool) -> None:
    """Refuse (400, param webhook_url) a URL that is not http(s) or resolves to a non-public
    address, unless private targets are allowed."""
    if url is None:
        return
    try:
        target = ssrf.parse(url)
        if not allow_private:
            await ssrf.public_addresses(target, allow_private=False)
    except ssrf.TargetRefused as exc:
        raise InvalidRequest(str(exc), param="webhook_url") from None


def event_type(generation: Generation) -> str:
    return f"generation.{generation.status.value}"


async def record_final(session: AsyncSession, generation: Generation) -> WebhookEvent | None:
    """The event of the generation's final status, if it has a webhook and wants that event;
    written in the caller's transaction (the one that ends the generation)."""
    if not generation.webhook_url or not generation.status.is_final:
        return None
    kind = event_type(generation)
    if generation.webhook_events is not None and kind not in generation.webhook_events:
        return None
    existing = await session.scalar(select(WebhookEvent).where(
        WebhookEvent.generation_id == generation.id, WebhookEvent.type == kind))
    _note_recorded(generation.id)
    if existing is not None:
        return existing
    now = utcnow()
    event = WebhookEvent(id=new_id("msg"), user_id=generation.user_id,
                         generation_id=generation.id, type=kind, url=generation.webhook_url,
                         status=WebhookStatus.PENDING, attempts=0, next_attempt_at=now,
                         created_at=now)
    session.add(event)
    await session.flush()
    return event


def _note_recorded(generation_id: str) -> None:
    _recorded[generation_id] = None
    while len(_recorded) > RECORDED_KEPT:
        _recorded.popitem(last=False)


def take_recorded(generation_id: str) -> bool:
    """Whether this process wrote an event of the generation since it last asked."""
    if generation_id not in _recorded:
        return False
    del _recorded[generation_id]
    return True


@dataclass(frozen=True)
class Due:
    """An event to attempt, and the number its next attempt will have."""

    event_id: str
    attempt: int


async def pending_of(session: AsyncSession, generation_id: str) -> list[Due]:
    rows = await session.execute(
        select(WebhookEvent.id, WebhookEvent.attempts)
        .where(WebhookEvent.generation_id == generation_id,
               WebhookEvent.status == WebhookStatus.PENDING))
    return [Due(event_id, attempts + 1) for event_id, attempts in rows]


async def due(session: AsyncSession, *, now: datetime, limit: int) -> list[Due]:
    """Pending events whose next attempt is due, oldest first. On PostgreSQL the rows are
    locked and rows another sweep holds are skipped, so concurrent sweeps share the batch."""
    query = (select(WebhookEvent.id, WebhookEvent.attempts)
             .where(WebhookEvent.status == WebhookStatus.PENDING,
                    WebhookEvent.next_attempt_at <= now)
             .order_by(WebhookEvent.next_attempt_at).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [Due(event_id, attempts + 1) for event_id, attempts in await session.execute(query)]


async def claim(session: AsyncSession, event_id: str, attempt: int, *, now: datetime,
                lease: timedelta) -> bool:
    """Take attempt number `attempt` of a due pending event, holding it for `lease`; False
    if it is not due, not pending, or that attempt was taken already."""
    result = await session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.status == WebhookStatus.PENDING,
               WebhookEvent.attempts == attempt - 1,
               WebhookEvent.next_attempt_at <= now + CLAIM_SLACK)
        .values(attempts=attempt, next_attempt_at=now + lease)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def claim_for_redelivery(session: AsyncSession, event_id: str, *, now: datetime,
                               lease: timedelta) -> int:
    """Whatever its state (delivered, failed, gone), make the event pending and take its next
    attempt at once; the attempt's number."""
    event = await session.get(WebhookEvent, event_id.strip(), with_for_update=True)
    if event is None:
        raise NotFound(f"no webhook event {event_id[:64]}")
    event.status = WebhookStatus.PENDING
    event.attempts += 1
    event.next_attempt_at = now + lease
    return event.attempts


async def record_attempt(session: AsyncSession, event_id: str, attempt: int, answer: Answer,
                         *, at: datetime, policy: DeliveryPolicy) -> WebhookEvent | None:
    """Keep the attempt, and move the event on (delivered, gone, retried later, or given up)
    if this attempt still holds it; the event (None if it was deleted)."""
    event = await session.get(WebhookEvent, event_id, with_for_update=True)
    if event is None:
        return None
    session.add(WebhookAttempt(event_id=event_id, attempted_at=at,
                               status_code=answer.status_code, error=answer.error,
                               duration_ms=answer.duration_ms))
    if event.status != WebhookStatus.PENDING or event.attempts != attempt:
        return event  # an attempt that outlived its lease: another one took over
    now = utcnow()
    event.last_status = answer.status_code
    event.last_error = answer.error
    if answer.delivered:
        event.status, event.delivered_at, event.next_attempt_at = \
            WebhookStatus.DELIVERED, now, None
    elif answer.gone:
        event.status, event.next_attempt_at = WebhookStatus.GONE, None
    else:
        event.next_attempt_at = policy.next_attempt(attempt, event.created_at, now)
        if event.next_attempt_at is None:
            event.status = WebhookStatus.FAILED
    return event


async def give_up(session: AsyncSession, event_id: str, attempt: int, reason: str) -> None:
    """An event that cannot be sent at all (its generation is gone): failed, with the reason."""
    await session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.attempts == attempt,
               WebhookEvent.status == WebhookStatus.PENDING)
        .values(status=WebhookStatus.FAILED, last_error=reason, next_attempt_at=None)
        .execution_options(synchronize_session=False))


@dataclass(frozen=True)
class Delivery:
    event: WebhookEvent
    email: str


async def deliveries(session: AsyncSession, *, user_id: str | None = None,
                     failed: bool = False, limit: int = 100) -> list[Delivery]:
    """The latest events, newest first: of one user, and/or only those given up or gone."""
    query = (select(WebhookEvent, User.email).join(User, User.id == WebhookEvent.user_id)
             .order_by(WebhookEvent.created_at.desc(), WebhookEvent.id.desc()).limit(limit))
    if user_id is not None:
        query = query.where(WebhookEvent.user_id == user_id)
    if failed:
        query = query.where(WebhookEvent.status.in_((WebhookStatus.FAILED, WebhookStatus.GONE)))
    return [Delivery(event, address) for event, address in await session.execute(query)]


async def attempts_of(session: AsyncSession, event_id: str) -> list[WebhookAttempt]:
    return list(await session.scalars(
        select(WebhookAttempt).where(WebhookAttempt.event_id == event_id)
        .order_by(WebhookAttempt.id)))


# --- signing secrets -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Secret:
    value: str  # whsec_...
    created_at: datetime


def _secret_of(row: WebhookSecret, server_secret: bytes) -> Secret:
    return Secret(derive_secret(server_secret, row.user_id, row.salt), row.created_at)


async def _lock_user(session: AsyncSession, user_id: str) -> None:
    """Serialise the creation and rotation of one user's secret (two first uses at once must
    not make two current secrets)."""
    found = await session.scalar(select(User.id).where(User.id == user_id)
                                 .with_for_update(key_share=True))
    if found is None:
        raise NotFound("no such user")


async def _current_row(session: AsyncSession, user_id: str) -> WebhookSecret | None:
    return await session.scalar(
        select(WebhookSecret).where(WebhookSecret.user_id == user_id,
                                    WebhookSecret.retired_at.is_(None))
        .order_by(WebhookSecret.created_at.desc()).limit(1))


def _new_row(user_id: str, now: datetime) -> WebhookSecret:
    return WebhookSecret(id=new_id("whs"), user_id=user_id, salt=random.token_urlsafe(32),
                         created_at=now)


async def current_secret(session: AsyncSession, user_id: str, *,
                         server_secret: bytes) -> Secret:
    """The user's signing secret, made on first use."""
    row = await _current_row(session, user_id)
    if row is None:
        await _lock_user(session, user_id)
        row = await _current_row(session, user_id)
        if row is None:
            row = _new_row(user_id, utcnow())
            session.add(row)
            await session.flush()
    return _secret_of(row, server_secret)


async def rotate_secret(session: AsyncSession, user_id: str, *, server_secret: bytes) -> Secret:
    """A new signing secret; the previous one goes on signing (beside it) for 24 h."""
    await _lock_user(session, user_id)
    now = utcnow()
    await session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.user_id == user_id, WebhookSecret.retired_at.is_(None))
        .values(retired_at=now).execution_options(synchronize_session=False))
    row = _new_row(user_id, now)
    session.add(row)
    await session.flush()
    return _secret_of(row, server_secret)


async def signing_secrets(session: AsyncSession, user_id: str, *, server_secret: bytes,
                          now: datetime) -> list[str]:
    """Every secret an event of the user is signed with now: the current one (made if need
    be) and those rotated out less than 24 h ago."""
    current = await current_secret(session, user_id, server_secret=server_secret)
    rows = await session.scalars(
        select(WebhookSecret).where(WebhookSecret.user_id == user_id,
                                    WebhookSecret.retired_at > now - ROTATION_OVERLAP)
        .order_by(WebhookSecret.created_at.desc()))
    return [current.value, *(_secret_of(row, server_secret).value for row in rows)]

"""Delivering webhook events: at least once, signed, with backoff.

The event row is committed with the generation's end. Then `dispatch` queues its first attempt
(an arq job run by `gih worker`, or a task of the embedded process); a failed attempt queues the
next one, deferred by the backoff; and every sweep round queues whatever is due anyway
(`deliver_due`), which is what makes a lost job (a crash after the commit, Redis away, a worker
killed mid-attempt) a late delivery rather than a lost one. Each job is one numbered attempt:
it claims that number first (`service.claim`), so a job that runs twice, or two sweeps queueing
the same attempt, send it once.
"""

import json
import logging
from datetime import datetime, timedelta
from functools import partial

from app.db import utcnow
from app.errors import NotFound
from app.generations import service as generations
from app.generations.schemas import Generation
from app.models import WebhookEvent, WebhookStatus
from app.queue import QueueUnavailable
from app.runtime import Runtime
from app.schemas import iso
from app.webhooks import delivery, signing
from app.webhooks import service as webhooks
from app.webhooks.policy import DeliveryPolicy, get_policy
from app.webhooks.service import Due

log = logging.getLogger("gih.webhooks")

DELIVERY_FUNCTION = "deliver_webhook"  # the name `gih worker` runs it under
DUE_BATCH = 100  # events queued per sweep round


def delivery_job_id(event_id: str, attempt: int) -> str:
    return f"whd:{event_id}:{attempt}"


async def dispatch(rt: Runtime, generation_id: str) -> None:
    """After the transaction that ended the generation: queue the delivery of its event
    (looked up only if this process wrote one; see `service.take_recorded`)."""
    if not webhooks.take_recorded(generation_id):
        return
    try:
        async with rt.reader() as session:
            pending = await webhooks.pending_of(session, generation_id)
        for item in pending:
            await enqueue(rt, item)
    except Exception as exc:  # the sweep queues it once due
        log.warning("webhook of %s not queued now (the sweep will): %s", generation_id, exc)


async def deliver_due(rt: Runtime) -> None:
    """From the sweep: deliver (or queue) the pending events whose next attempt is due."""
    try:
        async with rt.transaction() as session:  # rows stay locked while they are queued
            batch = await webhooks.due(session, now=utcnow(), limit=DUE_BATCH)
            for item in batch:
                await enqueue(rt, item)
    except Exception as exc:
        log.warning("due webhooks not queued (next sweep): %s", exc)


async def enqueue(rt: Runtime, item: Due, *, defer_s: float = 0) -> None:
    await rt.queue.enqueue_task(DELIVERY_FUNCTION, item.event_id, item.attempt,
                                job_id=delivery_job_id(item.event_id, item.attempt),
                                defer_s=defer_s,
                                run=partial(run_delivery, rt, item.event_id, item.attempt))


async def run_delivery(rt: Runtime, event_id: str, attempt: int) -> None:
    """The job: attempt number `attempt` of the event, if it is due and nobody took it; then
    queue the next attempt when this one failed."""
    policy = get_policy()
    async with rt.transaction() as session:
        claimed = await webhooks.claim(session, event_id, attempt, now=utcnow(),
                                       lease=timedelta(seconds=policy.lease_s))
    if not claimed:
        return
    event = await attempt_claimed(rt, event_id, attempt, policy)
    if (event is not None and event.status == WebhookStatus.PENDING
            and event.attempts == attempt and event.next_attempt_at is not None):
        wait = (event.next_attempt_at - utcnow()).total_seconds()
        try:
            await enqueue(rt, Due(event_id, attempt + 1), defer_s=max(wait, 0.0))
        except QueueUnavailable as exc:  # the sweep queues it once due
            log.warning("retry of webhook %s not queued: %s", event_id, exc)


async def redeliver(rt: Runtime, event_id: str) -> WebhookEvent | None:
    """Send an event again now, whatever its state (`gih webhooks redeliver`). If this try
    fails, the event is retried on the usual schedule, which ends 24 h after the event."""
    policy = get_policy()
    async with rt.transaction() as session:
        attempt = await webhooks.claim_for_redelivery(session, event_id, now=utcnow(),
                                                      lease=timedelta(seconds=policy.lease_s))
    return await attempt_claimed(rt, event_id.strip(), attempt, policy)


async def attempt_claimed(rt: Runtime, event_id: str, attempt: int,
                          policy: DeliveryPolicy) -> WebhookEvent | None:
    """Send a claimed attempt, built now (fresh image URLs, live secrets), and record it."""
    at = utcnow()
    async with rt.transaction() as session:
        event = await session.get(WebhookEvent, event_id)
        if event is None:
            return None
        try:
            row, images = await generations.get_for_owner(session, event.generation_id,
                                                          event.user_id)
        except NotFound:
            await webhooks.give_up(session, event_id, attempt, "the generation was deleted")
            return None
        data = Generation.of(row, images, storage=rt.storage, base_url=rt.settings.base_url)
        secrets = await webhooks.signing_secrets(session, event.user_id,
                                                 server_secret=rt.secret, now=at)
    body = payload(event.type, at, data)
    answer = await delivery.post(event.url, body.encode(),
                                 signing.headers(secrets, event.id, at, body),
                                 allow_private=rt.settings.webhook_allow_private,
                                 timeout_s=policy.timeout_s)
    async with rt.transaction() as session:
        recorded = await webhooks.record_attempt(session, event_id, attempt, answer, at=at,
                                                 policy=policy)
    outcome = recorded.status if recorded is not None else "deleted"
    log.info("webhook %s attempt %s: %s", event_id, attempt, answer.error or answer.status_code,
             extra={"event": "webhook", "webhook_id": event_id, "generation_id": row.id,
                    "user_id": row.user_id, "attempt": attempt, "status": outcome,
                    "status_code": answer.status_code, "duration_ms": answer.duration_ms})
    return recorded


def payload(kind: str, at: datetime, data: Generation) -> str:
    """The body: the event's type, when it was sent, and the generation as GET returns it."""
    return json.dumps({"type": kind, "timestamp": iso(at), "data": data.model_dump(mode="json")},
                      separators=(",", ":"), ensure_ascii=False)

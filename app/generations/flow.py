"""Accepting a generation request, whichever API it came by: store its references, write the
generation and its charge in one transaction, then queue its job. The steps span transactions
(references go to storage first, the job is queued only once the charge is committed), so they
live here, beside the job wrappers, not in `service`."""

from datetime import timedelta

from fastapi import Request

from app.generations import images, jobs, submit_sql
from app.generations import service as generations
from app.generations.multipart import ReferenceFile
from app.generations.request import GenerationInput
from app.ids import new_id
from app.keys.service import Principal
from app.limits import service as limits
from app.ops import metrics
from app.ops.middleware import add_headers
from app.runtime import Runtime
from app.webhooks import service as webhooks

# A request the OpenAI SDK retries (x-stainless-retry-count > 0) is matched to the same
# request of the same key within this window, so a retry never pays twice.
RETRY_WINDOW = timedelta(minutes=15)


async def submit(rt: Runtime, request: Request, principal: Principal, wanted: GenerationInput,
                 files: list[ReferenceFile], *, idempotency_key: str | None = None,
                 sdk_retry: bool = False) -> generations.Accepted:
    """The accepted generation: a new one (charged, its job queued), or the earlier one this
    request repeats (an Idempotency-Key replay, or an SDK retry). The key's rate limit counts
    the request first; its x-ratelimit-* headers go on the answer, whatever it is."""
    rate = await limits.check_rate(rt, principal)
    add_headers(request, limits.rate_headers(rate))
    await webhooks.check_target(wanted.webhook_url,
                                allow_private=rt.settings.webhook_allow_private)
    fingerprint = wanted.fingerprint([ref.sha256 for ref in files])
    generation_id = new_id("gen")
    if submit_sql.applies(rt, principal, idempotency_key=idempotency_key, sdk_retry=sdk_retry,
                          reference_count=len(files)):
        accepted = await submit_sql.accept(rt, principal, wanted, generation_id=generation_id,
                                           fingerprint=fingerprint)
        if accepted is not None:
            return await queued(rt, wanted, accepted)
    references = await images.store_references(rt.storage, rt.secret, generation_id, files)
    try:
        async with rt.transaction() as session:
            accepted = await generations.accept(
                session, principal, wanted, generation_id=generation_id,
                references=references, fingerprint=fingerprint, idempotency_key=idempotency_key,
                settings=rt.settings, retry_window=RETRY_WINDOW if sdk_retry else None)
    except BaseException:
        await images.discard(rt.storage, [row.storage_key for row in references])
        raise
    if not accepted.created:
        await images.discard(rt.storage, [row.storage_key for row in references])
        return accepted
    return await queued(rt, wanted, accepted)


async def queued(rt: Runtime, wanted: GenerationInput,
                 accepted: generations.Accepted) -> generations.Accepted:
    """A new generation, committed with its charge: counted, and its job queued (or refunded)."""
    metrics.generations.labels(wanted.model.id, "accepted", metrics.mode_of(wanted.is_async)).inc()
    metrics.credits_charged.inc(wanted.credits_requested)
    await jobs.enqueue_or_refund(rt, accepted.generation.id)
    return accepted

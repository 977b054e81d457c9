"""The limits of a key, checked before (rate) and inside (concurrency, credits) the
transaction that charges a generation.

- Rate (`rate_limit`, else GIH_RATE_LIMIT_PER_MIN): generation requests in a sliding minute,
  counted in Redis when there is one (shared by every API process), else in this process
  (`counters`). Past it: 429 with Retry-After and the x-ratelimit-* headers.
- Concurrency (`max_concurrency`, else GIH_MAX_CONCURRENT_GENERATIONS): the key's queued and
  running generations, counted under a lock on the key's row, so two requests of the key
  cannot both take the last slot. Past it: 429 with a short Retry-After.
- Credits (`credit_limit` per `limit_reset` period): the key's spend in the period, raised by
  one conditional upsert of its `key_spend` row (`credits + n <= limit`), in the charge's
  transaction; refunds lower it again (`give_back`). Past it: 402 keyLimitReached.

Lock order, so that nothing deadlocks: the key's row and the user's (one statement, FOR NO KEY
UPDATE; the charge then takes the user's again), then the key_spend row. Refunds take the
user's row before key_spend too, and nothing takes the user's row before the key's.
A key with a limit pays two statements on PostgreSQL (`queries`: the locks; then the count and
the upsert in one); a key with no limit and no server default pays nothing here: no lock, no
query.
"""

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import utcnow
from app.errors import KeyLimitReached, RateLimited, ServiceUnavailable
from app.keys.service import Principal
from app.limits import queries
from app.limits.counters import LocalRateWindow, RateWindow, RedisRateWindow
from app.limits.periods import period_end, period_start
from app.models import ApiKey, Generation, KeySpend
from app.queue import ArqQueue, QueueUnavailable
from app.schemas import iso

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app.runtime import Runtime

# A key at its concurrency limit waits for one of its generations to end: a few seconds.
CONCURRENCY_RETRY_AFTER_S = 2


@dataclass(frozen=True)
class RateState:
    """The key's rate limit after this request: for the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_s: int


class RateLimitExceeded(RateLimited):
    """Past the key's request rate: Retry-After and the x-ratelimit-* headers."""

    def __init__(self, state: RateState) -> None:
        super().__init__(f"rate limit of {state.limit} generation requests per minute reached "
                         f"for this API key; retry in {state.reset_s} s",
                         retry_after_s=state.reset_s, rate_limit=state.limit)
        self.state = state

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **rate_headers(self.state)}


# One window per runtime, by its queue (a Runtime is an unhashable dataclass; its queue is not).
_windows: "weakref.WeakKeyDictionary[object, RateWindow]" = weakref.WeakKeyDictionary()


def window_for(rt: "Runtime") -> RateWindow:
    window = _windows.get(rt.queue)
    if window is None:
        window = _windows[rt.queue] = (RedisRateWindow(redis_of(rt)) if rt.settings.redis_url
                                       else LocalRateWindow())
    return window


def redis_of(rt: "Runtime") -> "Callable[[], Redis]":
    queue = rt.queue
    if isinstance(queue, ArqQueue):
        return lambda: queue.redis
    from redis.asyncio import Redis

    client = Redis.from_url(rt.settings.redis_url or "", socket_connect_timeout=3,
                            socket_timeout=3)
    return lambda: client


async def check_rate(rt: "Runtime", principal: Principal) -> RateState | None:
    """Count this generation request against the key's rate limit (RateLimited when past it);
    None when no rate limit applies."""
    limit = principal.limits.rate_limit or rt.settings.rate_limit_per_min
    if limit is None or principal.key_id is None:
        return None
    try:
        verdict = await window_for(rt).hit(principal.key_id, limit)
    except QueueUnavailable as exc:  # Redis errors themselves are 503s already
        raise ServiceUnavailable("the request counter is unavailable, retry later") from exc
    state = RateState(limit, verdict.remaining, verdict.reset_s)
    if not verdict.allowed:
        raise RateLimitExceeded(state)
    return state


def reserves_nothing(principal: Principal, settings: Settings) -> bool:
    """No key (the console), or a key without a concurrency or credit limit: `reserve` has
    nothing to check or write."""
    limits = principal.limits
    return principal.key_id is None or (
        limits.max_concurrency is None and settings.max_concurrent_generations is None
        and limits.credit_limit is None)


async def reserve(session: AsyncSession, principal: Principal, credits: int, *,
                  settings: Settings) -> datetime | None:
    """In the charge's transaction: the key's concurrency and credit limits (RateLimited,
    KeyLimitReached: nothing written, as the caller's transaction rolls back). Returns the
    credit-limit period the charge counts in."""
    if principal.key_id is None or reserves_nothing(principal, settings):
        return None  # no key (the console), or no limit: no lock, no query
    limits = principal.limits
    concurrency = limits.max_concurrency or settings.max_concurrent_generations
    now = utcnow()
    period = period_start(limits.limit_reset, now)
    # The key's row and the user's locked first (the count must see every generation
    # committed before it; and the user before key_spend, as refunds take them); then the
    # count, and the period's spend raised by `credits` if that stays within the limit.
    await queries.lock_key_and_user(session, principal.key_id)
    counted = await queries.count_and_spend(
        session, principal.key_id, period,
        credits=credits if limits.credit_limit is not None else None,
        credit_limit=limits.credit_limit)
    if concurrency is not None and counted.unfinished >= concurrency:
        raise RateLimited(f"this API key already has {counted.unfinished} generations queued "
                          f"or running, its limit is {concurrency}; retry when one ends",
                          retry_after_s=CONCURRENCY_RETRY_AFTER_S, max_concurrency=concurrency)
    if limits.credit_limit is None:
        return None
    if counted.spent is None:
        resets = period_end(limits.limit_reset, now)
        left = max(0, limits.credit_limit - counted.spent_before)
        raise KeyLimitReached(
            f"this request needs {credits} credits; this API key has {left} left of its credit "
            f"limit of {limits.credit_limit}"
            + (f", which resets at {iso(resets)}" if resets else " (it never resets)"),
            credits_required=credits, credit_limit=limits.credit_limit,
            credits_spent=counted.spent_before, limit_resets_at=iso(resets))
    return period


async def give_back(session: AsyncSession, generation: Generation, credits: int) -> None:
    """In a refund's transaction: the refunded credits return to the key's period allowance."""
    if generation.spend_period is None or generation.api_key_id is None or credits <= 0:
        return
    await session.execute(
        update(KeySpend)
        .where(KeySpend.api_key_id == generation.api_key_id,
               KeySpend.period_start == generation.spend_period)
        .values(credits=case((KeySpend.credits > credits, KeySpend.credits - credits),
                             else_=0))
        .execution_options(synchronize_session=False))


async def current_spend(session: AsyncSession, keys: list[ApiKey],
                        now: datetime) -> dict[str, int]:
    """What each key with a credit limit spent in its current period (by key id)."""
    wanted = {key.id: period_start(key.limit_reset, now) for key in keys
              if key.credit_limit is not None}
    spent: dict[str, int] = {}
    for key_id, period in wanted.items():
        spent[key_id] = await session.scalar(
            select(KeySpend.credits).where(KeySpend.api_key_id == key_id,
                                           KeySpend.period_start == period)) or 0
    return spent


def rate_headers(state: RateState | None) -> dict[str, str]:
    if state is None:
        return {}
    return {"x-ratelimit-limit-requests": str(state.limit),
            "x-ratelimit-remaining-requests": str(state.remaining),
            "x-ratelimit-reset-requests": f"{state.reset_s}s"}

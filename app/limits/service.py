"""The limits of a key, checked before (rate) and inside (concurrency, credits) the
transaction that charges a generation."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.keys.service import Principal
from app.models import Generation
from app.runtime import Runtime


@dataclass(frozen=True)
class RateState:
    """The key's rate limit after this request: for the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_s: int


async def check_rate(rt: Runtime, principal: Principal) -> RateState | None:
    """Count this generation request against the key's rate limit (RateLimited when past it);
    None when no rate limit applies."""
    return None


async def reserve(session: AsyncSession, principal: Principal, credits: int, *,
                  settings: Settings) -> datetime | None:
    """In the charge's transaction: the key's concurrency and credit limits (RateLimited,
    KeyLimitReached: nothing written). Returns the credit-limit period the charge counts in."""
    return None


async def give_back(session: AsyncSession, generation: Generation, credits: int) -> None:
    """In a refund's transaction: the refunded credits return to the key's period allowance."""
    return None


def rate_headers(state: RateState | None) -> dict[str, str]:
    if state is None:
        return {}
    return {"x-ratelimit-limit-requests": str(state.limit),
            "x-ratelimit-remaining-requests": str(state.remaining),
            "x-ratelimit-reset-requests": f"{state.reset_s}s"}

"""How a key is shown to its owner or an operator: never the raw key, only its display prefix;
its limits, and what it spent in the current period of its credit limit."""

from datetime import datetime
from enum import StrEnum

from app.limits.periods import period_end, period_start
from app.models import ApiKey, LimitReset
from app.schemas import Schema, Timestamp


class KeyStatus(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class ApiKeyInfo(Schema):
    id: str
    name: str | None
    prefix: str
    status: KeyStatus
    created_at: Timestamp
    last_used_at: Timestamp | None
    expires_at: Timestamp | None
    revoked_at: Timestamp | None
    # The key's own limits (None: the server's default, if any).
    rate_limit: int | None
    max_concurrency: int | None
    credit_limit: int | None
    limit_reset: LimitReset | None
    # With a credit limit: the current period and what the key spent in it.
    period_start: Timestamp | None
    period_ends_at: Timestamp | None
    period_spend: int | None

    @classmethod
    def of(cls, key: ApiKey, now: datetime, *, spend: int = 0) -> "ApiKeyInfo":
        """`spend`: the key's credits spent in the current period (for a credit limit)."""
        status = (KeyStatus.REVOKED if key.revoked_at else
                  KeyStatus.EXPIRED if key.expires_at and key.expires_at <= now else
                  KeyStatus.ACTIVE)
        limited = key.credit_limit is not None
        return cls(id=key.id, name=key.name, prefix=key.prefix, status=status,
                   created_at=key.created_at, last_used_at=key.last_used_at,
                   expires_at=key.expires_at, revoked_at=key.revoked_at,
                   rate_limit=key.rate_limit, max_concurrency=key.max_concurrency,
                   credit_limit=key.credit_limit, limit_reset=key.limit_reset,
                   period_start=period_start(key.limit_reset, now) if limited else None,
                   period_ends_at=period_end(key.limit_reset, now) if limited else None,
                   period_spend=spend if limited else None)

"""How a key is shown to its owner or an operator: never the raw key, only its display prefix."""

from datetime import datetime
from enum import StrEnum

from app.models import ApiKey
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

    @classmethod
    def of(cls, key: ApiKey, now: datetime) -> "ApiKeyInfo":
        status = (KeyStatus.REVOKED if key.revoked_at else
                  KeyStatus.EXPIRED if key.expires_at and key.expires_at <= now else
                  KeyStatus.ACTIVE)
        return cls(id=key.id, name=key.name, prefix=key.prefix, status=status,
                   created_at=key.created_at, last_used_at=key.last_used_at,
                   expires_at=key.expires_at, revoked_at=key.revoked_at)

"""What the webhook endpoints answer, and the delivery log the CLI prints."""

from datetime import datetime
from typing import Literal, Self

from app.models import WebhookEvent
from app.schemas import Schema, Timestamp
from app.webhooks.service import Secret


class WebhookSecretInfo(Schema):
    """The caller's signing secret, for any Standard Webhooks library."""

    object: Literal["webhook_secret"] = "webhook_secret"
    secret: str
    created_at: Timestamp

    @classmethod
    def of(cls, secret: Secret) -> Self:
        return cls(secret=secret.value, created_at=secret.created_at)


class DeliveryInfo(Schema):
    """One event in `gih webhooks deliveries`."""

    id: str
    type: str
    generation_id: str
    email: str
    url: str
    status: str
    tries: int
    last_status: int | None
    last_error: str | None
    next_try: Timestamp | None
    created_at: Timestamp
    delivered_at: Timestamp | None

    @classmethod
    def of(cls, event: WebhookEvent, email: str) -> Self:
        next_try: datetime | None = event.next_attempt_at
        return cls(id=event.id, type=event.type, generation_id=event.generation_id,
                   email=email, url=event.url, status=event.status.value,
                   tries=event.attempts, last_status=event.last_status,
                   last_error=event.last_error, next_try=next_try,
                   created_at=event.created_at, delivered_at=event.delivered_at)

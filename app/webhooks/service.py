"""Webhook events: checked targets, and the event row written in the transaction that ends a
generation. (The delivery is in jobs.py.)"""

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Generation, WebhookEvent


async def check_target(url: str | None, *, allow_private: bool) -> None:
    """Refuse (400, param webhook_url) a URL that is not http(s) or resolves to a non-public
    address, unless private targets are allowed."""
    return None


async def record_final(session: AsyncSession, generation: Generation) -> WebhookEvent | None:
    """The event of the generation's final status, if it has a webhook and wants that event;
    written in the caller's transaction (the one that ends the generation)."""
    return None

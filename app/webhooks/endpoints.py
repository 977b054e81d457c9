"""GET /api/v1/webhooks/secret and POST /api/v1/webhooks/secret/rotate."""

from fastapi import APIRouter

from app.deps import CurrentPrincipal, RuntimeDep, SessionDep
from app.openapi import AUTH_ERRORS
from app.webhooks import service as webhooks
from app.webhooks.schemas import WebhookSecretInfo

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


@router.get("/secret", responses=AUTH_ERRORS)
async def get_secret(principal: CurrentPrincipal, rt: RuntimeDep,
                     session: SessionDep) -> WebhookSecretInfo:
    """The secret that signs your webhook events (made on first use). Verify deliveries with
    any Standard Webhooks library: `Webhook(secret).verify(body, headers)`."""
    secret = await webhooks.current_secret(session, principal.user.id, server_secret=rt.secret)
    return WebhookSecretInfo.of(secret)


@router.post("/secret/rotate", responses=AUTH_ERRORS)
async def rotate_secret(principal: CurrentPrincipal, rt: RuntimeDep,
                        session: SessionDep) -> WebhookSecretInfo:
    """A new signing secret. For 24 h events carry signatures by both the new and the
    previous one, so receivers can switch without missing an event."""
    secret = await webhooks.rotate_secret(session, principal.user.id, server_secret=rt.secret)
    return WebhookSecretInfo.of(secret)

"""GET /api/v1/credits: the caller's balance."""

from fastapi import APIRouter

from app.credits import service as credits
from app.credits.schemas import CreditBalance
from app.deps import CurrentPrincipal, ReaderDep
from app.openapi import AUTH_ERRORS

router = APIRouter(prefix="/api/v1", tags=["credits"])


@router.get("/credits", responses=AUTH_ERRORS)
async def get_credits(principal: CurrentPrincipal, reader: ReaderDep) -> CreditBalance:
    """The caller's balance, plan label and the next credits to expire."""
    balance = await credits.balance(reader, principal.user)
    return CreditBalance(**balance.model_dump())

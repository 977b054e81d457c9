"""Account endpoints: the model catalog and the credit balance."""

from typing import Any

from fastapi import APIRouter, Request

from app import credits
from app.api_keys import CurrentPrincipal
from app.schemas import CreditBalance, ErrorResponse, ModelList, balance_body

router = APIRouter(prefix="/api/v1")

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missingApiKey, invalidApiKey or expiredApiKey"},
    500: {"model": ErrorResponse, "description": "internalError"},
    503: {"model": ErrorResponse, "description": "serviceUnavailable"},
}


@router.get("/models", response_model=ModelList, tags=["models"])
async def list_models(request: Request) -> dict[str, Any]:
    """The image models, with their ratios, qualities and prices (no key needed)."""
    return request.app.state.catalog.to_api()


@router.get("/credits", response_model=CreditBalance, responses=AUTH_ERRORS, tags=["credits"])
async def get_credits(principal: CurrentPrincipal, request: Request) -> dict[str, Any]:
    """The caller's balance, plan label and the next credits to expire."""
    async with request.app.state.reader() as session:
        balance = await credits.balance(session, principal.user)
    return {"object": "credit_balance", **balance_body(balance)}

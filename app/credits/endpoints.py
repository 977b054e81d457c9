"""GET /api/v1/credits (the caller's balance) and GET /api/v1/credits/ledger (its movements)."""

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.types import Receive, Scope

from app.credits import ledger
from app.credits import service as credits
from app.credits.schemas import CreditBalance, CreditMovementList
from app.deps import CurrentPrincipal, ReaderDep, RuntimeDep
from app.keys import service as keys
from app.openapi import AUTH_ERRORS, error_doc
from app.ops.fast_routes import header
from app.ops.middleware import note
from app.runtime import Runtime

router = APIRouter(prefix="/api/v1", tags=["credits"])


@router.get("/credits", responses=AUTH_ERRORS)
async def get_credits(principal: CurrentPrincipal, rt: RuntimeDep) -> CreditBalance:
    """The caller's balance, plan label and the next credits to expire."""
    if rt.direct is not None:
        balance = await credits.user_balance_direct(rt.direct, principal.user.id)
    else:
        async with rt.reader() as reader:
            balance = await credits.balance(reader, principal.user)
    return CreditBalance(**balance.model_dump())


# The same answer on PostgreSQL ahead of FastAPI's router (app/ops/fast_routes.py): the key
# lookup and the balance in one statement.
KEY_BALANCE_SQL = credits.with_dated_lots(keys.LOOKUP_SQL)


async def get_credits_fast(scope: Scope, receive: Receive, rt: Runtime) -> bytes:
    assert rt.direct is not None
    principal, rows = await keys.authenticate_direct_with(
        rt.direct, header(scope, b"authorization"), KEY_BALANCE_SQL, secret=rt.secret)
    note(scope, user_id=principal.user.id)
    balance = credits.balance_of_rows(rows)
    return CreditBalance(credits=balance.credits, account_type=balance.account_type,
                         next_expiration=balance.next_expiration).model_dump_json().encode()


@router.get("/credits/ledger", responses={
    **AUTH_ERRORS, 400: error_doc("invalid_request: a bad limit or cursor"),
    404: error_doc("notFound: the cursor is no movement of the caller's")})
async def get_ledger(
    principal: CurrentPrincipal, reader: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=ledger.MAX_PAGE)] = 20,
    starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ending_before: Annotated[str | None, Query(max_length=40)] = None,
) -> CreditMovementList:
    """The caller's credit movements, newest first, each with the balance right after it."""
    return await ledger.page(reader, principal.user.id, limit=limit,
                             starting_after=starting_after, ending_before=ending_before)


"""The caller's credit movements, newest first, paged by cursor (`mov_<n>` ids, in the order
they were written): one indexed range read of (user_id, id) whatever the ledger's size."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.credits.schemas import CreditMovementList, CreditMovementOut
from app.errors import InvalidRequest, NotFound
from app.models import CreditMovement

MOVEMENT_ID = "mov_"
MAX_PAGE = 100


def public_id(movement_id: int) -> str:
    return f"{MOVEMENT_ID}{movement_id}"


def number_of(public: str, param: str) -> int:
    digits = public.removeprefix(MOVEMENT_ID)
    if not public.startswith(MOVEMENT_ID) or not (digits.isascii() and digits.isdigit()) \
            or len(digits) > 18:
        raise NotFound(f"{param}: no credit movement {public[:64]}", param=param)
    return int(digits)


async def page(session: AsyncSession, user_id: str, *, limit: int,
               starting_after: str | None = None,
               ending_before: str | None = None) -> CreditMovementList:
    if starting_after and ending_before:
        raise InvalidRequest("give starting_after or ending_before, not both",
                             param="ending_before")
    query = select(CreditMovement).where(CreditMovement.user_id == user_id)
    if ending_before:
        rows = list(await session.scalars(
            query.where(CreditMovement.id > number_of(ending_before, "ending_before"))
            .order_by(CreditMovement.id).limit(limit + 1)))
        has_more = len(rows) > limit
        rows = rows[:limit][::-1]
    else:
        if starting_after:
            query = query.where(CreditMovement.id < number_of(starting_after, "starting_after"))
        rows = list(await session.scalars(query.order_by(CreditMovement.id.desc())
                                          .limit(limit + 1)))
        has_more = len(rows) > limit
        rows = rows[:limit]
    return CreditMovementList(data=[CreditMovementOut(
        id=public_id(row.id), kind=row.kind.value, credits=row.credits,
        balance_after=row.balance_after, generation_id=row.generation_id, note=row.note,
        created_at=row.created_at) for row in rows], has_more=has_more)

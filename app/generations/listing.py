"""A user's generations, newest first, paged by cursor: stable while new ones arrive (a page
is read below (or above) the cursor's (created_at, id), on an index that starts with the
user), and as fast on the millionth page as on the first."""

from dataclasses import dataclass

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidRequest, NotFound
from app.generations.service import is_generation_id
from app.models import Generation, GenerationImage, GenerationStatus

MAX_PAGE = 100


@dataclass(frozen=True)
class Page:
    generations: list[Generation]
    images: dict[str, list[GenerationImage]]
    has_more: bool


async def cursor_of(session: AsyncSession, user_id: str, generation_id: str,
                    param: str) -> tuple[object, str]:
    row = None
    if is_generation_id(generation_id):
        row = (await session.execute(
            select(Generation.created_at, Generation.id)
            .where(Generation.id == generation_id, Generation.user_id == user_id))).first()
    if row is None:
        raise NotFound(f"{param}: no generation {generation_id[:64]}", param=param)
    return row.created_at, row.id


async def page(session: AsyncSession, user_id: str, *, limit: int,
               starting_after: str | None = None, ending_before: str | None = None,
               status: GenerationStatus | None = None) -> Page:
    if starting_after and ending_before:
        raise InvalidRequest("give starting_after or ending_before, not both",
                             param="ending_before")
    query = select(Generation).where(Generation.user_id == user_id)
    if status is not None:
        query = query.where(Generation.status == status)
    position = tuple_(Generation.created_at, Generation.id)
    newest_first = (Generation.created_at.desc(), Generation.id.desc())
    if ending_before:  # the page just above the cursor, read upwards then turned round
        cursor = await cursor_of(session, user_id, ending_before, "ending_before")
        rows = list(await session.scalars(
            query.where(position > tuple_(*cursor))
            .order_by(Generation.created_at, Generation.id).limit(limit + 1)))
        has_more = len(rows) > limit
        rows = rows[:limit][::-1]
    else:
        if starting_after:
            cursor = await cursor_of(session, user_id, starting_after, "starting_after")
            query = query.where(position < tuple_(*cursor))
        rows = list(await session.scalars(query.order_by(*newest_first).limit(limit + 1)))
        has_more = len(rows) > limit
        rows = rows[:limit]
    done = [row.id for row in rows if row.status == GenerationStatus.SUCCEEDED]
    images: dict[str, list[GenerationImage]] = {}
    if done:
        for image in await session.scalars(
                select(GenerationImage).where(GenerationImage.generation_id.in_(done))):
            images.setdefault(image.generation_id, []).append(image)
    return Page(rows, images, has_more)

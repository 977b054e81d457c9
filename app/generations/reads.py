"""A generation and its images read on PostgreSQL without the ORM (`app.db.DirectPool`), in one
statement with what the request reads beside it: the caller's key (`GET
/api/v1/generations/{id}`) or the caller's balance (`answer_of`, the answer of a sync request
on `/api/v1` and `/v1`). `service.get_for_owner` is the same read through a session (SQLite).

The columns are the tables' own (every column of `generations`, prefixed `g_`; the images'
as arrays in index order, prefixed `i_`), so a column added to the models is read here too.
"""

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON

from app.credits import service as credits
from app.credits.schemas import Balance
from app.errors import NotFound
from app.generations import service as generations
from app.keys import service as keys
from app.models import Generation, GenerationImage, GenerationStatus
from app.runtime import Runtime

GENERATION_COLUMNS = [column.name for column in Generation.__table__.columns]
JSON_COLUMNS = {column.name for column in Generation.__table__.columns
                if isinstance(column.type, JSON)}
IMAGE_COLUMNS = [column.name for column in GenerationImage.__table__.columns
                 if column.name != "generation_id"]

SELECTED = ", ".join([f'g."{name}" AS "g_{name}"' for name in GENERATION_COLUMNS]
                     + [f'im."i_{name}"' for name in IMAGE_COLUMNS])
# Images are read only for a succeeded generation (they are written with that status).
IMAGES = ("LEFT JOIN LATERAL (SELECT "
          + ", ".join(f'array_agg(i."{name}" ORDER BY i."index") AS "i_{name}"'
                      for name in IMAGE_COLUMNS)
          + " FROM generation_images i WHERE i.generation_id = g.id"
            " AND g.status = 'succeeded') im ON true")

# $1 the key's hash, $2 the generation id: the key's row, with the generation when it is the
# key's user's (its columns NULL otherwise).
KEY_GENERATION_SQL = (
    "SELECT k.*, " + SELECTED + " FROM (" + keys.LOOKUP_SQL + ") k"
    " LEFT JOIN generations g ON g.id = $2 AND g.user_id = k.user_id " + IMAGES)

# $1 the generation id, $2 its owner: the generation and the owner's balance.
ANSWER_SQL = credits.with_dated_lots(
    "SELECT " + SELECTED + ", u.id AS user_id, u.credits, u.account_type FROM generations g"
    " JOIN users u ON u.id = g.user_id " + IMAGES + " WHERE g.id = $1 AND g.user_id = $2")


def generation_from(row: Mapping[str, Any]) -> Generation:
    """A detached generation from a row holding its every column, prefixed `g_`."""
    values = {name: row["g_" + name] for name in GENERATION_COLUMNS}
    for name in JSON_COLUMNS:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    values["status"] = GenerationStatus(values["status"])
    return Generation(**values)


def generation_of(row: Mapping[str, Any]) -> tuple[Generation, list[GenerationImage]]:
    """The generation and its images (index order) from a row of the statements above, as
    detached model instances, as `get_for_owner` returns them."""
    generation = generation_from(row)
    images: list[GenerationImage] = []
    if row["i_id"] is not None:
        columns = [row["i_" + name] for name in IMAGE_COLUMNS]
        images = [GenerationImage(generation_id=generation.id,
                                  **dict(zip(IMAGE_COLUMNS, image, strict=True)))
                  for image in zip(*columns, strict=True)]
    return generation, images


def not_found(generation_id: str) -> NotFound:
    return NotFound(f"no generation {generation_id[:64]}")


async def answer_of(rt: Runtime, generation_id: str, user_id: str
                    ) -> tuple[Generation, list[GenerationImage], Balance]:
    """A generation of `user_id`'s, its images and `user_id`'s balance: what a sync request is
    answered with (one statement on PostgreSQL)."""
    if rt.direct is None:
        async with rt.reader() as session:
            row, images = await generations.get_for_owner(session, generation_id, user_id)
            return row, images, await generations.balance_of(session, user_id)
    if not generations.is_generation_id(generation_id):
        raise not_found(generation_id)
    rows = await rt.direct.fetch(ANSWER_SQL, generation_id, user_id)
    if not rows:
        raise not_found(generation_id)
    row, images = generation_of(rows[0])
    return row, images, credits.balance_of_rows(rows)

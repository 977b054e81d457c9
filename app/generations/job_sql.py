"""A job's claim and its usual finish on PostgreSQL without SQLAlchemy (`app.db.DirectPool`):
each one statement, as `service.claim` and `service.finish_succeeded` are through a session
(SQLite, and every finish that owes a refund or records an event). Through the ORM these two
statements were a fifth of a worker's CPU per generation (docs/performance.md).
"""

import json
from datetime import datetime

from app.db import DirectPool
from app.generations.reads import GENERATION_COLUMNS, generation_from
from app.generations.service import token_counts
from app.ids import new_id
from app.models import Generation
from app.providers.base import GeneratedImage

RETURNED = ", ".join(f'"{name}" AS "g_{name}"' for name in GENERATION_COLUMNS)

# $1 the generation, $2 the attempt, $3 now: running, unless it is final or a newer attempt
# owns it (the row lock and the check in one statement).
CLAIM_SQL = (
    "UPDATE generations SET status = 'running', started_at = coalesce(started_at, $3),"
    " heartbeat_at = $3"
    " WHERE id = $1 AND attempts = $2 AND status IN ('queued', 'running')"
    " RETURNING " + RETURNED)

# Every image delivered and no webhook: no refund is owed, no event recorded. The UPDATE's
# WHERE re-checks the status under the row lock, so a cancel or another attempt that ended it
# first leaves this with nothing to do (no row: the caller takes the transaction's path).
FINISH_ALL_DELIVERED_SQL = """
WITH g AS (
    UPDATE generations
    SET status = 'succeeded', provider_usage = $2::json, input_tokens = $3, output_tokens = $4,
        completed_at = $5
    WHERE id = $1 AND status IN ('queued', 'running') AND n = cardinality($6::text[])
      AND webhook_url IS NULL
    RETURNING *
), added AS (
    INSERT INTO generation_images (id, generation_id, "index", storage_key, width, height,
                                   content_type, byte_size, created_at)
    SELECT i.id, g.id, i.number - 1, i.storage_key, i.width, i.height, i.content_type,
           i.byte_size, $5
    FROM g, unnest($6::text[], $7::text[], $8::int[], $9::int[], $10::text[], $11::int[])
         WITH ORDINALITY AS i(id, storage_key, width, height, content_type, byte_size, number)
)
SELECT """ + RETURNED + " FROM g"


async def claim(direct: DirectPool, generation_id: str, attempt: int,
                now: datetime) -> Generation | None:
    row = await direct.fetchrow(CLAIM_SQL, generation_id, attempt, now)
    return None if row is None else generation_from(row)


async def finish_all_delivered(direct: DirectPool, generation_id: str,
                               images: list[GeneratedImage], keys: list[str],
                               usage: dict[str, object] | None,
                               now: datetime) -> Generation | None:
    """The final generation, or None when not every image came, it has a webhook, or it is
    final already."""
    if not images:
        return None
    input_tokens, output_tokens = token_counts(usage)
    row = await direct.fetchrow(
        FINISH_ALL_DELIVERED_SQL, generation_id, None if usage is None else json.dumps(usage),
        input_tokens, output_tokens, now, [new_id("img") for _ in images],
        keys[:len(images)], [i.width for i in images], [i.height for i in images],
        [i.content_type for i in images], [len(i.data) for i in images])
    return None if row is None else generation_from(row)

"""The job's claim and usual finish as plain statements on PostgreSQL (`app.generations.job_sql`):
the same rows as the session's path (`service.claim`, `service.finish_succeeded`), and nothing
done where that path would refund, record an event, or find the generation final."""

import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from app.db import utcnow
from app.generations import job_sql
from app.generations import service as generations
from app.models import Generation, GenerationImage, GenerationStatus
from app.providers.base import GeneratedImage
from tests.conftest import Client
from tests.test_listing import key_id_of, queued_generation, queued_generation_n

IMAGE = GeneratedImage(data=b"\x89PNG" + b"x" * 96, content_type="image/png", width=1024,
                       height=1024)
USAGE = {"input_tokens": 12, "output_tokens": 4160, "total_tokens": 4172}


async def settle(client: Client, *generation_ids: str) -> None:
    """Leave nothing unfinished for the sweep of a later module's app on this database (nor an
    event to deliver): each generation failed and refunded, without a webhook."""
    rt = client.app.state.runtime
    for generation_id in generation_ids:
        async with rt.transaction() as session:
            generation = await session.get(Generation, generation_id)
            assert generation is not None
            generation.webhook_url = None
            await session.flush()
            await generations.finish_failed(session, generation_id, "test over")


def columns(generation: Generation) -> dict[str, object]:
    return {c.name: getattr(generation, c.name) for c in Generation.__table__.columns}


async def stored(client: Client, generation_id: str
                 ) -> tuple[dict[str, object], list[tuple[object, ...]]]:
    async with client.session() as session:
        generation = await session.get(Generation, generation_id)
        assert generation is not None
        images = (await session.execute(
            select(GenerationImage.index, GenerationImage.storage_key, GenerationImage.width,
                   GenerationImage.height, GenerationImage.content_type,
                   GenerationImage.byte_size, GenerationImage.created_at)
            .where(GenerationImage.generation_id == generation_id)
            .order_by(GenerationImage.index))).all()
        return columns(generation), [tuple(row) for row in images]


async def test_claim_matches_the_sessions_and_refuses_what_it_must(pg: Client) -> None:
    rt = pg.app.state.runtime
    user, key = await pg.user_with_key(100)
    key_id = await key_id_of(pg, key)
    direct_id = await queued_generation(pg, user, key_id)
    session_id = await queued_generation(pg, user, key_id)

    assert await job_sql.claim(rt.direct, direct_id, 2, utcnow()) is None  # another attempt's
    claimed = await job_sql.claim(rt.direct, direct_id, 1, utcnow())
    async with rt.statement() as session:
        by_session = await generations.claim(session, session_id, 1)
    assert claimed is not None and by_session is not None
    assert claimed.status is GenerationStatus.RUNNING and claimed.started_at is not None
    row, _ = await stored(pg, direct_id)
    assert columns(claimed) == row  # what it returns is what it wrote
    other = columns(by_session[0])
    for name in ("id", "created_at", "started_at", "heartbeat_at", "request_hash"):
        row.pop(name), other.pop(name)
    assert row == other
    await settle(pg, session_id)

    first_start = claimed.started_at
    again = await job_sql.claim(rt.direct, direct_id, 1, utcnow())  # a job run twice
    assert again is not None and again.started_at == first_start
    assert again.heartbeat_at is not None and again.heartbeat_at >= claimed.heartbeat_at

    async with rt.transaction() as session:
        await generations.finish_failed(session, direct_id, "gone")
    assert await job_sql.claim(rt.direct, direct_id, 1, utcnow()) is None  # final


async def test_finish_writes_what_the_transaction_writes(pg: Client) -> None:
    rt = pg.app.state.runtime
    user, key = await pg.user_with_key(100)
    key_id = await key_id_of(pg, key)
    direct_id = await queued_generation_n(pg, user, key_id, 2)
    session_id = await queued_generation_n(pg, user, key_id, 2)
    images = [IMAGE, GeneratedImage(data=b"y" * 50, content_type="image/png", width=1536,
                                    height=1024)]
    now = utcnow()
    final = await job_sql.finish_all_delivered(rt.direct, direct_id, images,
                                               [f"{direct_id}/0", f"{direct_id}/1"], USAGE, now)
    async with rt.transaction() as session:
        await generations.finish_succeeded(session, session_id, images,
                                           [f"{session_id}/0", f"{session_id}/1"], USAGE)
    assert final is not None and final.status is GenerationStatus.SUCCEEDED
    row, stored_images = await stored(pg, direct_id)
    assert columns(final) == row
    assert row["provider_usage"] == USAGE and (row["input_tokens"], row["output_tokens"]) == (
        12, 4160) and row["completed_at"] == now and row["credits_refunded"] == 0
    assert stored_images == [(0, f"{direct_id}/0", 1024, 1024, "image/png", 100, now),
                             (1, f"{direct_id}/1", 1536, 1024, "image/png", 50, now)]
    other, other_images = await stored(pg, session_id)
    for name in ("id", "created_at", "heartbeat_at", "completed_at", "request_hash"):
        row.pop(name), other.pop(name)
    assert row == other
    assert [image[2:6] for image in other_images] == [image[2:6] for image in stored_images]

    # final already (a job run twice): nothing written again
    assert await job_sql.finish_all_delivered(rt.direct, direct_id, images,
                                              ["a", "b"], USAGE, utcnow()) is None
    assert (await stored(pg, direct_id))[1] == stored_images


async def test_finish_leaves_refunds_and_webhooks_to_the_transaction(pg: Client) -> None:
    rt = pg.app.state.runtime
    user, key = await pg.user_with_key(100)
    key_id = await key_id_of(pg, key)
    short = await queued_generation_n(pg, user, key_id, 2)  # one image of two: a refund owed
    assert await job_sql.finish_all_delivered(rt.direct, short, [IMAGE], ["k"], None,
                                              utcnow()) is None
    assert await job_sql.finish_all_delivered(rt.direct, short, [], [], None, utcnow()) is None
    hooked = await queued_generation(pg, user, key_id)
    async with rt.transaction() as session:
        generation = await session.get(Generation, hooked)
        assert generation is not None
        generation.webhook_url = "https://example.com/hook"
    assert await job_sql.finish_all_delivered(rt.direct, hooked, [IMAGE], ["k"], None,
                                              utcnow()) is None
    for generation_id in (short, hooked):
        row, images = await stored(pg, generation_id)
        assert row["status"] == GenerationStatus.QUEUED and images == []
    await settle(pg, short, hooked)


def test_the_worker_does_not_load_fastapi() -> None:
    """`gih worker` imports the jobs, the schemas of their webhooks and the catalog, not the
    web framework (its memory: docs/performance.md, F)."""
    code = ("import sys, worker.settings; "
            "print(sorted(m for m in ('fastapi', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parents[1], env={"GIH_DATABASE_URL": "sqlite+aiosqlite:///unused.db",
                                          "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]"

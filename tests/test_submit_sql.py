"""The usual submit on PostgreSQL in one round trip (`app.generations.submit_sql`): the same rows
as the transaction's path (`service.accept`), and that path taken whenever the statement cannot
do the charge alone."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from app.credits import service as credits
from app.db import utcnow
from app.generations import submit_sql
from app.models import CreditLedgerEntry, CreditLot, CreditMovement, Generation, User
from tests.conftest import bearer

BODY = {"model": "gpt-image-2", "prompt": "a red fox", "size": "1024x1024", "async": True}
SKIPPED = {"id", "created_at", "heartbeat_at", "started_at", "completed_at", "status",
           "idempotency_key", "provider_usage", "input_tokens", "output_tokens"}


async def submit(client, key: str, **headers: str):
    return await client.http.post("/api/v1/images/generations", json=BODY,
                                  headers={**bearer(key), **headers})


async def written(client, generation_id: str) -> dict:
    async with client.session() as session:
        generation = await session.get(Generation, generation_id)
        movement = await session.scalar(select(CreditMovement).where(
            CreditMovement.generation_id == generation_id))
        entries = (await session.scalars(select(CreditLedgerEntry).where(
            CreditLedgerEntry.generation_id == generation_id,
            CreditLedgerEntry.kind == "charge"))).all()
        assert generation is not None and movement is not None
        return {
            "generation": {c.name: getattr(generation, c.key) for c in Generation.__table__.columns
                           if c.name not in SKIPPED},
            "movement": (movement.kind, movement.credits, movement.note),
            "entries": sorted((e.amount, e.note) for e in entries)}


async def lots_of(client, user_id: str) -> list[int]:
    async with client.session() as session:
        return list(await session.scalars(select(CreditLot.remaining).where(
            CreditLot.user_id == user_id).order_by(CreditLot.id)))


async def audit_clean(client) -> None:
    async with client.session() as session:
        assert await credits.audit(session) == []


async def test_one_statement_writes_what_the_transaction_writes(pg) -> None:
    user, key = await pg.user_with_key(100)
    fast = await submit(pg, key)
    slow = await submit(pg, key, **{"Idempotency-Key": "the-transaction-path"})
    assert fast.status_code == slow.status_code == 202, (fast.text, slow.text)
    ours, theirs = await written(pg, fast.json()["id"]), await written(pg, slow.json()["id"])
    assert ours == theirs
    assert ours["generation"]["credits_refunded"] == 0
    assert fast.json()["balance"]["credits"] == 92 and slow.json()["balance"]["credits"] == 84
    async with pg.session() as session:
        assert (await session.get(User, user.id)).credits == 84
    await audit_clean(pg)


async def test_lots_drain_soonest_expiring_first_with_the_next_expiration(pg) -> None:
    user, key = await pg.user_with_key(10)  # never expires: spent last
    soon = utcnow() + timedelta(days=2)
    async with pg.session() as session, session.begin():
        await credits.grant(session, user.id, 5, expires_at=utcnow() + timedelta(days=30))
        await credits.grant(session, user.id, 3, expires_at=soon)
    answer = await submit(pg, key)  # 8 credits: the 3 expiring soonest, then 5 of the next
    assert answer.status_code == 202, answer.text
    assert await lots_of(pg, user.id) == [10, 0, 0]
    assert answer.json()["balance"]["credits"] == 10
    assert answer.json()["balance"]["next_expiration"] is None
    async with pg.session() as session, session.begin():
        await credits.grant(session, user.id, 4, expires_at=soon)
    answer = await submit(pg, key)
    assert await lots_of(pg, user.id) == [6, 0, 0, 0]
    assert answer.json()["balance"]["credits"] == 6
    await audit_clean(pg)


async def test_short_balance_writes_nothing(pg) -> None:
    user, key = await pg.user_with_key(7)
    answer = await submit(pg, key)
    assert answer.status_code == 402, answer.text
    assert answer.json()["error"]["code"] == "insufficientCredits"
    async with pg.session() as session:
        assert (await session.scalar(select(Generation.id).where(
            Generation.user_id == user.id))) is None
    assert await lots_of(pg, user.id) == [7]


async def test_expired_lots_take_the_transaction_path(pg) -> None:
    user, key = await pg.user_with_key(8)
    async with pg.session() as session, session.begin():
        lot = await credits.grant(session, user.id, 40, expires_at=utcnow() + timedelta(hours=1))
        await session.execute(update(CreditLot).where(CreditLot.id == lot.id)
                              .values(expires_at=utcnow() - timedelta(seconds=1)))
    answer = await submit(pg, key)  # the expired lot written off first, then the charge
    assert answer.status_code == 202, answer.text
    assert answer.json()["balance"]["credits"] == 0
    assert await lots_of(pg, user.id) == [0, 0]
    await audit_clean(pg)


async def test_a_grant_while_the_charge_waits_for_the_user(pg) -> None:
    """The charge reads the lots after it holds the user's lock: a lot granted meanwhile is
    among them (a single statement would read them as of its start, without it)."""
    user, key = await pg.user_with_key(0)
    async with pg.session() as session, session.begin():
        await session.execute(text("SELECT 1 FROM users WHERE id = :id FOR NO KEY UPDATE"),
                              {"id": user.id})
        waiting = asyncio.create_task(submit(pg, key))
        await asyncio.sleep(0.5)  # the charge is waiting for the lock now
        assert not waiting.done()
        await credits.grant(session, user.id, 8)
    answer = await asyncio.wait_for(waiting, 30)
    assert answer.status_code == 202, answer.text
    assert answer.json()["balance"]["credits"] == 0
    assert await lots_of(pg, user.id) == [0]
    await audit_clean(pg)


async def test_both_paths_and_refunds_at_once_add_up(pg) -> None:
    """Submits in one round trip, submits through the transaction (an Idempotency-Key each)
    and refunds, all at once on one user: every credit accounted for."""
    user, key = await pg.user_with_key(100)
    async with pg.session() as session, session.begin():
        await credits.grant(session, user.id, 60, expires_at=utcnow() + timedelta(days=3))
    earlier = [(await submit(pg, key)).json()["id"] for _ in range(6)]  # 48 of 160

    async def refund(generation_id: str) -> None:
        async with pg.session() as session, session.begin():
            await credits.refund(session, user.id, generation_id, 8)

    async with asyncio.timeout(60):
        answers = await asyncio.gather(
            *(submit(pg, key) for _ in range(30)),
            *(submit(pg, key, **{"Idempotency-Key": f"k{i}"}) for i in range(10)),
            *(refund(generation_id) for generation_id in earlier))
    codes = [a.status_code for a in answers if a is not None]
    assert sorted(set(codes)) == [202, 402] and codes.count(202) == 20  # 160 / 8
    assert sum(await lots_of(pg, user.id)) == 0
    await audit_clean(pg)


async def test_concurrent_submits_of_one_user_never_overdraw(pg) -> None:
    user, key = await pg.user_with_key(80)
    async with asyncio.timeout(60):
        answers = await asyncio.gather(*(submit(pg, key) for _ in range(30)))
    assert sorted(a.status_code for a in answers) == [202] * 10 + [402] * 20
    assert await lots_of(pg, user.id) == [0]
    await audit_clean(pg)


def test_the_row_holds_every_column_of_the_model() -> None:
    generation = Generation(id="gen_x", user_id="usr_x", options={"user": "u"})
    row = submit_sql.row_of(generation)
    assert list(row) == [c.name for c in Generation.__table__.columns]
    assert row["options"] == {"user": "u"} and row["credits_refunded"] == 0
    assert generation.retryable is False  # the defaults land on the model too


async def test_a_database_without_the_function_charges_through_the_transaction(
        pg, caplog: pytest.LogCaptureFixture) -> None:
    """Deployed before `gih db upgrade` ran: submits still work, by the transaction's path."""
    user, key = await pg.user_with_key(16)
    rename = "ALTER FUNCTION gih_charge_generation(json, integer, text, timestamptz) RENAME TO {}"
    async with pg.session() as session, session.begin():
        await session.execute(text(rename.format("gih_charge_generation_away")))
    try:
        answer = await submit(pg, key)
    finally:
        async with pg.session() as session, session.begin():
            await session.execute(text(rename.replace("gih_charge_generation(",
                                                      "gih_charge_generation_away(")
                                       .format("gih_charge_generation")))
    assert answer.status_code == 202, answer.text
    assert "gih db upgrade" in caplog.text
    assert answer.json()["balance"]["credits"] == 8
    assert await lots_of(pg, user.id) == [8]
    assert (await submit(pg, key)).json()["balance"]["credits"] == 0  # the function again
    await audit_clean(pg)

"""The credit ledger: grants, expiry, consumption order, refunds, audit, concurrency."""

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app.credits import service as credits
from app.db import utcnow
from app.errors import InsufficientCredits
from app.models import CreditLedgerEntry, CreditLot, Generation, User
from tests.conftest import bearer


async def new_generation(client, user: User, credits_requested: int) -> str:
    """A bare generation row to hang charges and refunds on."""
    gen_id = "gen_" + secrets.token_hex(8)
    async with client.session() as session, session.begin():
        session.add(Generation(
            id=gen_id, user_id=user.id, status="queued", model="gpt-image-2",
            provider_model="gpt-image-2", prompt="p", size="1024x1024", aspect_ratio="1:1",
            quality="1K", render_quality="auto", output_format="png", n=1,
            credits_requested=credits_requested))
    return gen_id


async def charge(client, user: User, amount: int, generation_id: str | None = None) -> int:
    async with client.session() as session, session.begin():
        balance = await credits.charge(session, user.id, amount, generation_id=generation_id)
        return balance.credits


async def lots_of(client, user: User) -> list[tuple[int, int]]:
    async with client.session() as session:
        rows = await session.execute(select(CreditLot.granted, CreditLot.remaining)
                                     .where(CreditLot.user_id == user.id).order_by(CreditLot.id))
        return [tuple(r) for r in rows]


async def audit(client) -> list:
    async with client.session() as session:
        return await credits.audit(session)


async def test_balance_and_next_expiration(any_db) -> None:
    soon = datetime(2030, 6, 1, tzinfo=UTC)
    later = datetime(2031, 1, 1, tzinfo=UTC)
    user, key = await any_db.user_with_key(100)
    body = (await any_db.http.get("/api/v1/credits", headers=bearer(key))).json()
    assert body == {"object": "credit_balance", "credits": 100, "account_type": "PRO",
                    "next_expiration": None}
    async with any_db.session() as session, session.begin():
        await credits.grant(session, user.id, 50, expires_at=later)
        await credits.grant(session, user.id, 20, expires_at=soon)
        await credits.grant(session, user.id, 5, expires_at=soon)
    body = (await any_db.http.get("/api/v1/credits", headers=bearer(key))).json()
    assert body["credits"] == 175
    assert body["next_expiration"] == {"credits": 25, "expires_at": "2030-06-01T00:00:00.000Z"}


async def test_spending_takes_soonest_expiring_lots_first(any_db) -> None:
    user = await any_db.user(10)  # never expires: spent last
    async with any_db.session() as session, session.begin():
        await credits.grant(session, user.id, 10, expires_at=utcnow() + timedelta(days=30))
        await credits.grant(session, user.id, 10, expires_at=utcnow() + timedelta(days=2))
    assert await charge(any_db, user, 15) == 15
    assert await lots_of(any_db, user) == [(10, 10), (10, 5), (10, 0)]
    assert await charge(any_db, user, 8) == 7
    assert await lots_of(any_db, user) == [(10, 7), (10, 0), (10, 0)]
    assert await audit(any_db) == []


async def test_expired_credits_leave_the_balance(any_db) -> None:
    user, key = await any_db.user_with_key(10)
    async with any_db.session() as session, session.begin():
        lot = await credits.grant(session, user.id, 40, expires_at=utcnow() + timedelta(hours=1))
    assert (await any_db.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"] == 50
    async with any_db.session() as session, session.begin():  # an hour passes for that lot
        await session.execute(update(CreditLot).where(CreditLot.id == lot.id)
                              .values(expires_at=utcnow() - timedelta(seconds=1)))
    body = (await any_db.http.get("/api/v1/credits", headers=bearer(key))).json()
    assert body["credits"] == 10 and body["next_expiration"] is None
    with pytest.raises(InsufficientCredits):  # expired credits cannot be spent either
        await charge(any_db, user, 11)
    assert await charge(any_db, user, 10) == 0
    async with any_db.session() as session:
        expired = await session.scalar(select(func.sum(CreditLedgerEntry.amount)).where(
            CreditLedgerEntry.lot_id == lot.id, CreditLedgerEntry.kind == "expire"))
    assert expired == -40
    assert await audit(any_db) == []


async def test_insufficient_balance_writes_nothing(pg) -> None:
    user = await pg.user(7)
    with pytest.raises(InsufficientCredits):
        await charge(pg, user, 8)
    async with pg.session() as session:
        rows = await session.scalar(select(func.count()).select_from(CreditLedgerEntry)
                                    .where(CreditLedgerEntry.user_id == user.id))
    assert rows == 1  # the grant only
    assert await lots_of(pg, user) == [(7, 7)]


async def test_refund_goes_back_once(any_db) -> None:
    user = await any_db.user(8)
    async with any_db.session() as session, session.begin():
        await credits.grant(session, user.id, 8, expires_at=utcnow() + timedelta(days=1))
    gen_id = await new_generation(any_db, user, 12)
    assert await charge(any_db, user, 12, gen_id) == 4
    async with any_db.session() as session, session.begin():
        assert await credits.refund(session, user.id, gen_id, 6) == 10
    # back to the longest-lived lot first: the never-expiring one had given 4, the other 8
    assert await lots_of(any_db, user) == [(8, 8), (8, 2)]
    with pytest.raises(credits.AlreadyRefunded):
        async with any_db.session() as session, session.begin():
            await credits.refund(session, user.id, gen_id, 6)
    assert await audit(any_db) == []


async def test_database_rejects_a_second_refund_row(pg) -> None:
    user = await pg.user(8)
    gen_id = await new_generation(pg, user, 8)
    await charge(pg, user, 8, gen_id)
    async with pg.session() as session, session.begin():
        await credits.refund(session, user.id, gen_id, 8)
    async with pg.session() as session:
        lot_id = await session.scalar(select(CreditLot.id).where(CreditLot.user_id == user.id))
        session.add(CreditLedgerEntry(user_id=user.id, lot_id=lot_id, generation_id=gen_id,
                                      kind="refund", amount=8))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_concurrent_refunds_of_one_generation_pay_once(pg) -> None:
    user = await pg.user(16)
    gen_id = await new_generation(pg, user, 16)
    await charge(pg, user, 16, gen_id)

    async def refund() -> bool:
        try:
            async with pg.session() as session, session.begin():
                await credits.refund(session, user.id, gen_id, 16)
            return True
        except (credits.AlreadyRefunded, IntegrityError):
            return False

    results = await asyncio.gather(*(refund() for _ in range(10)))
    assert results.count(True) == 1
    async with pg.session() as session:
        assert (await session.get(User, user.id)).credits == 16
    assert await audit(pg) == []


async def test_50_concurrent_charges_of_8_against_200(any_db) -> None:
    client = any_db
    user = await client.user(200)

    async def attempt() -> bool:
        try:
            await charge(client, user, 8)
            return True
        except InsufficientCredits:
            return False

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    assert results.count(True) == 25
    async with client.session() as session:
        assert (await session.get(User, user.id)).credits == 0
    assert await lots_of(client, user) == [(200, 0)]
    assert await audit(client) == []


async def test_audit_finds_tampering(pg) -> None:
    user = await pg.user(30)
    assert await audit(pg) == []
    async with pg.session() as session, session.begin():
        await session.execute(update(User).where(User.id == user.id).values(credits=31))
    try:
        problems = await audit(pg)
        assert {p.user_id for p in problems} == {user.id}
        assert "balance 31 != ledger 30" in problems[0].message
        assert "balance 31 != last balance_after 30" in problems[1].message
    finally:
        async with pg.session() as session, session.begin():
            await session.execute(update(User).where(User.id == user.id).values(credits=30))
    assert await audit(pg) == []


async def test_concurrent_generation_and_charge_of_one_user_do_not_deadlock(pg) -> None:
    """Inserting a generation takes a KEY SHARE lock on its user; the charge's lock on the user
    must not conflict with another request's (FOR UPDATE here deadlocked concurrent submits)."""
    user = await pg.user(80)
    # Ten at a time (the pool has 15 connections) hold their KEY SHARE lock before any charges.
    all_locked = asyncio.Barrier(10)

    async def submit() -> str:
        gen_id = "gen_" + secrets.token_hex(8)
        try:
            async with pg.session() as session, session.begin():
                session.add(Generation(
                    id=gen_id, user_id=user.id, status="queued", model="gpt-image-2",
                    provider_model="gpt-image-2", prompt="p", size="auto", aspect_ratio="auto",
                    quality="1K", render_quality="auto", output_format="png", n=1,
                    credits_requested=8))
                await session.flush()
                await all_locked.wait()
                await credits.charge(session, user.id, 8, generation_id=gen_id)
            return "charged"
        except InsufficientCredits:
            return "402"

    async with asyncio.timeout(60):
        results = await asyncio.gather(*(submit() for _ in range(20)))
    assert sorted(set(results)) == ["402", "charged"] and results.count("charged") == 10
    assert await audit(pg) == []

"""The credit ledger: grant, charge, refund, expire, balance, audit. Nothing else moves credits.

Every movement is one ledger row per lot it touches, written in the caller's transaction together
with the lot and the user's cached balance (`users.credits`), so the three always reconcile.
Writers lock the user's row first; that serialises all movements of one user.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.credits.schemas import Balance, NextExpiration
from app.db import DirectPool, utcnow
from app.errors import InsufficientCredits, NotFound
from app.models import CreditLedgerEntry, CreditLot, CreditMovement, LedgerKind, User


class AlreadyRefunded(Exception):
    """A second refund of one generation: a bug in the caller, refused (the ledger's unique
    index would refuse it too)."""


async def lock_user(session: AsyncSession, user_id: str) -> User:
    # FOR NO KEY UPDATE: serialises this user's movements, yet does not conflict with the
    # KEY SHARE lock that inserting a row referencing the user (a generation) takes; FOR UPDATE
    # would deadlock two concurrent submits of one user.
    user = await session.scalar(
        select(User).where(User.id == user_id).with_for_update(key_share=True)
        .execution_options(populate_existing=True))
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


async def grant(session: AsyncSession, user_id: str, amount: int, *,
                expires_at: datetime | None = None, note: str | None = None,
                source: str = "grant") -> CreditLot:
    if amount <= 0:
        raise ValueError("a grant must be a positive number of credits")
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise ValueError("a grant's expiry must be in the future")
    user = await lock_user(session, user_id)
    await _expire_due(session, user, now)
    lot = CreditLot(user_id=user.id, granted=amount, remaining=amount, expires_at=expires_at,
                    source=source, note=note, created_at=now)
    session.add(lot)
    await session.flush()
    user.credits += amount
    movement = _movement(session, user, LedgerKind.GRANT, amount, now, note=note)
    session.add(CreditLedgerEntry(user_id=user.id, lot_id=lot.id, kind=LedgerKind.GRANT,
                                  amount=amount, note=note, created_at=now, movement=movement))
    await session.flush()
    return lot


def _movement(session: AsyncSession, user: User, kind: LedgerKind, credits: int,
              now: datetime, *, generation_id: str | None = None,
              note: str | None = None) -> CreditMovement:
    """The user-facing row of a movement, with the balance after it (call once the cached
    balance has moved)."""
    movement = CreditMovement(user_id=user.id, kind=kind, credits=credits,
                              balance_after=user.credits, generation_id=generation_id,
                              note=note, created_at=now)
    session.add(movement)
    return movement


async def charge(session: AsyncSession, user_id: str, amount: int, *,
                 generation_id: str | None = None, note: str | None = None) -> Balance:
    """Take `amount` credits, soonest-expiring lots first; returns the balance after it.

    Raises InsufficientCredits (and writes nothing) when the live balance is short.
    """
    if amount <= 0:
        raise ValueError("a charge must be a positive number of credits")
    if session.get_bind().dialect.name == "postgresql":
        charged = await _charge_direct(session, user_id, amount, generation_id=generation_id,
                                       note=note)
        if charged is not None:
            return charged
    now = utcnow()
    user = await lock_user(session, user_id)
    lots = list(await session.scalars(  # one read both writes off the expired and charges
        select(CreditLot)
        .where(CreditLot.user_id == user.id, CreditLot.remaining > 0)
        .order_by(CreditLot.expires_at.asc().nulls_last(), CreditLot.id)
        .with_for_update()))
    _write_off(session, user, [lot for lot in lots if _expired(lot, now)], now)
    lots = [lot for lot in lots if not _expired(lot, now)]
    if user.credits < amount:
        raise InsufficientCredits(
            f"this request needs {amount} credits; the balance is {user.credits}",
            credits_required=amount, credits_available=user.credits)
    user.credits -= amount
    movement = _movement(session, user, LedgerKind.CHARGE, -amount, now,
                         generation_id=generation_id, note=note)
    for lot, take in _drain(lots, amount, user.id):
        session.add(CreditLedgerEntry(user_id=user.id, lot_id=lot.id, generation_id=generation_id,
                                      kind=LedgerKind.CHARGE, amount=-take, note=note,
                                      created_at=now, movement=movement))
    await session.flush()
    return Balance(credits=user.credits, account_type=user.account_type,
                   next_expiration=next_expiration(lots))


# The charge on PostgreSQL without the ORM's unit of work, in the session's transaction: lock
# the user, lock its open lots, then one statement writes the movement, its ledger rows, the
# lots and the cached balance. Lots that have expired need writing off first: that rare case
# takes the ORM path above.
LOCK_USER_SQL = text(
    "SELECT credits, account_type FROM users WHERE id = :user_id FOR NO KEY UPDATE")
OPEN_LOTS_SQL = (
    "SELECT id, remaining, expires_at FROM credit_lots WHERE user_id = $1 AND remaining > 0"
    " ORDER BY expires_at ASC NULLS LAST, id FOR UPDATE")
CHARGE_WRITES_SQL = """
WITH movement AS (
    INSERT INTO credit_movements (user_id, kind, credits, balance_after, generation_id, note,
                                  created_at)
    VALUES ($1, 'charge', $2, $3, $4, $5, $6) RETURNING id),
taken AS (SELECT * FROM unnest($7::bigint[], $8::int[]) AS t(lot_id, take)),
entries AS (
    INSERT INTO credit_ledger (user_id, lot_id, generation_id, kind, amount, note, created_at,
                               movement_id)
    SELECT $1, taken.lot_id, $4, 'charge', -taken.take, $5, $6, movement.id
    FROM taken, movement),
drained AS (
    UPDATE credit_lots SET remaining = remaining - taken.take
    FROM taken WHERE credit_lots.id = taken.lot_id)
UPDATE users SET credits = $3 WHERE id = $1"""


@dataclass
class OpenLot:
    id: int
    remaining: int
    expires_at: datetime | None


Lot = TypeVar("Lot", CreditLot, OpenLot)


async def _charge_direct(session: AsyncSession, user_id: str, amount: int, *,
                         generation_id: str | None, note: str | None) -> Balance | None:
    # Through the session first: that opens its transaction if nothing has yet (the driver
    # connection would run statements outside it, each committed on its own).
    user = (await session.execute(LOCK_USER_SQL, {"user_id": user_id})).mappings().first()
    if user is None:
        raise NotFound(f"no user {user_id}")
    connection = (await (await session.connection()).get_raw_connection()).driver_connection
    if connection is None or not connection.is_in_transaction():
        raise RuntimeError("the charge must run in the session's transaction")
    now = utcnow()
    lots = [OpenLot(row["id"], row["remaining"], row["expires_at"])
            for row in await connection.fetch(OPEN_LOTS_SQL, user_id)]
    if any(_expired(lot, now) for lot in lots):
        return None
    if user["credits"] < amount:
        raise InsufficientCredits(
            f"this request needs {amount} credits; the balance is {user['credits']}",
            credits_required=amount, credits_available=user["credits"])
    drained = _drain(lots, amount, user_id)
    lot_ids, takes = [lot.id for lot, _ in drained], [take for _, take in drained]
    after = user["credits"] - amount
    await connection.execute(CHARGE_WRITES_SQL, user_id, -amount, after, generation_id, note,
                             now, lot_ids, takes)
    return Balance(credits=after, account_type=user["account_type"],
                   next_expiration=next_expiration(lots))


def _drain(lots: list[Lot], amount: int, user_id: str) -> list[tuple[Lot, int]]:
    """Take `amount` from the lots in their order (soonest-expiring first): each lot touched
    and what it gave."""
    taken, left = [], amount
    for lot in lots:
        take = min(left, lot.remaining)
        lot.remaining -= take
        taken.append((lot, take))
        left -= take
        if left == 0:
            break
    if left:  # users.credits disagrees with the lots: refuse rather than overdraw
        raise RuntimeError(f"ledger inconsistent for user {user_id}: lots short by {left}")
    return taken


def _expired(lot: CreditLot | OpenLot, now: datetime) -> bool:
    return lot.expires_at is not None and lot.expires_at <= now


def next_expiration(lots: list[CreditLot] | list[OpenLot]) -> NextExpiration | None:
    """The soonest expiry among live lots, and all credits expiring at that moment."""
    dated = [(lot.expires_at, lot.remaining) for lot in lots
             if lot.remaining > 0 and lot.expires_at is not None]
    if not dated:
        return None
    soonest = min(when for when, _ in dated)
    return NextExpiration(credits=sum(left for when, left in dated if when == soonest),
                          expires_at=soonest)


async def refund(session: AsyncSession, user_id: str, generation_id: str, amount: int, *,
                 note: str | None = None) -> int:
    """Give back `amount` of a generation's charge, once; returns the new balance.

    Credits go back to the lots they came from, latest-expiring first. A second refund of the
    same generation raises AlreadyRefunded (and the ledger's unique index would reject it too).
    """
    if amount <= 0:
        raise ValueError("a refund must be a positive number of credits")
    now = utcnow()
    user = await lock_user(session, user_id)
    movements = list(await session.scalars(
        select(CreditLedgerEntry).where(
            CreditLedgerEntry.generation_id == generation_id,
            CreditLedgerEntry.kind.in_((LedgerKind.CHARGE, LedgerKind.REFUND)))))
    if any(m.kind == LedgerKind.REFUND for m in movements):
        raise AlreadyRefunded(f"generation {generation_id} was already refunded")
    charges = [m for m in movements if m.kind == LedgerKind.CHARGE and m.user_id == user.id
               and m.lot_id is not None]
    if amount > -sum(m.amount for m in charges):
        raise ValueError(f"refund of {amount} exceeds the charge of generation {generation_id}")
    lots = {lot.id: lot for lot in await session.scalars(
        select(CreditLot).where(CreditLot.id.in_([m.lot_id for m in charges])).with_for_update())}
    user.credits += amount
    movement = _movement(session, user, LedgerKind.REFUND, amount, now,
                         generation_id=generation_id, note=note)
    left = amount
    for entry in sorted(charges, key=lambda m: _latest_first(lots[m.lot_id or 0])):
        give = min(left, -entry.amount)
        lots[entry.lot_id or 0].remaining += give
        session.add(CreditLedgerEntry(user_id=user.id, lot_id=entry.lot_id,
                                      generation_id=generation_id, kind=LedgerKind.REFUND,
                                      amount=give, note=note, created_at=now, movement=movement))
        left -= give
        if left == 0:
            break
    await session.flush()
    await _expire_due(session, user, now)  # a refund into a lot that has expired meanwhile
    return user.credits


def _latest_first(lot: CreditLot) -> tuple[int, float, int]:
    if lot.expires_at is None:
        return (0, 0.0, -lot.id)
    return (1, -lot.expires_at.timestamp(), -lot.id)


async def _expire_due(session: AsyncSession, user: User, now: datetime) -> int:
    lots = await session.scalars(
        select(CreditLot)
        .where(CreditLot.user_id == user.id, CreditLot.remaining > 0,
               CreditLot.expires_at <= now)
        .with_for_update())
    expired = _write_off(session, user, list(lots), now)
    if expired:
        await session.flush()
    return expired


def _write_off(session: AsyncSession, user: User, lots: list[CreditLot], now: datetime) -> int:
    """Expire what is left of these (expired, locked) lots; returns the credits written off."""
    expired = sum(lot.remaining for lot in lots)
    if not expired:
        return 0
    user.credits -= expired
    movement = _movement(session, user, LedgerKind.EXPIRE, -expired, now, note="expired")
    for lot in lots:
        session.add(CreditLedgerEntry(user_id=user.id, lot_id=lot.id, kind=LedgerKind.EXPIRE,
                                      amount=-lot.remaining, note="expired", created_at=now,
                                      movement=movement))
        lot.remaining = 0
    return expired


async def balance(session: AsyncSession, user: User) -> Balance:
    """The live balance without writing: the cached total minus anything expired but not yet
    written off. Cost is one indexed query over the user's open lots, whatever the ledger size."""
    rows = await session.execute(
        select(CreditLot.expires_at, func.sum(CreditLot.remaining))
        .where(CreditLot.user_id == user.id, CreditLot.remaining > 0,
               CreditLot.expires_at.is_not(None))
        .group_by(CreditLot.expires_at)
        .order_by(CreditLot.expires_at))
    return _live(user.credits, user.account_type, list(rows.tuples()))


def with_dated_lots(sql: str) -> str:
    """`sql` (a statement whose rows carry `user_id` and the user's `credits` and
    `account_type`) joined to the sums of the user's open dated lots by expiry, soonest first:
    the balance in the same round trip as what the request reads anyway (e.g. the key lookup).
    `balance_of_rows` reads its rows."""
    return (
        "SELECT s.*, l.expires_at AS lot_expires_at, l.credits AS lot_credits FROM (" + sql +
        ") s LEFT JOIN LATERAL (SELECT expires_at, sum(remaining) AS credits FROM credit_lots"
        " WHERE user_id = s.user_id AND remaining > 0 AND expires_at IS NOT NULL"
        " GROUP BY expires_at) l ON true ORDER BY l.expires_at")


# The read of `balance` on PostgreSQL without the ORM (`app.db.DirectPool`), by user id.
USER_BALANCE_SQL = with_dated_lots(
    "SELECT id AS user_id, credits, account_type FROM users WHERE id = $1")


async def user_balance_direct(db: DirectPool, user_id: str) -> Balance:
    """A user's balance by id in one statement (their row and their dated lots)."""
    rows = await db.fetch(USER_BALANCE_SQL, user_id)
    if not rows:
        raise NotFound(f"no user {user_id}")
    return balance_of_rows(rows)


def balance_of_rows(rows: Sequence[Mapping[str, Any]]) -> Balance:
    """The balance from the rows of a `with_dated_lots` statement (all of one user)."""
    return _live(rows[0]["credits"], rows[0]["account_type"],
                 [(row["lot_expires_at"], row["lot_credits"]) for row in rows])


def _live(credits: int, account_type: str,
          dated: list[tuple[datetime | None, int]]) -> Balance:
    """The balance from the cached total and the open lots' sums by expiry, soonest first."""
    now = utcnow()
    expired = 0
    upcoming = None
    for expires_at, lot_credits in dated:
        if expires_at is None:
            continue
        if expires_at <= now:
            expired += lot_credits
        elif upcoming is None:
            upcoming = NextExpiration(credits=int(lot_credits), expires_at=expires_at)
    return Balance(credits=credits - expired, account_type=account_type,
                   next_expiration=upcoming)


@dataclass(frozen=True)
class AuditProblem:
    user_id: str
    email: str
    message: str


async def audit(session: AsyncSession) -> list[AuditProblem]:
    """Check, for every user, that balance = Σ ledger = Σ lots = Σ movements = the last
    movement's balance_after, and each lot = Σ its ledger rows, each movement = Σ its rows."""
    ledger = dict((await session.execute(
        select(CreditLedgerEntry.user_id, func.sum(CreditLedgerEntry.amount))
        .group_by(CreditLedgerEntry.user_id))).tuples().all())
    lots = dict((await session.execute(
        select(CreditLot.user_id, func.sum(CreditLot.remaining))
        .group_by(CreditLot.user_id))).tuples().all())
    movement_sums = dict((await session.execute(
        select(CreditMovement.user_id, func.sum(CreditMovement.credits))
        .group_by(CreditMovement.user_id))).tuples().all())
    last = select(func.max(CreditMovement.id)).group_by(CreditMovement.user_id).scalar_subquery()
    after = dict((await session.execute(
        select(CreditMovement.user_id, CreditMovement.balance_after)
        .where(CreditMovement.id.in_(last)))).tuples().all())
    problems = []
    for user in await session.scalars(select(User).order_by(User.email)):
        in_ledger = int(ledger.get(user.id) or 0)
        in_lots = int(lots.get(user.id) or 0)
        in_movements = int(movement_sums.get(user.id) or 0)
        if not user.credits == in_ledger == in_lots == in_movements:
            problems.append(AuditProblem(
                user.id, user.email, f"balance {user.credits} != ledger {in_ledger} != lots "
                                     f"{in_lots} != movements {in_movements}"))
        if after.get(user.id, 0) != user.credits:
            problems.append(AuditProblem(
                user.id, user.email,
                f"balance {user.credits} != last balance_after {after.get(user.id, 0)}"))
    per_movement = await session.execute(
        select(CreditMovement.id, CreditMovement.user_id, CreditMovement.credits,
               func.coalesce(func.sum(CreditLedgerEntry.amount), 0))
        .outerjoin(CreditLedgerEntry, CreditLedgerEntry.movement_id == CreditMovement.id)
        .group_by(CreditMovement.id, CreditMovement.user_id, CreditMovement.credits)
        .having(CreditMovement.credits != func.coalesce(func.sum(CreditLedgerEntry.amount), 0)))
    for movement_id, user_id, credits, rows in per_movement:
        problems.append(AuditProblem(user_id, "?", f"movement {movement_id}: {credits} != Σ "
                                                   f"its ledger rows {rows}"))
    per_lot = await session.execute(
        select(CreditLot.id, CreditLot.user_id, CreditLot.remaining,
               func.coalesce(func.sum(CreditLedgerEntry.amount), 0))
        .outerjoin(CreditLedgerEntry, CreditLedgerEntry.lot_id == CreditLot.id)
        .group_by(CreditLot.id, CreditLot.user_id, CreditLot.remaining))
    emails = dict((await session.execute(select(User.id, User.email))).tuples().all())
    for lot_id, user_id, remaining, moved in per_lot:
        if remaining != moved:
            problems.append(AuditProblem(
                user_id, emails.get(user_id, "?"),
                f"lot {lot_id}: remaining {remaining} != ledger {moved}"))
    return problems

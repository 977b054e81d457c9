"""The statements behind a key's concurrency and credit limits, on the hot path of every
limited request: on PostgreSQL two round trips in all (the locks; then the count and the
conditional upsert in one statement), as plain SQL with bound values, which SQLAlchemy neither
rebuilds nor re-renders per call (the ORM constructs cost six times the CPU). SQLite has no row
locks and needs none (its transactions take the write lock at BEGIN): ORM statements there.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import UTCDateTime
from app.models import UNFINISHED_STATUSES, Generation, KeySpend

_UNFINISHED = ", ".join(f"'{status.value}'" for status in UNFINISHED_STATUSES)

# FOR NO KEY UPDATE: serialises the key's submits, and locks the user before any key_spend row
# (as every refund does), yet does not conflict with the KEY SHARE lock that inserting a
# generation (which references both rows) takes.
LOCK_KEY_AND_USER = text(
    "SELECT 1 FROM api_keys JOIN users ON users.id = api_keys.user_id "
    "WHERE api_keys.id = :key_id FOR NO KEY UPDATE OF api_keys, users")

_COUNT = (f"(SELECT count(*) FROM generations WHERE api_key_id = :key_id "  # the partial index
          f"AND status IN ({_UNFINISHED}))")  # ix_generations_key_unfinished
_BEFORE = ("(SELECT credits FROM key_spend WHERE api_key_id = :key_id "
           "AND period_start = :period)")

# Sub-statements share one snapshot: _BEFORE sees the spend as it was before the upsert.
COUNT_AND_SPEND = text(f"""
WITH spent AS (
  INSERT INTO key_spend (api_key_id, period_start, credits) VALUES (:key_id, :period, :credits)
  ON CONFLICT (api_key_id, period_start) DO UPDATE SET credits = key_spend.credits + :credits
  WHERE key_spend.credits + :credits <= :credit_limit
  RETURNING key_spend.credits)
SELECT {_COUNT}, {_BEFORE}, (SELECT credits FROM spent)
""").bindparams(bindparam("period", type_=UTCDateTime))
COUNT = text(f"SELECT {_COUNT}, {_BEFORE}, NULL").bindparams(
    bindparam("period", type_=UTCDateTime))


@dataclass(frozen=True)
class Counted:
    unfinished: int  # the key's generations queued or running
    spent: int | None  # the period's spend after this charge; None: refused (or not asked)
    spent_before: int  # the period's spend before it


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def lock_key_and_user(session: AsyncSession, key_id: str) -> None:
    if is_postgres(session):
        await session.execute(LOCK_KEY_AND_USER, {"key_id": key_id})


async def count_and_spend(session: AsyncSession, key_id: str, period: datetime, *,
                          credits: int | None, credit_limit: int | None) -> Counted:
    """Count the key's unfinished generations, and add `credits` (if given) to its spend in
    `period` if that stays within `credit_limit`: one conditional upsert, exact however many
    requests race. Run after lock_key_and_user, so that it sees every committed generation."""
    spend = credits is not None and credit_limit is not None and credits <= credit_limit
    if is_postgres(session):
        params = {"key_id": key_id, "period": period, "credits": credits,
                  "credit_limit": credit_limit}
        found, already, spent = (await session.execute(
            COUNT_AND_SPEND if spend else COUNT, params)).one()
        return Counted(int(found or 0), spent, int(already or 0))
    found, already = (await session.execute(select(
        select(func.count()).select_from(Generation)
        .where(Generation.api_key_id == key_id, Generation.status.in_(UNFINISHED_STATUSES))
        .scalar_subquery(),
        select(KeySpend.credits)
        .where(KeySpend.api_key_id == key_id, KeySpend.period_start == period)
        .scalar_subquery()))).one()
    spent = None
    if spend:
        assert credits is not None and credit_limit is not None
        spent = await session.scalar(
            sqlite.insert(KeySpend)
            .values(api_key_id=key_id, period_start=period, credits=credits)
            .on_conflict_do_update(
                index_elements=[KeySpend.api_key_id, KeySpend.period_start],
                set_={"credits": KeySpend.credits + credits},
                where=KeySpend.credits + credits <= credit_limit)
            .returning(KeySpend.credits))
    return Counted(int(found or 0), spent, int(already or 0))

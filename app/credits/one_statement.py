"""A charge and the generation it pays for in one round trip (PostgreSQL): the submit's usual
case, where the transaction's path (`service.charge` inside `generations.accept`) takes six
(BEGIN, the generation's INSERT, the user's lock, the lots' lock, the writes, COMMIT).

One call of the database function `gih_charge_generation` (migration 0005), outside any
transaction (a statement is atomic): it locks the user, then the user's open lots (the order
every writer keeps), drains them soonest-expiring first and writes what `service.charge`
writes (the movement, one ledger row per lot, the lots, the cached balance) with the
generation's row, or nothing. A function, not one statement of CTEs: each statement of a
function sees what was committed before it, so the lots it reads are those of after the user's
lock; a single statement would read them as of its start (a refund or a grant committed while
it waited for the lock would be missing from them).

It leaves the rare cases to the transaction's path, having written nothing: lots that have
expired (they need writing off first), and lots short of the cached balance (the transaction's
path refuses those).
"""

import json
import logging
from datetime import datetime
from typing import Any

import asyncpg

from app.credits.schemas import Balance
from app.credits.service import OpenLot, next_expiration
from app.errors import InsufficientCredits, NotFound

log = logging.getLogger("gih.credits")
CHARGE_SQL = "SELECT * FROM gih_charge_generation($1::json, $2::int, $3::text, $4::timestamptz)"


async def charge_generation(connection: Any, generation: dict[str, object], amount: int, *,
                            note: str | None, now: datetime) -> Balance | None:
    """Write `generation` (its every column, JSON-ready) and charge its user `amount`, on an
    asyncpg connection outside any transaction: the balance after the charge;
    InsufficientCredits (nothing written) when the balance is short; None (nothing written)
    when the transaction's path must do it (also on a database without the function:
    `gih db upgrade` adds it)."""
    if amount <= 0:
        raise ValueError("a charge must be a positive number of credits")
    try:
        row = await connection.fetchrow(CHARGE_SQL, json.dumps(generation), amount, note, now)
    except asyncpg.UndefinedFunctionError:  # a database not upgraded yet: nothing was written
        log.warning("the database lacks gih_charge_generation (run `gih db upgrade`); charging "
                    "through a transaction meanwhile")
        return None
    outcome = row["outcome"]
    if outcome == "charged":
        lots = [OpenLot(0, left, expires) for left, expires
                in zip(row["lots_left"], row["lots_expire"], strict=True)]
        return Balance(credits=row["credits_before"] - amount, account_type=row["account_type"],
                       next_expiration=next_expiration(lots))
    if outcome == "short":
        raise InsufficientCredits(
            f"this request needs {amount} credits; the balance is {row['credits_before']}",
            credits_required=amount, credits_available=row["credits_before"])
    if outcome == "no_user":
        raise NotFound(f"no user {generation['user_id']}")
    return None  # expired lots, or lots short of the cached balance

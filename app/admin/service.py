"""Admin grants: credits given by an admin (the admin API, the console's Users page), through
the ledger like every grant, recorded with who gave them. An Idempotency-Key makes the grant
happen once per user and key, however often and however concurrently it is retried: the
grant's row is inserted first, under a unique constraint on (user, key); a concurrent twin
waits on that insert, fails on the constraint once the first commits, and answers the first
grant instead."""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as users
from app.credits import service as credits
from app.db import utcnow
from app.errors import IdempotencyConflict, InvalidRequest
from app.ids import new_id
from app.models import CreditGrant
from app.schemas import iso

MAX_GRANT = 1_000_000_000


@dataclass(frozen=True)
class Granted:
    grant: CreditGrant
    created: bool  # False: the answer to a retry of an earlier grant


def fingerprint(credits_: int, expires_at: datetime | None, note: str | None) -> str:
    canonical = {"credits": credits_, "expires_at": iso(expires_at), "note": note}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


async def _earlier(session: AsyncSession, user_id: str, idempotency_key: str,
                   request_hash: str) -> CreditGrant | None:
    earlier = await session.scalar(select(CreditGrant).where(
        CreditGrant.user_id == user_id, CreditGrant.idempotency_key == idempotency_key))
    if earlier is not None and earlier.request_hash != request_hash:
        raise IdempotencyConflict("this Idempotency-Key was already used for a different grant "
                                  "to this user")
    return earlier


async def grant(session: AsyncSession, user_id: str, credits_: int, *,
                expires_at: datetime | None = None, note: str | None = None,
                idempotency_key: str | None = None, granted_by: str | None = None) -> Granted:
    if isinstance(credits_, bool) or not 1 <= credits_ <= MAX_GRANT:
        raise InvalidRequest(f"credits must be a whole number from 1 to {MAX_GRANT:,}",
                             param="credits")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidRequest("expires_at must be in the future", param="expires_at")
    user = await users.get(session, user_id)
    request_hash = fingerprint(credits_, expires_at, note)
    if idempotency_key:
        earlier = await _earlier(session, user.id, idempotency_key, request_hash)
        if earlier is not None:
            return Granted(earlier, created=False)
    row = CreditGrant(id=new_id("grant", 20), user_id=user.id, granted_by=granted_by,
                      credits=credits_, expires_at=expires_at, note=note,
                      idempotency_key=idempotency_key, request_hash=request_hash,
                      created_at=utcnow())
    try:
        async with session.begin_nested():  # the key's uniqueness is decided here
            session.add(row)
            await session.flush()
    except IntegrityError:
        if not idempotency_key:
            raise
        earlier = await _earlier(session, user.id, idempotency_key, request_hash)
        if earlier is None:  # the twin was rolled back meanwhile: the client may retry
            raise IdempotencyConflict("a grant with this Idempotency-Key is in progress; "
                                      "retry") from None
        return Granted(earlier, created=False)
    lot = await credits.grant(session, user.id, credits_, expires_at=expires_at, note=note,
                              source="admin")
    row.lot_id = lot.id
    await session.flush()
    return Granted(row, created=True)


async def grants_of(session: AsyncSession, user_id: str, limit: int = 20) -> list[CreditGrant]:
    return list(await session.scalars(
        select(CreditGrant).where(CreditGrant.user_id == user_id)
        .order_by(CreditGrant.created_at.desc(), CreditGrant.id.desc()).limit(limit)))

"""Sign-in throttling: wrong passwords are counted per email and per client address over a
sliding minute, in the database (so every `gih serve` process sees the same counts). Past
MAX_FAILURES of either, sign-in is refused until the minute has passed, right password or not.

Subjects are stored as hashes: the table names neither emails nor addresses.
"""

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import SignInFailure

WINDOW = timedelta(minutes=1)
MAX_FAILURES = 10  # the 11th wrong password within a minute is refused
KEEP = timedelta(hours=1)  # older failures are deleted as new ones are written


def subject(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value.strip().lower()}".encode()).hexdigest()


@dataclass(frozen=True)
class Subjects:
    email: str
    address: str

    @classmethod
    def of(cls, email: str, address: str | None) -> "Subjects":
        return cls(subject("email", email), subject("address", address or "unknown"))


async def is_throttled(session: AsyncSession, who: Subjects) -> bool:
    since = utcnow() - WINDOW
    rows = await session.execute(
        select(SignInFailure.subject, func.count())
        .where(SignInFailure.subject.in_((who.email, who.address)),
               SignInFailure.failed_at > since)
        .group_by(SignInFailure.subject))
    return any(count >= MAX_FAILURES for _, count in rows.tuples())


async def record_failure(session: AsyncSession, who: Subjects) -> None:
    now = utcnow()
    session.add_all([SignInFailure(subject=who.email, failed_at=now),
                     SignInFailure(subject=who.address, failed_at=now)])
    await session.execute(
        delete(SignInFailure)
        .where(or_(SignInFailure.subject == who.email, SignInFailure.subject == who.address),
               SignInFailure.failed_at < now - KEEP)
        .execution_options(synchronize_session=False))
    await session.flush()


async def forget(session: AsyncSession, who: Subjects) -> None:
    """A successful sign-in clears the email's count (not the address's: one address guessing
    at many accounts stays throttled)."""
    await session.execute(delete(SignInFailure).where(SignInFailure.subject == who.email)
                          .execution_options(synchronize_session=False))

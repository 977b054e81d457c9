"""Users: the accounts that own keys, credits and generations."""

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import DuplicateEmail, NotFound
from app.ids import new_id
from app.models import User


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email):
        raise ValueError(f"not an email address: {email!r}")
    return email


async def create(session: AsyncSession, email: str, *, account_type: str = "FREE") -> User:
    email = normalize_email(email)
    if await session.scalar(select(User.id).where(User.email == email)):
        raise DuplicateEmail(f"a user with email {email} already exists")
    user = User(id=new_id("usr", 16), email=email, account_type=account_type.strip().upper(),
                credits=0, created_at=utcnow())
    session.add(user)
    await session.flush()
    return user


async def get_by_email(session: AsyncSession, email: str) -> User:
    user = await session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user with email {email.strip()}")
    return user


async def count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)

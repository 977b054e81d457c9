"""Users: the accounts that own keys, credits and generations; their passwords, roles and
whether they are disabled. Sign-in and sign-up as the console does them."""

import contextlib
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import passwords, throttle
from app.accounts import sessions as console_sessions
from app.credits import service as credits
from app.db import utcnow
from app.errors import DuplicateEmail, NotFound
from app.ids import new_id
from app.models import User, UserRole

MAX_PAGE = 100
USER_ID_PREFIX = "usr_"


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email) \
            or len(email) > 320:
        raise ValueError(f"not an email address: {email[:320]!r}")
    return email


async def create(session: AsyncSession, email: str, *, account_type: str = "FREE",
                 password_hash: str | None = None, role: UserRole = UserRole.USER) -> User:
    email = normalize_email(email)
    if await session.scalar(select(User.id).where(User.email == email)):
        raise DuplicateEmail(f"a user with email {email} already exists")
    user = User(id=new_id("usr", 16), email=email, account_type=account_type.strip().upper(),
                credits=0, created_at=utcnow(), password_hash=password_hash, role=UserRole(role))
    session.add(user)
    await session.flush()
    return user


async def get_by_email(session: AsyncSession, email: str) -> User:
    user = await session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user with email {email.strip()}")
    return user


async def get(session: AsyncSession, user_id: str, *, for_update: bool = False) -> User:
    user = None
    if user_id.startswith(USER_ID_PREFIX) and len(user_id) <= 32:
        user = await session.get(User, user_id, with_for_update=for_update or None)
    if user is None:
        raise NotFound(f"no user {user_id[:64]}")
    return user


async def count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def search(session: AsyncSession, *, query: str | None = None, limit: int = 50,
                 starting_after: str | None = None) -> tuple[list[User], bool]:
    """Users by email (a part of it, case-insensitive), in email order; a page after the user
    `starting_after`, and whether there are more."""
    statement = select(User)
    if query and query.strip():
        pattern = "%" + query.strip().lower().replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
        statement = statement.where(or_(User.email.like(pattern, escape="\\"),
                                        User.id == query.strip()))
    if starting_after:
        after = await get(session, starting_after)
        statement = statement.where(User.email > after.email)
    rows = list(await session.scalars(statement.order_by(User.email).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


async def set_password(session: AsyncSession, user: User, password: str) -> None:
    """A new password (rules checked), and every session of the user ended."""
    user.password_hash = await passwords.hash_password_async(password)
    await console_sessions.end_all(session, user.id)
    await session.flush()


async def set_role(session: AsyncSession, user: User, role: UserRole) -> None:
    user.role = UserRole(role)
    await session.flush()


async def disable(session: AsyncSession, user: User) -> None:
    """The user's keys and sessions stop working at once (keys are refused on their next
    request; sessions are deleted)."""
    if user.disabled_at is None:
        user.disabled_at = utcnow()
    await console_sessions.end_all(session, user.id)
    await session.flush()


async def enable(session: AsyncSession, user: User) -> None:
    user.disabled_at = None
    await session.flush()


class SignInRefused(Exception):
    """Sign-in failed: a wrong email or password, a disabled user, or too many failures."""

    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.throttled = throttled


WRONG = "That email and password do not match an account."


async def sign_in(session: AsyncSession, email: str, password: str, *,
                  client_address: str | None) -> User:
    """The user whose email and password these are (SignInRefused otherwise). Throttled per
    email and per client address; failures are recorded in the caller's transaction, which
    must be committed even when this raises."""
    who = throttle.Subjects.of(email, client_address)
    if await throttle.is_throttled(session, who):
        raise SignInRefused("Too many failed sign-in attempts. Wait a minute, then try again.",
                            throttled=True)
    user = None
    with contextlib.suppress(ValueError, NotFound):
        user = await get_by_email(session, normalize_email(email))
    ok = await passwords.verify(password, user.password_hash if user else None)
    if user is None or not ok:
        await throttle.record_failure(session, who)
        raise SignInRefused(WRONG)
    if user.disabled_at is not None:
        raise SignInRefused("This account is disabled. Contact the operator of this service.")
    await throttle.forget(session, who)
    return user


@dataclass(frozen=True)
class SignedUp:
    user: User
    credits: int


async def sign_up(session: AsyncSession, email: str, password: str, *,
                  credits_: int = 0) -> SignedUp:
    """A new user with this password (rules checked) and the sign-up grant, through the
    ledger like every grant."""
    password_hash = await passwords.hash_password_async(password)
    user = await create(session, email, password_hash=password_hash)
    if credits_ > 0:
        await credits.grant(session, user.id, credits_, note="sign-up credits", source="signup")
    return SignedUp(user, credits_)

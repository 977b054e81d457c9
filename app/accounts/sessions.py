"""Console sessions: a random id in the browser's cookie, only its HMAC in the database.

A session is valid while its user is not disabled and it was used within IDLE_EXPIRY; each use
moves `last_seen_at` (at most once every TOUCH_EVERY, so a busy page is not a write per
request). Sign-out deletes it; a password change, "Sign out everywhere" and disabling the user
delete all of the user's.

CSRF tokens are derived from the session id (HMAC), so they need no storage and die with it.
Forms shown before sign-in (sign in, sign up) carry a token bound to a separate random cookie
(double submit, signed).
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import Session, User

COOKIE = "gih_session"
ANON_COOKIE = "gih_csrf"  # binds the CSRF token of the sign-in and sign-up forms
IDLE_EXPIRY = timedelta(days=30)
TOUCH_EVERY = timedelta(minutes=5)
TOKEN_BYTES = 32


def hash_id(session_id: str, secret: bytes) -> str:
    return hmac.new(secret, b"session:" + session_id.encode(), hashlib.sha256).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def csrf_token(secret: bytes, bound_to: str) -> str:
    """The CSRF token of forms shown to whoever holds `bound_to` (a session id, or the
    anonymous cookie's value)."""
    return hmac.new(secret, b"csrf:" + bound_to.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret: bytes, bound_to: str | None, token: object) -> bool:
    if not bound_to or not isinstance(token, str) or not token:
        return False
    return hmac.compare_digest(csrf_token(secret, bound_to), token)


@dataclass(frozen=True)
class SignedIn:
    """The console's caller: their user and the session id their cookie holds."""

    user: User
    session_id: str


async def start(session: AsyncSession, user: User, *, secret: bytes) -> str:
    """A new session for `user`; the id to put in the cookie (never stored)."""
    session_id = new_token()
    now = utcnow()
    session.add(Session(id_hash=hash_id(session_id, secret), user_id=user.id, created_at=now,
                        last_seen_at=now))
    await session.flush()
    return session_id


async def resume(session: AsyncSession, session_id: str | None, *,
                 secret: bytes) -> SignedIn | None:
    """The signed-in user of this cookie, or None (no such session, idle too long, or the
    user is disabled). One query; a write at most every TOUCH_EVERY."""
    if not session_id or len(session_id) > 128:
        return None
    id_hash = hash_id(session_id, secret)
    row = (await session.execute(
        select(Session, User).join(User, User.id == Session.user_id)
        .where(Session.id_hash == id_hash))).first()
    if row is None:
        return None
    stored, user = row.Session, row.User
    now = utcnow()
    if user.disabled_at is not None or stored.last_seen_at <= now - IDLE_EXPIRY:
        await session.execute(delete(Session).where(Session.id_hash == id_hash)
                              .execution_options(synchronize_session=False))
        return None
    if now - stored.last_seen_at >= TOUCH_EVERY:
        await touch(session, id_hash, now)
    return SignedIn(user, session_id)


async def touch(session: AsyncSession, id_hash: str, now: datetime) -> None:
    await session.execute(update(Session).where(Session.id_hash == id_hash)
                          .values(last_seen_at=now).execution_options(synchronize_session=False))


async def end(session: AsyncSession, session_id: str, *, secret: bytes) -> None:
    await session.execute(delete(Session).where(Session.id_hash == hash_id(session_id, secret))
                          .execution_options(synchronize_session=False))


async def end_all(session: AsyncSession, user_id: str) -> int:
    """End every session of the user; how many there were."""
    result = await session.execute(delete(Session).where(Session.user_id == user_id)
                                   .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def count_for(session: AsyncSession, user_id: str) -> int:
    return int(await session.scalar(select(func.count()).select_from(Session)
                                    .where(Session.user_id == user_id)) or 0)

"""API keys: generate, hash, issue, list, update limits, revoke, authenticate.

Only HMAC-SHA256(server secret, key) and a short display prefix are stored, so a database dump
cannot be used to call the API.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from sqlalchemy import or_, select
from sqlalchemy import update as update_rows
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import DirectPool, utcnow
from app.errors import AuthError, ErrorCode, InvalidRequest, NotFound
from app.ids import new_id, random_base62
from app.models import ApiKey, LimitReset, User, UserRole

KEY_PREFIX = "gih_live_"
KEY_BODY_LENGTH = 32
KEY_PATTERN = re.compile(r"gih_live_[A-Za-z0-9]{32}")
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 4
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_LIMIT = 1_000_000_000  # the largest limit a key takes (the columns are 32-bit)


def generate_key() -> str:
    return KEY_PREFIX + random_base62(KEY_BODY_LENGTH)


def hash_key(raw_key: str, secret: bytes) -> str:
    return hmac.new(secret, raw_key.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    raw_key: str


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits (None: the server's default, if any; see app/limits/)."""

    rate_limit: int | None = None  # generation requests a minute
    max_concurrency: int | None = None  # generations queued or running at once
    credit_limit: int | None = None  # credits per limit_reset period
    limit_reset: LimitReset | None = None  # None with a credit limit: never

    @classmethod
    def of(cls, key: ApiKey) -> "KeyLimits":
        return cls(key.rate_limit, key.max_concurrency, key.credit_limit, key.limit_reset)


NO_LIMITS = KeyLimits()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key (with its limits) and the user it belongs to. No key (None):
    the user themselves, in the web console; no key limits apply then."""

    key_id: str | None
    user: User
    limits: KeyLimits = NO_LIMITS


async def issue(session: AsyncSession, user: User, *, secret: bytes, name: str | None = None,
                expires_at: datetime | None = None, rate_limit: int | None = None,
                max_concurrency: int | None = None, credit_limit: int | None = None,
                limit_reset: LimitReset | None = None) -> IssuedKey:
    """A new key; a limit left out (or 0) is none of its own."""
    raw_key = generate_key()
    key = ApiKey(id=new_id("key", 16), user_id=user.id, name=name,
                 prefix=raw_key[:DISPLAY_PREFIX_LENGTH], key_hash=hash_key(raw_key, secret),
                 created_at=utcnow(), expires_at=expires_at)
    set_limits(key, rate_limit=rate_limit, max_concurrency=max_concurrency,
               credit_limit=credit_limit, limit_reset=limit_reset)
    session.add(key)
    await session.flush()
    return IssuedKey(key=key, raw_key=raw_key)


async def update(session: AsyncSession, key_id: str, *, rate_limit: int | None = None,
                 max_concurrency: int | None = None, credit_limit: int | None = None,
                 limit_reset: LimitReset | None = None) -> ApiKey:
    """Change a key's limits: a limit given replaces the key's (0 clears it), one left out
    (None) stays. The next request of the key sees them."""
    key = await session.get(ApiKey, key_id, with_for_update={"key_share": True}) \
        if key_id.startswith("key_") else None
    if key is None:
        raise NotFound(f"no API key with id {key_id[:64]}")
    set_limits(key, rate_limit=rate_limit, max_concurrency=max_concurrency,
               credit_limit=credit_limit, limit_reset=limit_reset)
    await session.flush()
    return key


def set_limits(key: ApiKey, *, rate_limit: int | None, max_concurrency: int | None,
               credit_limit: int | None, limit_reset: LimitReset | None) -> None:
    """Apply the limits given (None: unchanged, 0: cleared). A credit limit without a reset
    period never resets; clearing the credit limit clears its period too."""
    for name, value in (("rate_limit", rate_limit), ("max_concurrency", max_concurrency),
                        ("credit_limit", credit_limit)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
            raise InvalidRequest(f"{name} must be a whole number from 0 (no limit) to "
                                 f"{MAX_LIMIT}", param=name)
        setattr(key, name, value or None)
    if limit_reset is not None:
        key.limit_reset = LimitReset(limit_reset)
    if key.credit_limit is None and credit_limit == 0 and limit_reset is None:
        key.limit_reset = None
    elif key.credit_limit is not None and key.limit_reset is None:
        key.limit_reset = LimitReset.NEVER


async def list_for_user(session: AsyncSession, user: User) -> list[ApiKey]:
    result = await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.created_at, ApiKey.id))
    return list(result)


async def revoke(session: AsyncSession, key_id: str, *, secret: bytes) -> ApiKey:
    """Revoke by key id (key_...), or by the raw key itself if that is what the operator has."""
    if KEY_PATTERN.fullmatch(key_id):
        key = await session.scalar(select(ApiKey).where(
            ApiKey.key_hash == hash_key(key_id, secret)).with_for_update())
        shown = key_id[:DISPLAY_PREFIX_LENGTH] + "..."
    else:
        key = await session.get(ApiKey, key_id, with_for_update=True)
        shown = key_id
    if key is None:
        raise NotFound(f"no API key with id {shown}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    await session.flush()
    return key


async def authenticate(session: AsyncSession, authorization: str | None, *,
                       secret: bytes) -> Principal:
    key_hash = hash_key(raw_key_of(authorization), secret)
    row = (await session.execute(
        select(ApiKey, User).join(User, User.id == ApiKey.user_id)
        .where(ApiKey.key_hash == key_hash))).first()
    if row is None:
        raise AuthError(ErrorCode.INVALID_API_KEY, "API key is not valid")
    key, user = row.ApiKey, row.User
    principal, stale = checked(key_hash, key.key_hash, key.revoked_at, key.expires_at,
                               key.last_used_at, KeyLimits.of(key), key.id, user)
    if stale:
        await touch(session, key.id, utcnow())
    return principal


# The same lookup on PostgreSQL without the ORM (`app.db.DirectPool`), for every request.
LOOKUP_SQL = (
    "SELECT k.id, k.key_hash, k.revoked_at, k.expires_at, k.last_used_at, k.rate_limit,"
    " k.max_concurrency, k.credit_limit, k.limit_reset, u.id AS user_id, u.email,"
    " u.account_type, u.credits, u.created_at, u.role, u.disabled_at"
    " FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1")
TOUCH_SQL = ("UPDATE api_keys SET last_used_at = $2"
             " WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)")


async def authenticate_direct(db: DirectPool, authorization: str | None, *,
                              secret: bytes) -> Principal:
    principal, _ = await authenticate_direct_with(db, authorization, LOOKUP_SQL, secret=secret)
    return principal


async def authenticate_direct_with(db: DirectPool, authorization: str | None, sql: str,
                                   *args: object, secret: bytes
                                   ) -> tuple[Principal, list[asyncpg.Record]]:
    """Authenticate by `sql`, LOOKUP_SQL or a statement built on it whose rows start with its
    columns (one row or more, all of the same key; `$1` the key's hash, `args` from `$2`), so a
    read the request needs next rides in the same round trip; the caller and every row."""
    key_hash = hash_key(raw_key_of(authorization), secret)
    rows = await db.fetch(sql, key_hash, *args)
    if not rows:
        raise AuthError(ErrorCode.INVALID_API_KEY, "API key is not valid")
    row = rows[0]
    user = User(id=row["user_id"], email=row["email"], account_type=row["account_type"],
                credits=row["credits"], created_at=row["created_at"],
                role=UserRole(row["role"]), disabled_at=row["disabled_at"])
    limit_reset = row["limit_reset"]
    limits = KeyLimits(row["rate_limit"], row["max_concurrency"], row["credit_limit"],
                       LimitReset(limit_reset) if limit_reset else None)
    principal, stale = checked(key_hash, row["key_hash"], row["revoked_at"], row["expires_at"],
                               row["last_used_at"], limits, row["id"], user)
    if stale:
        now = utcnow()
        await db.execute(TOUCH_SQL, row["id"], now, now - LAST_USED_RESOLUTION)
    return principal, rows


def raw_key_of(authorization: str | None) -> str:
    raw_key = bearer_token(authorization)
    if not KEY_PATTERN.fullmatch(raw_key):
        raise AuthError(ErrorCode.INVALID_API_KEY, "API key is malformed")
    return raw_key


def checked(key_hash: str, stored_hash: str, revoked_at: datetime | None,
            expires_at: datetime | None, last_used_at: datetime | None, limits: KeyLimits,
            key_id: str, user: User) -> tuple[Principal, bool]:
    """The caller of a key found by its hash, or AuthError; and whether its last use is due
    to be recorded."""
    # The lookup is by hash; compare again in constant time so no timing depends on the key.
    if not hmac.compare_digest(stored_hash, key_hash):
        raise AuthError(ErrorCode.INVALID_API_KEY, "API key is not valid")
    if revoked_at is not None:
        raise AuthError(ErrorCode.INVALID_API_KEY, "API key has been revoked")
    if user.disabled_at is not None:  # `gih users disable`, or the console's Users page
        raise AuthError(ErrorCode.INVALID_API_KEY, "the account of this API key is disabled")
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise AuthError(ErrorCode.EXPIRED_API_KEY, "API key has expired")
    stale = last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION
    return Principal(key_id=key_id, user=user, limits=limits), stale


async def touch(session: AsyncSession, key_id: str, now: datetime) -> None:
    """Record use at most once a minute per key, so a busy key is not a write per request."""
    stale = now - LAST_USED_RESOLUTION
    await session.execute(
        update_rows(ApiKey)
        .where(ApiKey.id == key_id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < stale))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False))


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError(ErrorCode.MISSING_API_KEY,
                        "missing Authorization: Bearer <API key> header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(ErrorCode.MISSING_API_KEY,
                        "Authorization header must be 'Bearer <API key>'")
    return token.strip()

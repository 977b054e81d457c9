"""The admin API (section 13), for billing integrations: a Bearer key of an admin user;
anyone else is 403 `forbidden`. Credits move through the same ledger as everywhere else."""

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import passwords
from app.accounts import service as users
from app.admin import service as admin
from app.admin import usage as usage_figures
from app.admin.schemas import (
    ADMIN_ERRORS,
    NOT_FOUND,
    AdminKey,
    AdminUser,
    AdminUserDetail,
    AdminUserList,
    CreditGrantOut,
    DayModelUsage,
    DayUsage,
    ModelUsage,
    NewAdminKey,
    NewGrant,
    NewKey,
    NewUser,
    UsageFigures,
    UsageReport,
)
from app.credits import service as credits
from app.db import utcnow
from app.deps import CurrentPrincipal, ReaderDep, RuntimeDep, SessionDep
from app.errors import Forbidden, InvalidRequest, NotFound
from app.generations.request import check_idempotency_key
from app.keys import service as keys
from app.keys.service import Principal
from app.limits import service as limits
from app.models import ApiKey, User, UserRole
from app.openapi import error_doc

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

DEFAULT_USAGE_DAYS = 30


async def admin_principal(principal: CurrentPrincipal) -> Principal:
    if principal.user.role != UserRole.ADMIN:
        raise Forbidden("this API key's user is not an admin")
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", json_schema_extra={"maxLength": 255},
    description="per user: a retry with the same key and body answers the first grant and "
                "grants nothing more")]


def utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


async def user_out(session: AsyncSession, user: User) -> AdminUser:
    return AdminUser.of(user, await credits.balance(session, user))


async def keys_out(session: AsyncSession, user: User) -> list[AdminKey]:
    now = utcnow()
    found = await keys.list_for_user(session, user)
    spent = await limits.current_spend(session, found, now)
    return [AdminKey.of_key(key, now, spend=spent.get(key.id, 0)) for key in found]


@router.get("/users", responses=ADMIN_ERRORS)
async def list_users(
    _: AdminPrincipal, reader: ReaderDep,
    q: Annotated[str | None, Query(max_length=320, description="a part of the email, or an "
                                                                "id")] = None,
    limit: Annotated[int, Query(ge=1, le=users.MAX_PAGE)] = 20,
    starting_after: Annotated[str | None, Query(max_length=40)] = None,
) -> AdminUserList:
    """Users in email order, with their balances; `q` searches."""
    found, has_more = await users.search(reader, query=q, limit=limit,
                                         starting_after=starting_after)
    return AdminUserList(data=[await user_out(reader, user) for user in found],
                         has_more=has_more)


@router.post("/users", status_code=201, responses={
    **ADMIN_ERRORS, 409: error_doc("duplicateEmail: a user has this email")})
async def create_user(body: NewUser, _: AdminPrincipal, session: SessionDep) -> AdminUser:
    """A new user (a password for the console, a role, a first grant: all optional)."""
    try:
        email = users.normalize_email(body.email)
        password_hash = (await passwords.hash_password_async(body.password)
                         if body.password is not None else None)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="password" if isinstance(
            exc, passwords.WeakPassword) else "email") from None
    user = await users.create(session, email, account_type=body.account_type,
                              password_hash=password_hash, role=body.role)
    if body.credits:
        await credits.grant(session, user.id, body.credits, note="initial grant",
                            source="admin")
    return await user_out(session, user)


@router.get("/users/{user_id}", responses={**ADMIN_ERRORS, **NOT_FOUND})
async def get_user(user_id: str, _: AdminPrincipal, reader: ReaderDep) -> AdminUserDetail:
    """A user, their balance and their keys."""
    user = await users.get(reader, user_id)
    base = await user_out(reader, user)
    return AdminUserDetail(**base.model_dump(), keys=await keys_out(reader, user))


@router.post("/users/{user_id}/credits", status_code=201, responses={
    **ADMIN_ERRORS, **NOT_FOUND,
    200: {"model": CreditGrantOut, "description": "a retry: the earlier grant, nothing more "
                                                  "granted"},
    409: error_doc("idempotencyConflict: the key was used for another grant")})
async def grant_credits(user_id: str, body: NewGrant, response: Response,
                        principal: AdminPrincipal, session: SessionDep,
                        idempotency_key: IdempotencyKey = None) -> CreditGrantOut:
    """Grant credits (a new lot, optionally expiring). Send an `Idempotency-Key` (e.g. the
    payment's id): a retry then grants nothing more and answers the first grant (200)."""
    granted = await admin.grant(session, user_id, body.credits, expires_at=utc(body.expires_at),
                                note=body.note, idempotency_key=check_idempotency_key(
                                    idempotency_key), granted_by=principal.user.id)
    if not granted.created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    user = await users.get(session, granted.grant.user_id)
    return CreditGrantOut.of(granted.grant, await credits.balance(session, user))


@router.post("/users/{user_id}/keys", status_code=201, responses={**ADMIN_ERRORS, **NOT_FOUND})
async def create_key(user_id: str, body: NewKey, _: AdminPrincipal, rt: RuntimeDep,
                     session: SessionDep) -> NewAdminKey:
    """A key for the user, with optional expiry and limits; the raw key is in this answer
    only."""
    expires_at = utc(body.expires_at)
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidRequest("expires_at must be in the future", param="expires_at")
    user = await users.get(session, user_id)
    issued = await keys.issue(session, user, secret=rt.secret, name=body.name,
                              expires_at=expires_at, rate_limit=body.rate_limit,
                              max_concurrency=body.max_concurrency,
                              credit_limit=body.credit_limit, limit_reset=body.limit_reset)
    info = AdminKey.of_key(issued.key, utcnow())
    return NewAdminKey(**info.model_dump(), key=issued.raw_key)


@router.delete("/keys/{key_id}", responses={**ADMIN_ERRORS, **NOT_FOUND})
async def revoke_key(key_id: str, _: AdminPrincipal, rt: RuntimeDep,
                     session: SessionDep) -> AdminKey:
    """Revoke a key (by id); it stops working on its next request."""
    if not key_id.startswith("key_") or len(key_id) > 32:
        raise NotFound(f"no API key with id {key_id[:64]}")
    key: ApiKey = await keys.revoke(session, key_id, secret=rt.secret)
    return AdminKey.of_key(key, utcnow())


@router.get("/usage", responses=ADMIN_ERRORS)
async def get_usage(
    _: AdminPrincipal, reader: ReaderDep,
    since: Annotated[datetime | None, Query(alias="from", description="start (ISO 8601; "
                                            "default: 30 days ago)")] = None,
    until: Annotated[datetime | None, Query(alias="to", description="end, excluded (ISO "
                                            "8601; default: now)")] = None,
) -> UsageReport:
    """Credits charged and refunded, generations and failure rate, per day (UTC) and per
    model, with the mean time of a succeeded generation."""
    end = utc(until) or utcnow()
    start = utc(since) or end - timedelta(days=DEFAULT_USAGE_DAYS)
    if start >= end:
        raise InvalidRequest("from must be before to", param="from")
    found = await usage_figures.usage(reader, since=start, until=end)
    return UsageReport(
        from_=start, to=end, total=UsageFigures.of(found.total),
        days=[DayUsage.of(f, day=day) for day, f in found.by_day.items()],
        models=[ModelUsage.of(f, model=model) for model, f in sorted(found.by_model.items())],
        rows=[DayModelUsage.of(f, day=day, model=model) for day, model, f in found.rows])

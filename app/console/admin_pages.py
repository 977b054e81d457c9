"""The console's admin pages: Users (search, balances, one user: grant credits, create or revoke
keys, disable) and Usage. The same services as the admin API; grants through the ledger."""

import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.admin import service as admin
from app.admin import usage as usage_figures
from app.console.forms import FormProblem, expiry_in_days, future_date, text, whole_number
from app.console.web import AdminViewerDep, PageError, Viewer, checked_form, redirect, render
from app.credits import ledger
from app.credits import service as credits
from app.db import utcnow
from app.deps import RuntimeDep
from app.errors import ApiError, NotFound
from app.keys import service as keys
from app.keys.schemas import ApiKeyInfo
from app.limits import service as limits
from app.models import ApiKey, User
from app.runtime import Runtime

router = APIRouter(prefix="/admin", include_in_schema=False)

NOTICES = {
    "granted": "Credits granted.",
    "already": "That grant was already made (the form was sent twice); nothing more was granted.",
    "key-revoked": "The key was revoked.",
    "disabled": "The user is disabled: their keys and sessions stopped working.",
    "enabled": "The user is enabled again.",
}
USAGE_DAYS = 30


async def user_of(session: AsyncSession, user_id: str) -> User:
    try:
        return await accounts.get(session, user_id)
    except NotFound:
        raise PageError(404, "No such user", "There is no user with this id.") from None


@router.get("/users")
async def users_page(request: Request, rt: RuntimeDep, viewer: AdminViewerDep,
                     q: Annotated[str | None, Query(max_length=320)] = None,
                     starting_after: Annotated[str | None, Query(max_length=40)] = None
                     ) -> Response:
    async with rt.reader() as session:
        try:
            found, has_more = await accounts.search(session, query=q, limit=50,
                                                    starting_after=starting_after)
        except NotFound:
            raise PageError(404, "No such page", "That page of users does not exist.") from None
        rows = [(user, await credits.balance(session, user)) for user in found]
    more = ("/admin/users?" + urlencode({"starting_after": found[-1].id, **({"q": q} if q else {})})
            if has_more and found else None)
    return render(request, "admin_users.html", viewer=viewer, rows=rows, q=q or "", more=more)


async def user_page(request: Request, rt: Runtime, viewer: Viewer, user_id: str, *,
                    status: int = 200, **context: object) -> Response:
    now = utcnow()
    async with rt.reader() as session:
        user = await user_of(session, user_id)
        balance = await credits.balance(session, user)
        found = await keys.list_for_user(session, user)
        spent = await limits.current_spend(session, found, now)
        movements = await ledger.page(session, user.id, limit=10)
    return render(request, "admin_user.html", status=status, viewer=viewer, person=user,
                  balance=balance, movements=movements.data,
                  keys=[ApiKeyInfo.of(k, now, spend=spent.get(k.id, 0)) for k in reversed(found)],
                  grant_token=secrets.token_urlsafe(16), **context)


@router.get("/users/{user_id}")
async def user_detail(user_id: str, request: Request, rt: RuntimeDep, viewer: AdminViewerDep,
                      notice: str | None = None) -> Response:
    return await user_page(request, rt, viewer, user_id, notice=NOTICES.get(notice or ""))


@router.post("/users/{user_id}/credits")
async def grant_credits(user_id: str, request: Request, rt: RuntimeDep,
                        viewer: AdminViewerDep) -> Response:
    form = await checked_form(request, rt, viewer)
    try:
        amount = whole_number(form, "credits", "Credits", minimum=1, maximum=admin.MAX_GRANT)
        if amount is None:
            raise FormProblem("Enter the number of credits to grant.")
        expires_at = future_date(form, "expires_at", "Expiry")
        note = text(form, "note", max_length=1000)
    except FormProblem as exc:
        return await user_page(request, rt, viewer, user_id, status=400, grant_error=str(exc))
    # The form's own token makes a double submit (or a reload) grant once.
    token = text(form, "grant_token", max_length=64)
    try:
        async with rt.transaction() as session:
            granted = await admin.grant(
                session, (await user_of(session, user_id)).id, amount, expires_at=expires_at,
                note=note or "granted in the console",
                idempotency_key=f"console:{token}" if token else None,
                granted_by=viewer.user.id)
    except ApiError as exc:
        return await user_page(request, rt, viewer, user_id, status=exc.status,
                               grant_error=exc.message)
    return redirect(f"/admin/users/{user_id}?notice={'granted' if granted.created else 'already'}")


@router.post("/users/{user_id}/keys")
async def create_key(user_id: str, request: Request, rt: RuntimeDep,
                     viewer: AdminViewerDep) -> Response:
    form = await checked_form(request, rt, viewer)
    try:
        name = text(form, "name", max_length=200)
        expires_at = expiry_in_days(form)
    except FormProblem as exc:
        return await user_page(request, rt, viewer, user_id, status=400, key_error=str(exc))
    async with rt.transaction() as session:
        user = await user_of(session, user_id)
        issued = await keys.issue(session, user, secret=rt.secret, name=name,
                                  expires_at=expires_at)
    return await user_page(request, rt, viewer, user_id, created=issued.raw_key,
                           created_id=issued.key.id)


@router.post("/users/{user_id}/keys/{key_id}/revoke")
async def revoke_key(user_id: str, key_id: str, request: Request, rt: RuntimeDep,
                     viewer: AdminViewerDep) -> Response:
    await checked_form(request, rt, viewer)
    async with rt.transaction() as session:
        key = await session.get(ApiKey, key_id) if key_id.startswith("key_") else None
        if key is None or key.user_id != user_id:
            raise PageError(404, "No such key", "This user has no API key with this id.")
        await keys.revoke(session, key.id, secret=rt.secret)
    return redirect(f"/admin/users/{user_id}?notice=key-revoked")


@router.post("/users/{user_id}/disable")
async def disable_user(user_id: str, request: Request, rt: RuntimeDep,
                       viewer: AdminViewerDep) -> Response:
    await checked_form(request, rt, viewer)
    if user_id == viewer.user.id:
        raise PageError(400, "Not allowed", "You cannot disable your own account.")
    async with rt.transaction() as session:
        await accounts.disable(session, await user_of(session, user_id))
    return redirect(f"/admin/users/{user_id}?notice=disabled")


@router.post("/users/{user_id}/enable")
async def enable_user(user_id: str, request: Request, rt: RuntimeDep,
                      viewer: AdminViewerDep) -> Response:
    await checked_form(request, rt, viewer)
    async with rt.transaction() as session:
        await accounts.enable(session, await user_of(session, user_id))
    return redirect(f"/admin/users/{user_id}?notice=enabled")


def _day(value: str | None, label: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value[:10]).replace(tzinfo=UTC)
    except ValueError:
        raise PageError(400, "Not a date", f"{label} must be a date such as 2027-01-31.") \
            from None


@router.get("/usage")
async def usage_page(request: Request, rt: RuntimeDep, viewer: AdminViewerDep,
                     since: Annotated[str | None, Query(alias="from", max_length=40)] = None,
                     until: Annotated[str | None, Query(alias="to", max_length=40)] = None
                     ) -> Response:
    """Days are UTC; `to` is included (the page's dates are whole days)."""
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    last = _day(until, "To") or today
    first = _day(since, "From") or last - timedelta(days=USAGE_DAYS - 1)
    if first > last:
        raise PageError(400, "Dates out of order", "From must not be after To.")
    async with rt.reader() as session:
        found = await usage_figures.usage(session, since=first, until=last + timedelta(days=1))
    return render(request, "admin_usage.html", viewer=viewer, usage=found,
                  days=sorted(found.by_day.items(), reverse=True),
                  models=sorted(found.by_model.items()), first=first.date().isoformat(),
                  last=last.date().isoformat())

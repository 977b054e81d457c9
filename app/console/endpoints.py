"""The console's pages for a signed-in user: API keys, Credits, Generations (and one
generation), Playground, Webhooks. Every page reads through the services the API uses; every
form posts with the session's CSRF token. (Sign-in and Account: auth.py; admin pages:
admin_pages.py; thumbnails and images: images.py.)"""

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, FastAPI, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.console import admin_pages, auth, images, web
from app.console.forms import FormProblem, choice, expiry_in_days, text, whole_number
from app.console.web import (
    PageError,
    Viewer,
    ViewerDep,
    check_csrf,
    checked_form,
    redirect,
    render,
)
from app.credits import ledger
from app.credits import service as credits
from app.db import utcnow
from app.deps import ReaderDep, RuntimeDep
from app.errors import ApiError, NotCancelable, NotFound
from app.generations import flow, jobs, listing, waiting
from app.generations import service as generations
from app.generations.request import parse_input, read_body
from app.generations.schemas import Generation
from app.keys import service as keys
from app.keys.schemas import ApiKeyInfo
from app.keys.service import Principal
from app.limits import service as limits
from app.models import ApiKey, GenerationStatus, LimitReset, User
from app.runtime import Runtime
from app.webhooks import service as webhooks

router = APIRouter(include_in_schema=False)
router.include_router(auth.router)
router.include_router(admin_pages.router)
router.include_router(images.router)

PAGE = 20
PLAYGROUND_WAIT_S = 120.0  # then the page shows the generation as still running
PLAYGROUND_FIELDS = ("model", "prompt", "aspect_ratio", "quality", "n")
NOTICES = {
    "welcome": "Welcome! Create an API key to call the API, or try the Playground.",
    "revoked": "The key was revoked. Requests with it are refused from now on.",
    "canceled": "The generation was canceled and its credits refunded.",
    "not-cancelable": "That generation has already started, so it can no longer be canceled.",
    "rotated": "A new signing secret was made. The previous one keeps signing for 24 hours.",
}


def console_principal(user: User) -> Principal:
    """A console user acting without a key: no key, so no key limits; the ledger as ever."""
    return Principal(key_id=None, user=user)


async def fresh_user(session: AsyncSession, viewer: Viewer) -> User:
    user = await session.get(User, viewer.user.id)
    if user is None:
        raise PageError(404, "No such account", "This account no longer exists.")
    return user


# --- API keys ----------------------------------------------------------------------------------

async def key_rows(session: AsyncSession, user: User) -> list[ApiKeyInfo]:
    now = utcnow()
    found = await keys.list_for_user(session, user)
    spent = await limits.current_spend(session, found, now)
    return [ApiKeyInfo.of(key, now, spend=spent.get(key.id, 0)) for key in reversed(found)]


async def keys_page(request: Request, rt: Runtime, viewer: Viewer, *, status: int = 200,
                    **context: object) -> Response:
    async with rt.reader() as session:
        rows = await key_rows(session, viewer.user)
    return render(request, "keys.html", status=status, viewer=viewer, keys=rows,
                  resets=[r.value for r in LimitReset], **context)


@router.get("/keys")
async def api_keys_page(request: Request, rt: RuntimeDep, viewer: ViewerDep,
                        notice: str | None = None) -> Response:
    return await keys_page(request, rt, viewer, notice=NOTICES.get(notice or ""))


@router.post("/keys")
async def create_key(request: Request, rt: RuntimeDep, viewer: ViewerDep) -> Response:
    form = await checked_form(request, rt, viewer)
    try:
        name = text(form, "name", max_length=200)
        expires_at = expiry_in_days(form)
        rate_limit = whole_number(form, "rate_limit", "Requests per minute")
        max_concurrency = whole_number(form, "max_concurrency", "Concurrent generations")
        credit_limit = whole_number(form, "credit_limit", "Credit limit")
        reset = choice(form, "limit_reset", "Limit reset", [r.value for r in LimitReset])
    except FormProblem as exc:
        return await keys_page(request, rt, viewer, status=400, error=str(exc), form=form)
    async with rt.transaction() as session:
        user = await fresh_user(session, viewer)
        issued = await keys.issue(session, user, secret=rt.secret, name=name,
                                  expires_at=expires_at, rate_limit=rate_limit,
                                  max_concurrency=max_concurrency, credit_limit=credit_limit,
                                  limit_reset=LimitReset(reset) if reset else None)
    # The raw key is in this answer only; the page's script then replaces the address with
    # /keys, so a reload shows the list without it.
    return await keys_page(request, rt, viewer, created=issued.raw_key,
                           created_id=issued.key.id)


async def own_key(session: AsyncSession, user_id: str, key_id: str) -> ApiKey:
    key = None
    if key_id.startswith("key_") and len(key_id) <= 32:
        key = await session.get(ApiKey, key_id, with_for_update=True)
    if key is None or key.user_id != user_id:
        raise PageError(404, "No such key", "There is no API key with this id in your account.")
    return key


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request, rt: RuntimeDep,
                     viewer: ViewerDep) -> Response:
    await checked_form(request, rt, viewer)
    async with rt.transaction() as session:
        key = await own_key(session, viewer.user.id, key_id)
        await keys.revoke(session, key.id, secret=rt.secret)
    return redirect("/keys?notice=revoked")


# --- Credits -----------------------------------------------------------------------------------

@router.get("/credits")
async def credits_page(
    request: Request, viewer: ViewerDep, reader: ReaderDep,
    starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ending_before: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    user = await fresh_user(reader, viewer)
    balance = await credits.balance(reader, user)
    try:
        movements = await ledger.page(reader, user.id, limit=PAGE, starting_after=starting_after,
                                      ending_before=ending_before)
    except ApiError:
        raise PageError(404, "No such page", "That page of the ledger does not exist.") from None
    rows = movements.data
    newer = older = None
    if rows:
        first, last = rows[0].id, rows[-1].id
        paging_back = ending_before is not None
        if (paging_back and movements.has_more) or (not paging_back and starting_after):
            newer = f"/credits?ending_before={first}"
        if (not paging_back and movements.has_more) or paging_back:
            older = f"/credits?starting_after={last}"
    return render(request, "credits.html", viewer=viewer, balance=balance, movements=rows,
                  newer=newer, older=older)


# --- Generations -------------------------------------------------------------------------------

@router.get("/generations")
async def generations_page(
    request: Request, rt: RuntimeDep, viewer: ViewerDep, reader: ReaderDep,
    starting_after: Annotated[str | None, Query(max_length=100)] = None,
    ending_before: Annotated[str | None, Query(max_length=100)] = None,
    status: GenerationStatus | None = None, notice: str | None = None,
) -> Response:
    try:
        found = await listing.page(reader, viewer.user.id, limit=PAGE,
                                   starting_after=starting_after, ending_before=ending_before,
                                   status=status)
    except ApiError:
        raise PageError(404, "No such page", "That page of generations does not exist.") \
            from None
    shown = [Generation.of(row, found.images.get(row.id, []), storage=rt.storage,
                           base_url=rt.settings.base_url) for row in found.generations]
    filtered = f"&status={status.value}" if status else ""
    newer = older = None
    if shown:
        paging_back = ending_before is not None
        if (paging_back and found.has_more) or (not paging_back and starting_after):
            newer = f"/generations?ending_before={shown[0].id}{filtered}"
        if (not paging_back and found.has_more) or paging_back:
            older = f"/generations?starting_after={shown[-1].id}{filtered}"
    return render(request, "generations.html", viewer=viewer, generations=shown,
                  status_filter=status.value if status else "", statuses=[s.value for s in
                                                                   GenerationStatus],
                  newer=newer, older=older, notice=NOTICES.get(notice or ""))


@router.get("/generations/{generation_id}")
async def generation_page(generation_id: str, request: Request, rt: RuntimeDep,
                          viewer: ViewerDep, reader: ReaderDep,
                          notice: str | None = None) -> Response:
    try:
        row, delivered = await generations.get_for_owner(reader, generation_id, viewer.user.id)
    except NotFound:
        raise PageError(404, "No such generation",
                        "There is no generation with this id in your account.") from None
    shown = Generation.of(row, delivered, storage=rt.storage, base_url=rt.settings.base_url)
    return render(request, "generation.html", viewer=viewer, generation=shown,
                  reference_count=row.reference_count, notice=NOTICES.get(notice or ""))


@router.post("/generations/{generation_id}/cancel")
async def cancel_generation(generation_id: str, request: Request, rt: RuntimeDep,
                            viewer: ViewerDep, background: BackgroundTasks) -> Response:
    await checked_form(request, rt, viewer)
    try:
        async with rt.transaction() as session:
            row = await generations.cancel(session, generation_id, viewer.user.id)
    except NotFound:
        raise PageError(404, "No such generation",
                        "There is no generation with this id in your account.") from None
    except NotCancelable:
        return redirect(f"/generations/{generation_id}?notice=not-cancelable")
    # Committed: wake the waiters, send the webhook, delete the references (as the API does).
    background.add_task(jobs.conclude, rt, row.id, row, attempt=row.attempts)
    return redirect(f"/generations/{row.id}?notice=canceled")


# --- Playground --------------------------------------------------------------------------------

async def playground_page(request: Request, rt: Runtime, viewer: Viewer, *, status: int = 200,
                          **context: object) -> Response:
    async with rt.reader() as session:
        balance = await credits.balance(session, await fresh_user(session, viewer))
    return render(request, "playground.html", status=status, viewer=viewer,
                  models=rt.catalog.models(), balance=balance, **context)


@router.get("/playground")
async def playground(request: Request, rt: RuntimeDep, viewer: ViewerDep,
                     generation: Annotated[str | None, Query(max_length=100)] = None
                     ) -> Response:
    result = None
    if generation:
        async with rt.reader() as session:
            try:
                row, delivered = await generations.get_for_owner(session, generation,
                                                                 viewer.user.id)
            except NotFound:
                raise PageError(404, "No such generation", "There is no generation with "
                                "this id in your account.") from None
        result = Generation.of(row, delivered, storage=rt.storage,
                               base_url=rt.settings.base_url)
    return await playground_page(request, rt, viewer, result=result,
                                 form=_last_request(result))


def _last_request(result: Generation | None) -> dict[str, str]:
    if result is None:
        return {}
    return {"model": result.model, "prompt": result.prompt, "aspect_ratio": result.aspect_ratio,
            "quality": result.quality, "n": str(result.n)}


@router.post("/playground")
async def generate(request: Request, rt: RuntimeDep, viewer: ViewerDep) -> Response:
    """Generate from the form (multipart, optional reference images), as POST
    /api/v1/images/generations does, then show the result once final (or still running)."""
    async with read_body(request, catalog=rt.catalog,
                         max_file_bytes=rt.settings.max_reference_image_bytes,
                         json_allowed=False) as body:
        check_csrf(rt, viewer.signed.session_id, body.fields.get("csrf_token"))
        fields = {name: body.fields[name] for name in PLAYGROUND_FIELDS if name in body.fields}
        try:
            wanted = parse_input(fields, rt.catalog, reference_count=len(body.references))
            wanted = replace(wanted, is_async=False)
            accepted = await flow.submit(rt, request, console_principal(viewer.user), wanted,
                                         body.references)
        except ApiError as exc:
            return await playground_page(request, rt, viewer, status=exc.status,
                                         error=exc.message, form=fields)
    generation_id = accepted.generation.id
    await waiting.wait_until_final(rt.statuses, rt.queue, generation_id,
                                   min(PLAYGROUND_WAIT_S, rt.settings.sync_timeout_s))
    return redirect(f"/playground?generation={generation_id}")


# --- Webhooks ----------------------------------------------------------------------------------

@router.get("/webhooks")
async def webhooks_page(request: Request, rt: RuntimeDep, viewer: ViewerDep,
                        notice: str | None = None) -> Response:
    async with rt.transaction() as session:  # the secret is made on first use
        secret = await webhooks.current_secret(session, viewer.user.id, server_secret=rt.secret)
        found = await webhooks.deliveries(session, user_id=viewer.user.id, limit=25)
    return render(request, "webhooks.html", viewer=viewer, secret=secret,
                  deliveries=[d.event for d in found], notice=NOTICES.get(notice or ""))


@router.post("/webhooks/rotate")
async def rotate_secret(request: Request, rt: RuntimeDep, viewer: ViewerDep) -> Response:
    await checked_form(request, rt, viewer)
    async with rt.transaction() as session:
        await webhooks.rotate_secret(session, viewer.user.id, server_secret=rt.secret)
    return redirect("/webhooks?notice=rotated")


def install(app: FastAPI) -> None:
    """The console at /: its pages, static files and error pages."""
    app.include_router(router)
    web.install(app)

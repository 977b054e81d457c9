"""POST /api/v1/images/generations, GET /api/v1/generations (paged), GET
/api/v1/generations/{id}, POST /api/v1/generations/{id}/cancel."""

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response
from starlette.types import Receive, Scope

from app.credits.schemas import Balance
from app.deps import CurrentPrincipal, ReaderDep, RuntimeDep, SessionDep, current_principal
from app.errors import ApiError, ErrorCode, GenerationFailed, ServiceUnavailable
from app.generations import flow, jobs, listing, prefer, reads, waiting
from app.generations import service as generations
from app.generations.request import check_idempotency_key, parse_input, read_body
from app.generations.schemas import (
    CANCEL_RESPONSES,
    GET_RESPONSES,
    LIST_RESPONSES,
    POST_RESPONSES,
    REQUEST_BODY,
    Generation,
    GenerationList,
    GenerationWithBalance,
)
from app.keys import service as keys
from app.keys.service import Principal
from app.models import Generation as GenerationRow
from app.models import GenerationImage, GenerationStatus
from app.ops.fast_routes import Answer, header
from app.ops.middleware import add_headers, note
from app.runtime import Runtime

router = APIRouter(prefix="/api/v1", tags=["generations"])

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", json_schema_extra={"maxLength": 255},
    description="per user, kept 24 h: a repeat returns the same generation")]


@router.post("/images/generations", responses=POST_RESPONSES, openapi_extra=REQUEST_BODY)
async def create_generation(request: Request, response: Response, principal: CurrentPrincipal,
                            rt: RuntimeDep, idempotency_key: IdempotencyKey = None
                            ) -> GenerationWithBalance:
    """Generate images from a prompt (JSON), or from a prompt and reference images
    (multipart/form-data, repeated `reference_image` file parts).

    The charge and the generation are committed in one transaction before the job is queued;
    a sync request then waits (on no database connection) for the job to end."""
    return await create(request, response, principal, rt, idempotency_key)


async def create_generation_fast(scope: Scope, receive: Receive, rt: Runtime) -> Answer:
    """The same request on PostgreSQL ahead of FastAPI's router (app/ops/fast_routes.py): no
    dependency graph nor exit stacks, and a sync request waits in a few frames fewer (the
    memory of a waiting request, docs/performance.md)."""
    request = Request(scope, receive)
    response = Response()  # as FastAPI's sub-response: the endpoint's status and headers
    del response.headers["content-length"]
    body = await create(request, response, await current_principal(request, rt), rt,
                        request.headers.get("idempotency-key"))
    return Answer(response.status_code,
                  body.model_dump_json().encode(), response.headers.raw)


async def create(request: Request, response: Response, principal: Principal, rt: Runtime,
                 idempotency_key: str | None) -> GenerationWithBalance:
    key = check_idempotency_key(idempotency_key)
    preferences = prefer.parse(request.headers.getlist("prefer"))
    wait_s = rt.settings.sync_timeout_s
    async with read_body(request, catalog=rt.catalog,
                         max_file_bytes=rt.settings.max_reference_image_bytes) as body:
        wanted = parse_input(body.fields, rt.catalog, reference_count=len(body.references))
        if preferences.respond_async and not wanted.is_async:
            wanted = replace(wanted, is_async=True)
            add_headers(request, {"Preference-Applied": "respond-async"})
        elif preferences.wait_s is not None and not wanted.is_async:
            wait_s = min(float(preferences.wait_s), wait_s)
            add_headers(request, {"Preference-Applied": f"wait={preferences.wait_s}"})
        accepted = await flow.submit(rt, request, principal, wanted, body.references,
                                     idempotency_key=key)
    generation_id = accepted.generation.id
    note(request, generation_id=generation_id)
    if not accepted.created:  # a replay: answered as the earlier generation stands now
        return await answer(rt, response, generation_id, principal.user.id)
    if wanted.is_async:  # answered from what was just written
        assert accepted.balance is not None
        return respond(rt, response, accepted.generation, [], accepted.balance)
    user_id = principal.user.id
    # Not held while waiting (on the fast route nothing else holds them): the ORM state of the
    # generation and of the user, the request's fields and what was parsed from them.
    del accepted, body, principal, wanted, preferences
    await waiting.wait_until_final(rt.statuses, rt.queue, generation_id, wait_s)
    return await answer(rt, response, generation_id, user_id)


async def answer(rt: Runtime, response: Response, generation_id: str,
                 user_id: str) -> GenerationWithBalance:
    row, delivered, balance = await reads.answer_of(rt, generation_id, user_id)
    return respond(rt, response, row, delivered, balance)


def respond(rt: Runtime, response: Response, row: GenerationRow,
            delivered: list[GenerationImage], balance: Balance) -> GenerationWithBalance:
    """200 when succeeded (or canceled: final, refunded); 202 with Location while queued or
    running; a failure (refunded) is an error answer carrying the generation's id."""
    if row.status == GenerationStatus.FAILED:
        raise failure(row)
    body = GenerationWithBalance.of(row, delivered, storage=rt.storage,
                                    base_url=rt.settings.base_url, balance=balance)
    if not row.status.is_final:
        response.status_code = 202
        response.headers["Location"] = body.poll_url
    return body


def failure(row: GenerationRow) -> ApiError:
    """A dependency fault (storage, queue) answers 503; anything else the provider's 500.
    Refunded either way; `retry` says whether a new attempt could get past it. (A canceled
    generation, where an answer must be an error (/v1), is a 500 that says so.)"""
    if row.status == GenerationStatus.CANCELED:
        return GenerationFailed("the generation was canceled; its credits were refunded",
                                generation_id=row.id)
    error = (ServiceUnavailable if row.error_code == ErrorCode.SERVICE_UNAVAILABLE
             else GenerationFailed)
    return error(row.error_message or "generation failed", generation_id=row.id,
                 retry=row.retryable)


@router.get("/generations/{generation_id}", responses=GET_RESPONSES)
async def get_generation(generation_id: str, request: Request, principal: CurrentPrincipal,
                         rt: RuntimeDep, reader: ReaderDep) -> Generation:
    """A generation, for its owner; image URLs are fresh on every read."""
    note(request, generation_id=generation_id[:64])
    row, delivered = await generations.get_for_owner(reader, generation_id, principal.user.id)
    return Generation.of(row, delivered, storage=rt.storage, base_url=rt.settings.base_url)


async def get_generation_fast(scope: Scope, receive: Receive, rt: Runtime) -> bytes:
    """The same answer on PostgreSQL ahead of FastAPI's router (app/ops/fast_routes.py): the
    key lookup and the generation with its images in one statement."""
    assert rt.direct is not None
    generation_id: str = scope["path_params"]["generation_id"]
    note(scope, generation_id=generation_id[:64])
    principal, rows = await keys.authenticate_direct_with(
        rt.direct, header(scope, b"authorization"), reads.KEY_GENERATION_SQL,
        generation_id if generations.is_generation_id(generation_id) else None,
        secret=rt.secret)
    note(scope, user_id=principal.user.id)
    if rows[0]["g_id"] is None:
        raise reads.not_found(generation_id)
    row, delivered = reads.generation_of(rows[0])
    return Generation.of(row, delivered, storage=rt.storage,
                         base_url=rt.settings.base_url).model_dump_json().encode()


@router.get("/generations", responses=LIST_RESPONSES)
async def list_generations(
    principal: CurrentPrincipal, rt: RuntimeDep, reader: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=listing.MAX_PAGE)] = 20,
    starting_after: Annotated[str | None, Query(max_length=100)] = None,
    ending_before: Annotated[str | None, Query(max_length=100)] = None,
    status: GenerationStatus | None = None,
) -> GenerationList:
    """The caller's generations, newest first; `starting_after` / `ending_before` take a
    generation id of the caller's; `status` filters."""
    found = await listing.page(reader, principal.user.id, limit=limit,
                               starting_after=starting_after, ending_before=ending_before,
                               status=status)
    return GenerationList(
        data=[Generation.of(row, found.images.get(row.id, []), storage=rt.storage,
                            base_url=rt.settings.base_url) for row in found.generations],
        has_more=found.has_more)


@router.post("/generations/{generation_id}/cancel", responses=CANCEL_RESPONSES)
async def cancel_generation(generation_id: str, request: Request, principal: CurrentPrincipal,
                            rt: RuntimeDep, session: SessionDep,
                            background: BackgroundTasks) -> GenerationWithBalance:
    """A queued generation becomes `canceled`, fully refunded (its job then does nothing);
    one that is running or final is 409 `notCancelable`."""
    note(request, generation_id=generation_id[:64])
    row = await generations.cancel(session, generation_id, principal.user.id)
    balance = await generations.balance_of(session, principal.user.id)
    # After the commit (SessionDep commits before the answer is sent): wake the waiters, send
    # the webhook, delete the references. Lost with the process, the sweep does the last two.
    background.add_task(jobs.conclude, rt, row.id, row, attempt=row.attempts)
    return GenerationWithBalance.of(row, [], storage=rt.storage, base_url=rt.settings.base_url,
                                    balance=balance)


"""POST /api/v1/images/generations and GET /api/v1/generations/{id}."""

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from app.api_keys import CurrentPrincipal
from app.error_handlers import error_response
from app.errors import InvalidRequest, NotFound
from app.generations import service
from app.generations.inputs import parse_input
from app.generations.openapi import GET_RESPONSES, POST_RESPONSES, REQUEST_BODY, GenerationObject
from app.generations.views import generation_body
from app.middleware import note
from app.runtime import Runtime
from app.schemas import balance_body
from app.uploads import UploadError, drain, parse_multipart

router = APIRouter(prefix="/api/v1", tags=["generations"])

MAX_JSON_BYTES = 1024 * 1024
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def read_json(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise InvalidRequest(f"JSON body is larger than {MAX_JSON_BYTES // 1024} KB")
    try:
        fields = json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("request body must be a JSON object")
    if "reference_image" in fields or "reference_image[]" in fields:
        raise InvalidRequest("reference_image is accepted only as a multipart/form-data file",
                             param="reference_image")
    return fields


def check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not all(" " <= c <= "~" for c in value):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 printable ASCII characters",
                             param="Idempotency-Key")
    return value


def respond(body: dict[str, Any]) -> JSONResponse:
    status = body["status"]
    if status == "failed":  # refunded; a dependency fault is told apart from the provider's
        if body["error"]["code"] == "serviceUnavailable":
            return error_response(503, "serviceUnavailable", body["error"]["message"],
                                  generation_id=body["id"])
        return error_response(500, "generationFailed", body["error"]["message"],
                              generation_id=body["id"])
    if status == "succeeded":
        return JSONResponse(body, status_code=200)
    return JSONResponse(body, status_code=202, headers={"Location": body["poll_url"]})


@router.post("/images/generations", response_model=None, responses=POST_RESPONSES,
             openapi_extra=REQUEST_BODY)
async def create_generation(
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", json_schema_extra={"maxLength": 255},
        description="per user, kept 24 h: a repeat returns the same generation"),
) -> JSONResponse:
    """Generate images from a prompt (JSON), or from a prompt and reference images
    (multipart/form-data, repeated `reference_image` file parts)."""
    rt = runtime(request)
    key = check_idempotency_key(idempotency_key)
    content_type = request.headers.get("content-type", "")
    tmp = Path(tempfile.mkdtemp(prefix="gih-upload-"))
    try:
        references = []
        if content_type.startswith("application/json") or content_type.endswith("+json"):
            fields: dict[str, Any] = await read_json(request)
        elif content_type.startswith("multipart/form-data"):
            limit = max(m.reference_image_limit for m in rt.catalog.models())
            try:
                form = await parse_multipart(
                    request.stream(), content_type, tmp_dir=tmp,
                    max_file_bytes=rt.settings.max_reference_image_bytes, max_files=limit)
            except UploadError as exc:
                await drain_quietly(request)
                raise InvalidRequest(exc.message, param=exc.param) from None
            fields, references = dict(form.fields), form.references
        else:
            raise InvalidRequest("Content-Type must be application/json or multipart/form-data")
        generation = parse_input(fields, rt.catalog, reference_count=len(references))
        accepted = await service.submit(rt, principal, generation, references,
                                        idempotency_key=key)
        note(request, generation_id=accepted.generation_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if accepted.created and generation.is_async:  # answered from what was just written
        row, images, balance = accepted.generation, [], accepted.balance
    else:
        if accepted.created:
            await service.wait_until_final(rt, accepted.generation_id,
                                           rt.settings.sync_timeout_s)
        row, images, balance = await service.load(rt, accepted.generation_id,
                                                  principal.user.id, with_balance=True)
    body = generation_body(row, images, storage=rt.storage, base_url=rt.settings.base_url)
    body["balance"] = balance_body(balance)
    return respond(body)


async def drain_quietly(request: Request) -> None:
    """Read (and drop) what the client is still sending, so it sees our 400 and not a reset."""
    with contextlib.suppress(Exception):  # the client may be gone; the 400 stands
        await drain(request.stream(), DRAIN_LIMIT_BYTES)


@router.get("/generations/{generation_id}", response_model=None, responses={
    200: {"model": GenerationObject, "description": "the generation"}, **GET_RESPONSES})
async def get_generation(generation_id: str, request: Request,
                         principal: CurrentPrincipal) -> dict[str, Any]:
    """A generation, for its owner; image URLs are fresh on every read."""
    rt = runtime(request)
    if len(generation_id) > 64:
        raise NotFound(f"no generation {generation_id[:64]}...")
    note(request, generation_id=generation_id)
    row, images, _ = await service.load(rt, generation_id, principal.user.id)
    return generation_body(row, images, storage=rt.storage, base_url=rt.settings.base_url)

"""GET /v1/models, GET /v1/models/{id}, POST /v1/images/generations, POST /v1/images/edits:
OpenAI's shapes, on the same generations, credits and storage as /api/v1."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.deps import CurrentPrincipal, RuntimeDep
from app.errors import GenerationPending, NotFound
from app.generations import flow, reads, waiting
from app.generations import service as generations
from app.generations.endpoints import failure
from app.generations.request import read_body
from app.keys.service import Principal
from app.models import GenerationStatus
from app.openai_compat.errors import GENERATION_HEADER
from app.openai_compat.schemas import ImagesResponse, ModelObject, ModelObjectList
from app.openai_compat.streaming import events, images_answer
from app.openai_compat.translate import EDIT_FILE_FIELDS, OpenAIRequest, translate
from app.openapi import error_doc
from app.ops.middleware import note
from app.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["openai"])

ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": ImagesResponse, "description": "OpenAI's images answer; with `stream: true`, "
          "text/event-stream of partial_image and completed events (or an error event)"},
    400: error_doc("invalid_request (with `param`)"),
    401: error_doc("missingApiKey, invalidApiKey or expiredApiKey"),
    402: error_doc("insufficientCredits: nothing was charged"),
    500: error_doc("generationFailed (refunded; x-should-retry says if a retry could succeed) "
                   "or internalError"),
    503: error_doc("serviceUnavailable: nothing charged (or refunded)"),
    504: error_doc("generationPending: still running; it goes on and is billed (generation_id, "
                   "poll_url)"),
}


@router.get("/models")
async def list_models(rt: RuntimeDep) -> ModelObjectList:
    """The catalog's models, as OpenAI lists them (a key is accepted, not required)."""
    return ModelObjectList(data=[ModelObject(id=m.id, owned_by=m.provider)
                                 for m in rt.catalog.models()])


@router.get("/models/{model_id}", responses={404: error_doc("notFound: no such model")})
async def get_model(model_id: str, rt: RuntimeDep) -> ModelObject:
    model = rt.catalog.get(model_id)
    if model is None:
        raise NotFound(f"the model {model_id[:64]!r} does not exist", param="model")
    return ModelObject(id=model.id, owned_by=model.provider)


@router.post("/images/generations", responses=ANSWERS)
async def create_image(request: Request, principal: CurrentPrincipal,
                       rt: RuntimeDep) -> StreamingResponse:
    """Generate images (JSON body, OpenAI's fields)."""
    async with read_body(request, catalog=rt.catalog, file_fields={},
                         max_file_bytes=rt.settings.max_reference_image_bytes) as body:
        wanted = translate(body.fields, rt.catalog)
        accepted = await flow.submit(rt, request, principal, wanted.generation, [],
                                     sdk_retry=is_sdk_retry(request))
    return await respond(request, rt, principal, wanted, accepted, kind="image_generation")


@router.post("/images/edits", responses=ANSWERS)
async def edit_image(request: Request, principal: CurrentPrincipal,
                     rt: RuntimeDep) -> StreamingResponse:
    """Edit images (multipart: `image` or `image[]` files, an optional PNG `mask`)."""
    async with read_body(request, catalog=rt.catalog, file_fields=EDIT_FILE_FIELDS,
                         json_allowed=False,
                         max_file_bytes=rt.settings.max_reference_image_bytes) as body:
        count = sum(1 for ref in body.references if ref.role == "image")
        wanted = translate(body.fields, rt.catalog, images=count, edit=True)
        accepted = await flow.submit(rt, request, principal, wanted.generation, body.references,
                                     sdk_retry=is_sdk_retry(request))
    return await respond(request, rt, principal, wanted, accepted, kind="image_edit")


def is_sdk_retry(request: Request) -> bool:
    """The OpenAI SDK counts its own retries in x-stainless-retry-count."""
    count = request.headers.get("x-stainless-retry-count", "0").strip()
    return count.isascii() and count.isdigit() and int(count) > 0


async def respond(request: Request, rt: Runtime, principal: Principal, wanted: OpenAIRequest,
                  accepted: generations.Accepted, *, kind: str) -> StreamingResponse:
    generation_id = accepted.generation.id
    note(request, generation_id=generation_id)
    headers = {GENERATION_HEADER: generation_id}
    if wanted.stream:
        if accepted.balance is not None:
            headers["x-gih-credits-charged"] = str(accepted.generation.credits_requested)
            headers["x-gih-credits-remaining"] = str(accepted.balance.credits)
        return StreamingResponse(
            events(rt, generation_id, principal.user.id, kind=kind,
                   wait_s=rt.settings.openai_wait_s),
            media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
    await waiting.wait_until_final(rt.statuses, rt.queue, generation_id,
                                   rt.settings.openai_wait_s)
    row, delivered, balance = await reads.answer_of(rt, generation_id, principal.user.id)
    if row.status in (GenerationStatus.FAILED, GenerationStatus.CANCELED):
        raise failure(row)
    if row.status != GenerationStatus.SUCCEEDED:
        raise GenerationPending(
            "the generation is still running; it goes on and is billed as usual: poll "
            "poll_url for the result", generation_id=generation_id,
            poll_url=f"{rt.settings.base_url}/api/v1/generations/{generation_id}")
    body, length = images_answer(rt, row, delivered, wanted.response_format)
    headers.update({"x-gih-credits-charged": str(row.credits_requested - row.credits_refunded),
                    "x-gih-credits-remaining": str(balance.credits),
                    "Content-Length": str(length)})
    return StreamingResponse(body, media_type="application/json", headers=headers)

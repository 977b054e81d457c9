"""The generation object (contract section 7) as the endpoints return it, and what the OpenAPI
document says of the requests (JSON and multipart, which the endpoint parses itself, streaming)
and of every answer."""

from typing import Any, Literal, Self

from pydantic import BaseModel, Field

from app.credits.schemas import Balance
from app.models import Generation as GenerationRow
from app.models import GenerationImage, GenerationStatus
from app.openapi import error_doc
from app.schemas import Schema, Timestamp
from app.storage.base import Storage


def poll_url(base_url: str, generation_id: str) -> str:
    return f"{base_url}/api/v1/generations/{generation_id}"


class Image(Schema):
    id: str
    object: Literal["image"] = "image"
    url: str
    width: int
    height: int
    content_type: str
    created_at: Timestamp


class Usage(Schema):
    credits: int = Field(description="the final charge: 0 until the generation has succeeded")
    credits_requested: int


class GenerationError(Schema):
    message: str
    code: str


class Generation(Schema):
    object: Literal["image_generation"] = "image_generation"
    id: str
    status: GenerationStatus
    model: str
    prompt: str
    size: str
    aspect_ratio: str
    quality: str
    n: int
    created_at: Timestamp
    completed_at: Timestamp | None
    images: list[Image]
    usage: Usage
    poll_url: str
    error: GenerationError | None

    @classmethod
    def of(cls, row: GenerationRow, images: list[GenerationImage], *, storage: Storage,
           base_url: str, **extra: Any) -> Self:
        """Built from the rows; image URLs are made now (presigned ones are fresh each read)."""
        error = None
        if row.status == GenerationStatus.FAILED:
            error = GenerationError(message=row.error_message or "generation failed",
                                    code=row.error_code or "generationFailed")
        charged = (row.credits_requested - row.credits_refunded
                   if row.status == GenerationStatus.SUCCEEDED else 0)
        return cls(
            id=row.id, status=row.status, model=row.model, prompt=row.prompt, size=row.size,
            aspect_ratio=row.aspect_ratio, quality=row.quality, n=row.n,
            created_at=row.created_at, completed_at=row.completed_at,
            images=[Image(id=image.id, url=storage.url(image.storage_key), width=image.width,
                          height=image.height, content_type=image.content_type,
                          created_at=image.created_at)
                    for image in sorted(images, key=lambda i: i.index)],
            usage=Usage(credits=charged, credits_requested=row.credits_requested),
            poll_url=poll_url(base_url, row.id), error=error, **extra)


class GenerationWithBalance(Generation):
    """What POST answers: the generation and the caller's balance after it."""

    balance: Balance


class GenerationList(Schema):
    object: Literal["list"] = "list"
    data: list[Generation]
    has_more: bool


# --- the request, for the document (the endpoint parses the body itself) ---------------------

class GenerationFields(BaseModel):
    model: str = Field(description="a catalog id, e.g. gpt-image-2")
    prompt: str = Field(min_length=1, max_length=32_000,
                        description="at most 32,000 characters after trimming whitespace")
    size: str | None = Field(None, description="auto or WxH valid for the model")
    aspect_ratio: str | None = Field(None, description="one of the model's ratios")
    quality: str | None = Field(None, description="auto|low|medium|high, or a tier 1K|2K|4K")
    n: int | None = Field(None, ge=1, le=4)
    output_format: Literal["png", "jpeg", "webp"] | None = None
    async_: bool | None = Field(None, alias="async")


def _multipart_schema() -> dict[str, Any]:
    schema = GenerationFields.model_json_schema(by_alias=True)
    schema["properties"]["reference_image"] = {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": "repeatable file part (also reference_image[]): PNG, JPEG or WebP "
                       "by content, up to 50 MB each and the model's reference_image_limit"}
    for name in ("n", "async"):  # form fields arrive as text
        schema["properties"][name] = {"type": "string"}
    return schema


REQUEST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": GenerationFields.model_json_schema(by_alias=True)},
    "multipart/form-data": {"schema": _multipart_schema(),
                            "encoding": {"reference_image": {"contentType":
                                                             "image/png, image/jpeg, image/webp"}}},
}}}

POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "succeeded (with balance)"},
    202: {"model": GenerationWithBalance,
          "description": "queued (async) or still running when the wait limit passed"},
    400: error_doc("invalid_request: the body or a field is invalid"),
    401: error_doc("missingApiKey, invalidApiKey or expiredApiKey"),
    402: error_doc("insufficientCredits: nothing was charged"),
    409: error_doc("idempotencyConflict"),
    500: error_doc("generationFailed (credits refunded; error.generation_id) or internalError"),
    503: error_doc("serviceUnavailable: a dependency is down; nothing charged or lost"),
}

LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_doc("invalid_request: a bad limit, status or cursor"),
    401: error_doc("missingApiKey, invalidApiKey or expiredApiKey"),
    404: error_doc("notFound: the cursor is no generation of the caller's"),
    503: error_doc("serviceUnavailable"),
}

CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_doc("invalid_request"),
    401: error_doc("missingApiKey, invalidApiKey or expiredApiKey"),
    404: error_doc("notFound"),
    409: error_doc("notCancelable: the generation is running or final"),
    503: error_doc("serviceUnavailable"),
}

GET_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_doc("invalid_request"),
    401: error_doc("missingApiKey, invalidApiKey or expiredApiKey"),
    404: error_doc("notFound"),
    500: error_doc("internalError (a failed generation is a 200 with status failed)"),
    503: error_doc("serviceUnavailable"),
}

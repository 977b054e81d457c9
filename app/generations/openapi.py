"""What the OpenAPI document says about the generation endpoints: the request bodies (JSON and
multipart, which the endpoint parses itself, streaming) and every response with its schema."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas import ErrorResponse, NextExpiration


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


class Image(BaseModel):
    id: str
    object: Literal["image"]
    url: str
    width: int
    height: int
    content_type: str
    created_at: str


class Usage(BaseModel):
    credits: int
    credits_requested: int


class Balance(BaseModel):
    credits: int
    account_type: str
    next_expiration: NextExpiration | None


class GenerationError(BaseModel):
    message: str
    code: str


class GenerationObject(BaseModel):
    object: Literal["image_generation"]
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    model: str
    prompt: str
    size: str
    aspect_ratio: str
    quality: str
    n: int
    created_at: str
    completed_at: str | None
    images: list[Image]
    usage: Usage
    poll_url: str
    error: GenerationError | None
    balance: Balance | None = None


def _multipart_schema() -> dict[str, Any]:
    schema = GenerationFields.model_json_schema(by_alias=True)
    schema["properties"]["reference_image"] = {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": "repeatable file part (also reference_image[]): PNG, JPEG or WebP "
                       "by content, up to 50 MB each and the model's reference_image_limit"}
    for name in ("n", "async"):  # form fields arrive as text
        schema["properties"][name] = {"type": "string"}
    return schema


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


REQUEST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": GenerationFields.model_json_schema(by_alias=True)},
    "multipart/form-data": {"schema": _multipart_schema(),
                            "encoding": {"reference_image": {"contentType":
                                                             "image/png, image/jpeg, image/webp"}}},
}}}

ERRORS = {
    400: _error("invalid_request: the body or a field is invalid"),
    401: _error("missingApiKey, invalidApiKey or expiredApiKey"),
    402: _error("insufficientCredits: nothing was charged"),
    404: _error("notFound"),
    409: _error("idempotencyConflict"),
    500: _error("generationFailed (credits refunded; error.generation_id) or internalError"),
    503: _error("serviceUnavailable: a dependency is down; nothing charged or lost"),
}

POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": GenerationObject, "description": "succeeded (with balance)"},
    202: {"model": GenerationObject,
          "description": "queued (async) or still running when the wait limit passed"},
    **{k: v for k, v in ERRORS.items() if k != 404},
}

GET_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{k: v for k, v in ERRORS.items() if k in (400, 401, 404, 503)},
    500: _error("internalError (a failed generation is a 200 with status failed)")}

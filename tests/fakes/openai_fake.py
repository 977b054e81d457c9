"""A real HTTP fake of the OpenAI Images API (GPT Image models), plus a helper to run it.

Run as its own process (cwd = repository root)::

    python -m tests.fakes.openai_fake --host 127.0.0.1 --port 8765

API (what the ``openai`` SDK calls; pass ``http://HOST:PORT/v1`` as ``base_url``):

* ``POST /v1/images/generations`` - JSON body.
* ``POST /v1/images/edits`` - multipart/form-data; the SDK sends a list of images as
  ``image[]`` parts, a single one as ``image`` (``image[N]`` is accepted too), and ``mask``.

With ``stream`` true (JSON ``true`` or form ``"true"``) the answer is ``text/event-stream`` in
OpenAI's format: per image, ``partial_images`` (0..3) ``image_generation.partial_image`` events
(flat placeholders of the final size and format), then one ``image_generation.completed``
event with the image and its share of the usage (summed over the events it equals the JSON
answer's usage); ``image_edit.*`` for edits. The failure switches answer a JSON error before
any event; ``stream_fail_after`` / ``stream_stall_after`` cut a stream off mid-way.

Control API (not under /v1):

* ``POST /_control`` - JSON object of switches (see :class:`Switches`); it *replaces* the
  current behaviour: switches left out go back to their defaults. Answers the switches.
* ``POST /_reset`` - default switches, recorded requests cleared.
* ``GET /_requests`` - the recorded /v1 requests, oldest first: fields, files (field name,
  filename, content type, size, sha256), status, ``images_returned``; a stream also has
  ``events_sent`` and ``stream_end`` (``completed``, ``error`` or ``stalled``).
* ``GET /_health`` - ``{"ok": true, ...}``.

In tests use :class:`OpenAIFake`, which spawns the process on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.processes import free_port
from tests.waiting import wait_until

# ---------------------------------------------------------------------------
# Switches and state
# ---------------------------------------------------------------------------


@dataclass
class Switches:
    """Behaviour of the fake. Every field is a switch of ``POST /_control``."""

    latency_ms: int = 0
    """Sleep this long before answering each /v1 call."""
    fail_status: int | None = None
    """Every /v1 call answers this HTTP error status (e.g. 400, 401, 500)."""
    fail_message: str | None = None
    fail_code: str | None = None
    fail_type: str | None = None
    """Message/code/type of the error body; defaults depend on the status (and code)."""
    fail_first: int = 0
    """The next N /v1 calls answer ``fail_first_status``; later calls succeed."""
    fail_first_status: int = 429
    fail_rate: float = 0.0
    """Probability (0..1) that a call answers 500."""
    fewer_images: int | None = None
    """Always return exactly this many images (whatever ``n`` asked)."""
    fewer_rate: float = 0.0
    """Probability (0..1) that a call returns ``n - 1`` images (minimum 0)."""
    timeout: bool = False
    """Never answer (sleep up to 3600 s, until the client disconnects)."""
    malformed: bool | str = False
    """200 with a broken body: True/"json" = truncated JSON labelled application/json,
    "html" = an HTML page labelled text/html."""
    malformed_b64: bool | str = False
    """200 JSON whose ``b64_json`` is broken: True/"base64" = not base64 at all,
    "image" = valid base64 of bytes that are no image."""
    image_kb: int = 0
    """Pad each image with a random-noise band so that it is about this many KB (0 = no pad)."""
    retry_after_ms: int | None = None
    """Send ``retry-after-ms`` on error answers (the SDK then waits that long to retry)."""
    seed: int | None = None
    """Seed of the random switches (``fail_rate``, ``fewer_rate``)."""
    stream_fail_after: int | None = None
    """Streaming: after this many events send an ``error`` event and end the stream; the error
    is a ``server_error`` unless ``fail_message`` / ``fail_type`` / ``fail_code`` say otherwise
    (``fail_code="moderation_blocked"``: the safety system's rejection)."""
    stream_stall_after: int | None = None
    """Streaming: after this many events send nothing more and hold the connection (up to
    3600 s, until the client disconnects)."""

    @classmethod
    def from_json(cls, data: Any) -> Switches:
        if not isinstance(data, dict):
            raise ValueError("switches must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown switches: {unknown}; known: {sorted(known)}")
        sw = cls(**data)
        for name in ("fail_rate", "fewer_rate"):
            if not 0.0 <= float(getattr(sw, name)) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        for name in ("latency_ms", "fail_first", "image_kb"):
            if int(getattr(sw, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("stream_fail_after", "stream_stall_after"):
            if getattr(sw, name) is not None and int(getattr(sw, name)) < 0:
                raise ValueError(f"{name} must be >= 0 or null")
        return sw


class FakeState:
    """Mutable state of one fake server; used from a single event loop only."""

    def __init__(self) -> None:
        self.switches = Switches()
        self.rng = random.Random()
        self.fail_first_left = 0
        self.requests: list[dict[str, Any]] = []

    def configure(self, switches: Switches) -> None:
        self.switches = switches
        self.rng = random.Random(switches.seed)
        self.fail_first_left = switches.fail_first

    def reset(self) -> None:
        self.configure(Switches())
        self.requests.clear()


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_COLOURS = [(46, 125, 50), (21, 101, 192), (198, 40, 40), (245, 124, 0)]
# Output tokens per image of GPT Image models: quality -> (1024x1024, 1024x1536, 1536x1024).
_OUTPUT_TOKENS = {
    "low": (272, 408, 400),
    "medium": (1056, 1584, 1568),
    "high": (4160, 6240, 6208),
}
_SIZES = ("1024x1024", "1024x1536", "1536x1024")


def _encode(width: int, height: int, fmt: str, variant: int, noise_rows: int) -> bytes:
    img = Image.new("RGB", (width, height), _COLOURS[variant % len(_COLOURS)])
    stripe = max(1, height // 10)
    img.paste((255, 255, 255), (0, height // 3, width, min(height, height // 3 + stripe)))
    if noise_rows > 0:
        noise = random.Random(variant).randbytes(width * noise_rows * 3)
        img.paste(Image.frombytes("RGB", (width, noise_rows), noise), (0, height - noise_rows))
    buf = io.BytesIO()
    options: dict[str, Any] = {"png": {"compress_level": 1}, "jpeg": {"quality": 90}}.get(fmt, {})
    img.save(buf, format=FORMATS[fmt], **options)
    return buf.getvalue()


@functools.lru_cache(maxsize=128)
def image_bytes(width: int, height: int, fmt: str, image_kb: int = 0, variant: int = 0) -> bytes:
    """A real ``fmt`` image of exactly ``width`` x ``height``, about ``image_kb`` KB if asked."""
    base = _encode(width, height, fmt, variant, 0)
    target = image_kb * 1024
    if target <= len(base):
        return base
    rows = max(1, min(height, math.ceil((target - len(base)) / (3 * width))))
    probe = _encode(width, height, fmt, variant, rows)
    per_row = (len(probe) - len(base)) / rows
    if per_row <= 0:
        return probe
    best = max(1, min(height, round((target - len(base)) / per_row)))
    return probe if best == rows else _encode(width, height, fmt, variant, best)


@functools.lru_cache(maxsize=128)
def image_b64(width: int, height: int, fmt: str, image_kb: int = 0, variant: int = 0) -> str:
    return base64.b64encode(image_bytes(width, height, fmt, image_kb, variant)).decode("ascii")


@functools.lru_cache(maxsize=64)
def partial_b64(width: int, height: int, fmt: str, partial_index: int) -> str:
    """A partial frame: a flat grey (lighter at each step) ``fmt`` image of the final size."""
    grey = 96 + 48 * partial_index
    img = Image.new("RGB", (width, height), (grey, grey, grey))
    buf = io.BytesIO()
    options: dict[str, Any] = {"png": {"compress_level": 1}, "jpeg": {"quality": 50}}.get(fmt, {})
    img.save(buf, format=FORMATS[fmt], **options)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def output_tokens(width: int, height: int, quality: str) -> int:
    table = _OUTPUT_TOKENS.get(quality, _OUTPUT_TOKENS["high"])
    size = f"{width}x{height}"
    if size in _SIZES:
        return table[_SIZES.index(size)]
    return max(1, round(table[0] * width * height / (1024 * 1024)))


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: (
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to sample from this model", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: (
        "Rate limit reached for images per min. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}
_MODERATION_MESSAGE = (
    "Your request was rejected by the safety system. If you believe this is an error, "
    "contact us at help.openai.com and include the request ID."
)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type_,
            code,
            param,
        )


def switch_error(status: int, sw: Switches | None = None) -> ApiError:
    """The error a failure switch answers, filling defaults by status (and code)."""
    message, type_, code = _DEFAULT_ERRORS.get(
        status,
        (f"Error {status}.", "server_error" if status >= 500 else "invalid_request_error", None),
    )
    if sw is not None:
        code = sw.fail_code if sw.fail_code is not None else code
        if code == "moderation_blocked":
            message, type_ = _MODERATION_MESSAGE, "image_generation_user_error"
        message = sw.fail_message if sw.fail_message is not None else message
        type_ = sw.fail_type if sw.fail_type is not None else type_
    return ApiError(status, message, type_, code)


def error_response(err: ApiError, retry_after_ms: int | None = None) -> JSONResponse:
    body = {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    }
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    return JSONResponse(body, status_code=err.status, headers=headers)


# ---------------------------------------------------------------------------
# Request parsing
# ---------------------------------------------------------------------------


def _is_image_field(name: str) -> bool:
    return name == "image" or (name.startswith("image[") and name.endswith("]"))


async def read_body(request: Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fields (JSON body or form fields) and uploaded files of a request."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1000, max_fields=1000, max_part_size=64 << 20)
        fields: dict[str, Any] = {}
        files: list[dict[str, Any]] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                files.append(
                    {
                        "field": name,
                        "filename": value.filename,
                        "content_type": value.content_type,
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
            elif name in fields:
                prev = fields[name]
                fields[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                fields[name] = value
        await form.close()
        return fields, files
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, "We could not parse the JSON body of your request.") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return data, []


@dataclass
class ImageParams:
    model: str
    prompt: str
    n: int
    width: int
    height: int
    quality: str
    output_format: str
    background: str


def parse_stream(fields: dict[str, Any]) -> tuple[bool, int]:
    """``stream`` (JSON true or form "true") and ``partial_images`` (0..3, default 0)."""
    value = fields.get("stream")
    stream = value is True or (isinstance(value, str) and value.strip().lower() == "true")
    raw = fields.get("partial_images")
    if raw is None or raw == "":
        return stream, 0
    try:
        partial_images = int(raw)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "Invalid type for 'partial_images': expected an integer.",
                       param="partial_images") from exc
    if not 0 <= partial_images <= 3:
        raise ApiError(400, f"Invalid 'partial_images': {partial_images} is not within 0..3.",
                       param="partial_images", code="integer_out_of_range")
    return stream, partial_images


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event as OpenAI sends it (and the SDK's SSE decoder reads it)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def parse_params(fields: dict[str, Any]) -> ImageParams:
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(
            400,
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    try:
        n = int(fields.get("n") if fields.get("n") is not None else 1)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "Invalid type for 'n': expected an integer.", param="n") from exc
    if not 1 <= n <= 10:
        raise ApiError(
            400, f"Invalid 'n': {n} is not within 1..10.", param="n", code="integer_out_of_range"
        )
    size = str(fields.get("size") or "auto")
    if size == "auto":
        width, height = 1024, 1024
    else:
        try:
            width, height = (int(part) for part in size.lower().split("x"))
        except ValueError as exc:
            raise ApiError(
                400, f"Invalid value: '{size}'.", param="size", code="invalid_value"
            ) from exc
        if not (16 <= width <= 4096 and 16 <= height <= 4096):
            raise ApiError(400, f"Invalid size '{size}'.", param="size", code="invalid_value")
    output_format = str(fields.get("output_format") or "png")
    if output_format not in FORMATS:
        raise ApiError(
            400,
            f"Invalid value: '{output_format}'. Supported values are: 'png', 'jpeg' and 'webp'.",
            param="output_format",
            code="invalid_value",
        )
    quality = str(fields.get("quality") or "auto")
    background = str(fields.get("background") or "auto")
    return ImageParams(
        model=str(fields.get("model") or "gpt-image-1"),
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        quality="high" if quality in ("auto", "standard", "hd") else quality,
        output_format=output_format,
        background="opaque" if background == "auto" else background,
    )


# ---------------------------------------------------------------------------
# App
# ---------------------------------------------------------------------------


def create_app(state: FakeState | None = None) -> Starlette:
    state = state or FakeState()

    async def wait_for_disconnect(request: Request, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not await request.is_disconnected():
            await asyncio.sleep(0.1)

    async def answer(request: Request, record: dict[str, Any], edit: bool) -> Response:
        sw = state.switches
        if sw.latency_ms:
            await asyncio.sleep(sw.latency_ms / 1000)
        if sw.timeout:
            await wait_for_disconnect(request, 3600)
            return Response(status_code=504)
        if state.fail_first_left > 0:
            state.fail_first_left -= 1
            return error_response(switch_error(sw.fail_first_status), sw.retry_after_ms)
        if sw.fail_status is not None:
            return error_response(switch_error(sw.fail_status, sw), sw.retry_after_ms)
        if sw.fail_rate and state.rng.random() < sw.fail_rate:
            return error_response(switch_error(500), sw.retry_after_ms)

        params = parse_params(record["fields"])
        stream, partial_images = parse_stream(record["fields"])
        image_files = [f for f in record["files"] if _is_image_field(f["field"])]
        if edit and not image_files and not record["fields"].get("images"):
            raise ApiError(
                400,
                "Missing required parameter: 'image'.",
                param="image",
                code="missing_required_parameter",
            )
        if sw.malformed:
            if sw.malformed == "html":
                return Response(
                    "<html><body><h1>502 Bad Gateway</h1></body></html>", media_type="text/html"
                )
            if stream:  # an event whose data is truncated JSON
                return Response(
                    'event: image_generation.completed\ndata: {"type": "image_generation.com\n\n',
                    media_type="text/event-stream",
                )
            return Response(
                '{"created": 1, "data": [{"b64_json": "iVBORw0KGgo', media_type="application/json"
            )

        count = params.n
        if sw.fewer_images is not None:
            count = max(0, sw.fewer_images)
        elif sw.fewer_rate and state.rng.random() < sw.fewer_rate:
            count = max(0, params.n - 1)
        record["images_returned"] = count

        data = []
        for i in range(count):
            if sw.malformed_b64 == "image":
                b64 = base64.b64encode(b"this is not an image").decode("ascii")
            elif sw.malformed_b64:
                b64 = "!!! not base64 !!!"
            else:
                b64 = image_b64(params.width, params.height, params.output_format, sw.image_kb, i)
            data.append({"b64_json": b64})

        text_tokens = max(1, math.ceil(len(params.prompt) / 4))
        image_tokens = 323 * len(image_files)
        if stream:
            record["images_returned"] = 0  # counted as the completed events go out
            return StreamingResponse(
                stream_events(request, record, params, edit, count, partial_images,
                              text_tokens, image_tokens),
                media_type="text/event-stream",
                headers={"x-request-id": f"req_{uuid.uuid4().hex}", "cache-control": "no-cache"},
            )
        out_tokens = count * output_tokens(params.width, params.height, params.quality)
        body = {
            "created": int(time.time()),
            "data": data,
            "background": params.background,
            "output_format": params.output_format,
            "quality": params.quality,
            "size": f"{params.width}x{params.height}",
            "usage": {
                "input_tokens": text_tokens + image_tokens,
                "output_tokens": out_tokens,
                "total_tokens": text_tokens + image_tokens + out_tokens,
                "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": text_tokens},
            },
        }
        return JSONResponse(body, headers={"x-request-id": f"req_{uuid.uuid4().hex}"})

    def final_b64(sw: Switches, params: ImageParams, index: int) -> str:
        if sw.malformed_b64 == "image":
            return base64.b64encode(b"this is not an image").decode("ascii")
        if sw.malformed_b64:
            return "!!! not base64 !!!"
        return image_b64(params.width, params.height, params.output_format, sw.image_kb, index)

    def planned_events(
        sw: Switches, params: ImageParams, edit: bool, count: int, partial_images: int,
        text_tokens: int, image_tokens: int,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        prefix = "image_edit" if edit else "image_generation"
        common = {
            "background": params.background,
            "output_format": params.output_format,
            "quality": params.quality,
            "size": f"{params.width}x{params.height}",
        }
        per_image_out = output_tokens(params.width, params.height, params.quality)
        for i in range(count):
            for k in range(partial_images):
                yield f"{prefix}.partial_image", {
                    "type": f"{prefix}.partial_image",
                    "b64_json": partial_b64(params.width, params.height, params.output_format, k),
                    "partial_image_index": k,
                    "created_at": int(time.time()),
                    **common,
                }
            # This image's share of the input tokens (the first takes the remainder), so that
            # the events' usage sums to the JSON answer's.
            text = text_tokens // count + (text_tokens % count if i == 0 else 0)
            image = image_tokens // count + (image_tokens % count if i == 0 else 0)
            yield f"{prefix}.completed", {
                "type": f"{prefix}.completed",
                "b64_json": final_b64(sw, params, i),
                "created_at": int(time.time()),
                **common,
                "usage": {
                    "input_tokens": text + image,
                    "output_tokens": per_image_out,
                    "total_tokens": text + image + per_image_out,
                    "input_tokens_details": {"image_tokens": image, "text_tokens": text},
                },
            }

    async def stream_events(
        request: Request, record: dict[str, Any], params: ImageParams, edit: bool, count: int,
        partial_images: int, text_tokens: int, image_tokens: int,
    ) -> AsyncIterator[bytes]:
        sw = state.switches
        record["events_sent"] = 0
        events = planned_events(sw, params, edit, count, partial_images, text_tokens, image_tokens)
        for event, data in events:
            sent = record["events_sent"]
            if sw.stream_fail_after is not None and sent >= sw.stream_fail_after:
                record["stream_end"] = "error"
                err = switch_error(500, sw)
                yield sse("error", {"type": "error", "error": {
                    "message": err.message, "type": err.type, "code": err.code, "param": None}})
                return
            if sw.stream_stall_after is not None and sent >= sw.stream_stall_after:
                record["stream_end"] = "stalled"
                await wait_for_disconnect(request, 3600)
                return
            yield sse(event, data)
            record["events_sent"] = sent + 1
            if event.endswith(".completed"):
                record["images_returned"] += 1
            await asyncio.sleep(0)
        record["stream_end"] = "completed"

    async def images(request: Request) -> Response:
        edit = request.url.path.endswith("/edits")
        record: dict[str, Any] = {
            "id": len(state.requests) + 1,
            "time": time.time(),
            "endpoint": request.url.path,
            "content_type": request.headers.get("content-type", ""),
            "headers": dict(request.headers),
            "fields": {},
            "files": [],
            "status": None,
            "images_returned": 0,
        }
        state.requests.append(record)
        try:
            record["fields"], record["files"] = await read_body(request)
            response = await answer(request, record, edit)
        except ApiError as err:
            response = error_response(err)
        record["status"] = response.status_code
        return response

    async def control(request: Request) -> Response:
        try:
            switches = Switches.from_json(await request.json())
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        state.configure(switches)
        return JSONResponse(dataclasses.asdict(switches))

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def requests_(request: Request) -> Response:
        return JSONResponse(state.requests)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {"ok": True, "pid": os.getpid(), "switches": dataclasses.asdict(state.switches)}
        )

    async def not_found(request: Request) -> Response:
        return error_response(ApiError(404, f"Invalid URL ({request.method} {request.url.path})"))

    routes = [
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/v1/images/edits", images, methods=["POST"]),
        Route("/_control", control, methods=["POST"]),
        Route("/_reset", reset, methods=["POST"]),
        Route("/_requests", requests_, methods=["GET"]),
        Route("/_health", health, methods=["GET"]),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake OpenAI Images API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        backlog=2048,
        access_log=False,
        log_level=args.log_level,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=1,
    )


# ---------------------------------------------------------------------------
# Helper for tests (stdlib only: works from sync code)
# ---------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


class OpenAIFake:
    """Runs the fake in a subprocess on a free port.

    >>> with OpenAIFake() as fake:
    ...     fake.configure(latency_ms=50)
    ...     client = openai.AsyncOpenAI(api_key="test", base_url=fake.base_url)
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 10.0
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port or 0
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        """Root URL (control API lives here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to pass as OPENAI_BASE_URL / ``base_url``."""
        return f"{self.url}/v1"

    def start(self) -> OpenAIFake:
        if self._proc is not None:
            return self
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self.port = self._requested_port or free_port()
            try:
                self._spawn()
                atexit.register(self.stop)
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        return self

    def _spawn(self) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "tests.fakes.openai_fake",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = self._proc

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}")
            self._call("GET", "/_health", timeout=1.0)
            return True

        try:
            wait_until(healthy, timeout=self.startup_timeout, ignoring=(OSError,))
        except (AssertionError, RuntimeError) as exc:
            output = self._output()
            self.stop()
            raise RuntimeError(f"openai fake did not become healthy on {self.url} ({exc}):\n"
                               f"{output}") from None

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-5000:]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read().decode()}") from exc

    def configure(self, **switches: Any) -> dict[str, Any]:
        """Replace the behaviour with these switches (others back to defaults)."""
        result: dict[str, Any] = self._call("POST", "/_control", switches)
        return result

    def reset(self) -> None:
        self._call("POST", "/_reset", {})

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_requests")
        return result

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_health")
        return result

    def __enter__(self) -> OpenAIFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()

"""The OpenAI Images API (GPT Image models) through the official SDK.

Retries are the SDK's own (``max_retries``; it backs off on connection errors, timeouts,
408/409/429/5xx and honours ``retry-after(-ms)``); ``timeout_s`` bounds each attempt and
``total_timeout_s`` bounds the whole call, retries and back-off included.

Reference images are passed as open binary files: the SDK hands them to httpx2 unchanged,
which streams them in 64 KiB chunks (seek(0) before each render) with a Content-Length from
fstat; before a retry the SDK rewinds every seekable file to the position it recorded, so a
retry resends the whole file.

With ``partial_images > 0`` the call streams (``stream=True``): the SDK's retries cover the
request until the answer's headers arrive, not a stream cut off later. ``timeout_s`` is then
also the longest silence between two chunks, and ``total_timeout_s`` bounds the whole stream.
The SDK raises a bare ``openai.APIError`` (no status) for an ``error`` event in the stream.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import math
from collections.abc import AsyncIterable, Mapping
from typing import Any, BinaryIO

import openai
import pybase64
from openai.types import ImagesResponse

from .base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    OnPartial,
    PartialImage,
    ProviderError,
    ReferenceInput,
    decode_image,
    deliver_partial,
)

log = logging.getLogger(__name__)
CALLS_PER_POOL = 64
INLINE_DECODE_CHARS = 1 << 19  # base64 decoded on the event loop up to this (~1 ms)

_MAX_MESSAGE = 500
# Options of ImageRequest.options each endpoint takes (the SDK's edit() has no moderation).
_GENERATE_OPTIONS = ("background", "moderation", "output_compression", "user")
_EDIT_OPTIONS = ("background", "input_fidelity", "output_compression", "user")
_PARTIAL_EVENTS = ("image_generation.partial_image", "image_edit.partial_image")
_COMPLETED_EVENTS = ("image_generation.completed", "image_edit.completed")
# Error types/codes of a stream error event that a new attempt would repeat.
_REJECTED_TYPES = ("invalid_request_error", "image_generation_user_error")
_REJECTED_CODES = ("moderation_blocked", "content_policy_violation")


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float,
        max_retries: int,
        total_timeout_s: float,
        concurrency: int = 1,
    ) -> None:
        self.total_timeout_s = total_timeout_s
        # api_key/base_url None: the SDK reads OPENAI_API_KEY / OPENAI_BASE_URL. One client
        # (one connection pool) per CALLS_PER_POOL calls in flight: httpcore's pool looks at
        # every connection it holds on each request and each response, so a worker running
        # 1,000 jobs through one pool spent a third of its CPU there (docs/performance.md, L).
        self._clients = [
            openai.AsyncOpenAI(api_key=api_key, base_url=base_url or None, timeout=timeout_s,
                               max_retries=max_retries)
            for _ in range(max(1, math.ceil(concurrency / CALLS_PER_POOL)))]
        self._turn = 0
        self._secrets = [s for s in (api_key, self._clients[0].api_key) if s]

    def _next_client(self) -> openai.AsyncOpenAI:
        """The clients in turn, one a call."""
        self._turn = (self._turn + 1) % len(self._clients)
        return self._clients[self._turn]

    async def generate(
        self, request: ImageRequest, on_partial: OnPartial | None = None
    ) -> ImageResult:
        try:
            async with asyncio.timeout(self.total_timeout_s):
                with contextlib.ExitStack() as files:
                    response = await self._call(request, files)
                    if request.partial_images > 0:
                        return await self._read_stream(response, request, on_partial)
        except TimeoutError as exc:
            raise ProviderError("the image provider timed out", "provider_timeout") from exc
        except openai.APITimeoutError as exc:  # one attempt timed out, no retries left
            raise ProviderError("the image provider timed out", "provider_timeout") from exc
        except openai.APIConnectionError as exc:
            raise ProviderError(
                "the image provider is unreachable", "provider_unreachable") from exc
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from exc
        except (openai.APIResponseValidationError, ValueError) as exc:  # incl. JSONDecodeError
            raise _malformed("the image provider returned an invalid response") from exc
        except openai.APIError as exc:  # an error event in a stream
            raise self._stream_error(exc) from exc
        except openai.OpenAIError as exc:
            log.warning("image provider call failed: %s", type(exc).__name__)
            raise ProviderError("the image provider failed", "provider_error") from exc

        if not isinstance(response, ImagesResponse):
            raise _malformed("the image provider returned an invalid response")
        if sum(len(item.b64_json or "") for item in response.data or ()) < INLINE_DECODE_CHARS:
            images = _decode_all(response, request)  # cheaper than the hop to a thread
        else:  # a few MB of base64: off the event loop
            images = await asyncio.to_thread(_decode_all, response, request)
        usage = response.usage.model_dump(mode="json") if response.usage is not None else None
        return ImageResult(images=images, usage=usage)

    async def _call(self, request: ImageRequest, files: contextlib.ExitStack) -> object:
        edit = bool(request.references)
        params: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            "size": request.size,
            "quality": request.quality,
            "n": request.n,
            "output_format": request.output_format,
            **_options(request.options, _EDIT_OPTIONS if edit else _GENERATE_OPTIONS),
        }
        if request.partial_images > 0:
            params.update(stream=True, partial_images=request.partial_images)
        if not edit:
            return await self._next_client().images.generate(**params)
        images = [_open_reference(ref, files) for ref in request.references]
        if request.mask is not None:
            params["mask"] = _open_reference(request.mask, files)
        return await self._next_client().images.edit(image=images, **params)

    async def _read_stream(self, stream: object, request: ImageRequest,
                           on_partial: OnPartial | None) -> ImageResult:
        """Partial images to ``on_partial`` as they come; one final image per completed event."""
        if not isinstance(stream, openai.AsyncStream):
            raise _malformed("the image provider returned an invalid response")
        async with stream:  # closes the connection however this ends
            # The SDK parses any body as SSE: an HTML error page would be an empty stream.
            content_type = stream.response.headers.get("content-type", "")
            if not content_type.lower().startswith("text/event-stream"):
                raise _malformed("the image provider returned an invalid response")
            return await self._read_events(stream, request, on_partial)

    async def _read_events(self, stream: AsyncIterable[object], request: ImageRequest,
                           on_partial: OnPartial | None) -> ImageResult:
        images: list[GeneratedImage] = []
        usages: list[dict[str, Any]] = []
        async for event in stream:
            kind = getattr(event, "type", None)
            if kind in _PARTIAL_EVENTS:
                partial = _partial(event)
                await deliver_partial(on_partial, partial)
            elif kind in _COMPLETED_EVENTS:
                usage = _usage(getattr(event, "usage", None))
                if usage is not None:
                    usages.append(usage)
                if len(images) < request.n:  # never more than asked (and charged)
                    b64 = getattr(event, "b64_json", None)
                    images.append(await asyncio.to_thread(_decode_b64, b64, request))
            else:
                log.warning("image provider streamed an unknown event %r; ignored", kind)
        if not images:
            raise ProviderError("the image provider returned no images", "provider_error")
        return ImageResult(images=images, usage=_sum_usage(usages))

    def _stream_error(self, exc: openai.APIError) -> ProviderError:
        """An ``error`` event in the stream: rejected when the provider says so, else retryable."""
        body = exc.body if isinstance(exc.body, dict) else {}
        log.warning("image provider stream failed: type %s, code %s", body.get("type"),
                    body.get("code"))
        if body.get("type") in _REJECTED_TYPES or body.get("code") in _REJECTED_CODES:
            message = self._provider_message(body)
            return ProviderError(message or "the image provider rejected the request",
                                 "provider_rejected")
        return ProviderError("the image provider failed while streaming", "provider_error")

    def _status_error(self, exc: openai.APIStatusError) -> ProviderError:
        status = exc.status_code
        log.warning("image provider answered HTTP %s (request id %s)", status, exc.request_id)
        if status in (401, 403):
            # The operator's credentials or account, not the client's request; the provider's
            # message may quote (part of) the key.
            return ProviderError(
                f"the image provider refused our credentials (HTTP {status})", "provider_error",
                status)
        if status == 429:
            return ProviderError(
                "the image provider is rate limiting requests (HTTP 429)", "provider_error", status)
        if status >= 500 or status in (408, 409):
            return ProviderError(f"the image provider failed (HTTP {status})", "provider_error",
                                 status)
        message = self._provider_message(exc.body)
        return ProviderError(
            message or f"the image provider rejected the request (HTTP {status})",
            "provider_rejected", status)

    def _provider_message(self, body: object) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = body["error"]
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message.strip():
            return None
        for secret in self._secrets:
            message = message.replace(secret, "***")
        message = message.strip()
        return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()


def _open_reference(ref: ReferenceInput, stack: contextlib.ExitStack) -> tuple[str, BinaryIO, str]:
    fileobj = stack.enter_context(ref.path.open("rb"))
    return (ref.filename, fileobj, ref.content_type)


def _malformed(message: str) -> ProviderError:
    return ProviderError(message, "provider_malformed")


def _options(options: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The options this endpoint takes that the request holds (None is never sent)."""
    return {name: options[name] for name in allowed if options.get(name) is not None}


def _partial(event: object) -> PartialImage:
    b64 = getattr(event, "b64_json", None)
    index = getattr(event, "partial_image_index", None)
    if not isinstance(b64, str) or not b64 or not isinstance(index, int):
        raise _malformed("the image provider streamed an invalid partial image")
    # OpenAI's events do not say which of the n images a partial belongs to; take it when an
    # upstream does (an extra field), else 0.
    image_index = getattr(event, "image_index", None)
    return PartialImage(partial_image_index=index, b64_json=b64,
                        image_index=image_index if isinstance(image_index, int) else 0)


def _usage(usage: object) -> dict[str, Any] | None:
    if usage is None:
        return None
    if isinstance(usage, openai.BaseModel):
        return usage.model_dump(mode="json")
    return dict(usage) if isinstance(usage, dict) else None


def _sum_usage(usages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed events' usage, summed field by field (nested details included)."""
    if not usages:
        return None
    total: dict[str, Any] = {}
    for usage in usages:
        _add_into(total, usage)
    return total


def _add_into(total: dict[str, Any], usage: Mapping[str, Any]) -> None:
    for key, value in usage.items():
        if isinstance(value, bool) or value is None:
            total.setdefault(key, value)
        elif isinstance(value, int | float):
            prev = total.get(key)
            total[key] = value + prev if isinstance(prev, int | float) else value
        elif isinstance(value, Mapping):
            sub = total.get(key)
            if not isinstance(sub, dict):
                sub = total[key] = {}
            _add_into(sub, value)
        else:
            total.setdefault(key, value)


def _decode_b64(b64: object, request: ImageRequest) -> GeneratedImage:
    if not isinstance(b64, str) or not b64:
        raise _malformed("the image provider returned an image without data")
    try:
        raw = pybase64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed("the image provider returned invalid base64 image data") from exc
    return decode_image(raw, request.output_format)


def _decode_all(response: ImagesResponse, request: ImageRequest) -> list[GeneratedImage]:
    data = response.data or []
    if not data:
        raise ProviderError("the image provider returned no images", "provider_error")
    # never more than asked (and charged)
    return [_decode_b64(item.b64_json, request) for item in data[: request.n]]

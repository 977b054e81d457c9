"""The OpenAI Images API (GPT Image models) through the official SDK.

Retries are the SDK's own (``max_retries``; it backs off on connection errors, timeouts,
408/409/429/5xx and honours ``retry-after(-ms)``); ``timeout_s`` bounds each attempt and
``total_timeout_s`` bounds the whole call, retries and back-off included.

Reference images are passed as open binary files: the SDK hands them to httpx2 unchanged,
which streams them in 64 KiB chunks (seek(0) before each render) with a Content-Length from
fstat; before a retry the SDK rewinds every seekable file to the position it recorded, so a
retry resends the whole file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from typing import Any, BinaryIO

import openai
from openai.types import ImagesResponse

from .base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderError,
    ReferenceInput,
    decode_image,
)

log = logging.getLogger(__name__)

_MAX_MESSAGE = 500


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
    ) -> None:
        self.total_timeout_s = total_timeout_s
        # api_key/base_url None: the SDK reads OPENAI_API_KEY / OPENAI_BASE_URL.
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url or None, timeout=timeout_s, max_retries=max_retries
        )
        self._secrets = [s for s in (api_key, self._client.api_key) if s]

    async def generate(self, request: ImageRequest) -> ImageResult:
        try:
            async with asyncio.timeout(self.total_timeout_s):
                response = await self._call(request)
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
        except openai.OpenAIError as exc:
            log.warning("image provider call failed: %s", type(exc).__name__)
            raise ProviderError("the image provider failed", "provider_error") from exc

        if not isinstance(response, ImagesResponse):
            raise _malformed("the image provider returned an invalid response")
        images = await asyncio.to_thread(_decode_all, response, request)
        usage = response.usage.model_dump(mode="json") if response.usage is not None else None
        return ImageResult(images=images, usage=usage)

    async def _call(self, request: ImageRequest) -> object:
        params: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            "size": request.size,
            "quality": request.quality,
            "n": request.n,
            "output_format": request.output_format,
        }
        if not request.references:
            return await self._client.images.generate(**params)
        with contextlib.ExitStack() as stack:
            files = [_open_reference(ref, stack) for ref in request.references]
            return await self._client.images.edit(image=files, **params)

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
        await self._client.close()


def _open_reference(ref: ReferenceInput, stack: contextlib.ExitStack) -> tuple[str, BinaryIO, str]:
    fileobj = stack.enter_context(ref.path.open("rb"))
    return (ref.filename, fileobj, ref.content_type)


def _malformed(message: str) -> ProviderError:
    return ProviderError(message, "provider_malformed")


def _decode_all(response: ImagesResponse, request: ImageRequest) -> list[GeneratedImage]:
    data = response.data or []
    if not data:
        raise ProviderError("the image provider returned no images", "provider_error")
    images = []
    for item in data[: request.n]:  # never more than asked (and charged)
        if not item.b64_json:
            raise _malformed("the image provider returned an image without data")
        try:
            raw = base64.b64decode(item.b64_json, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _malformed("the image provider returned invalid base64 image data") from exc
        images.append(decode_image(raw, request.output_format))
    return images

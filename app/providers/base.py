"""Provider-neutral types of image generation, and the check of returned image bytes."""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Pillow format name -> (our output_format, MIME type).
FORMATS: dict[str, tuple[str, str]] = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpeg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}


@dataclass(frozen=True)
class ReferenceInput:
    """A reference image on local disk, sent to the provider's edit endpoint."""

    path: Path
    filename: str
    content_type: str


@dataclass(frozen=True)
class ImageRequest:
    model: str
    """The provider's model id (e.g. ``gpt-image-2``)."""
    prompt: str
    size: str
    """``auto`` or ``WxH``."""
    quality: str
    """Render quality: ``auto``, ``low``, ``medium`` or ``high``."""
    n: int
    output_format: str
    """``png``, ``jpeg`` or ``webp``."""
    references: tuple[ReferenceInput, ...] = ()
    """Images to edit; with any, the provider's edit endpoint is called."""
    mask: ReferenceInput | None = None
    """A PNG mask, sent to the edit endpoint with the references."""
    partial_images: int = 0
    """0: no streaming; 1..3: ask the provider to stream that many partial images per image."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Provider image options passed through unchanged when present (see ``IMAGE_OPTIONS``)."""


#: Options of ``ImageRequest.options`` a provider passes on; ``input_fidelity`` is for edits
#: only and ``moderation`` for generations only (OpenAI's edit endpoint has no such field).
IMAGE_OPTIONS = ("background", "moderation", "output_compression", "input_fidelity", "user")


@dataclass(frozen=True)
class PartialImage:
    """A partial (preview) image streamed by the provider before the final one."""

    partial_image_index: int
    b64_json: str
    image_index: int = 0
    """Which of the ``n`` images; 0 when the provider does not say."""


OnPartial = Callable[[PartialImage], Awaitable[None]]


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    width: int
    height: int
    content_type: str


@dataclass(frozen=True)
class ImageResult:
    images: list[GeneratedImage]
    usage: dict | None


class ProviderError(Exception):
    """A failed provider call.

    ``message`` is safe to show to the API client (no secrets, no internals);
    ``code`` is one of ``provider_timeout``, ``provider_rejected``, ``provider_error``,
    ``provider_unreachable``, ``provider_malformed``; ``status`` is the upstream HTTP status.
    ``retryable`` says whether a new attempt could succeed; unless given, it follows from
    ``code`` and ``status``.
    """

    def __init__(self, message: str, code: str = "provider_error", status: int | None = None,
                 *, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        """True for timeouts, outages, 408/409/429/5xx and malformed answers; False when a new
        attempt would repeat the failure: a rejected request (other 4xx, content policy) or
        refused credentials (401/403)."""
        if self._retryable is not None:
            return self._retryable
        if self.code == "provider_rejected":
            return False
        if self.status is None:
            return True
        return self.status in (408, 409, 429) or self.status >= 500

    def __repr__(self) -> str:
        return (f"ProviderError({self.message!r}, code={self.code!r}, status={self.status!r}, "
                f"retryable={self.retryable!r})")


@runtime_checkable
class ImageProvider(Protocol):
    name: str

    async def generate(
        self, request: ImageRequest, on_partial: OnPartial | None = None
    ) -> ImageResult:
        """The final images of ``request``.

        With ``request.partial_images > 0`` the provider streams and awaits ``on_partial`` for
        each partial image as it arrives; an exception raised by ``on_partial`` is logged and
        does not fail the generation. Failures raise :class:`ProviderError`.
        """
        ...

    async def aclose(self) -> None: ...


def decode_image(data: bytes, expected_format: str) -> GeneratedImage:
    """Check that ``data`` is a PNG/JPEG/WebP image and read its size (header only).

    The content type reflects the actual bytes. A format other than ``expected_format`` is
    accepted with a warning (the image is valid and paid for); anything that is no
    PNG/JPEG/WebP image raises ``ProviderError(code="provider_malformed")``.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as exc:
        raise ProviderError("the image provider returned data that is not an image",
                            "provider_malformed") from exc
    if fmt not in FORMATS or width <= 0 or height <= 0:
        raise ProviderError(f"the image provider returned an unsupported image format ({fmt})",
                            "provider_malformed")
    if FORMATS[fmt][0] != expected_format:
        log.warning("provider returned %s although %s was requested", FORMATS[fmt][0],
                    expected_format)
    return GeneratedImage(data=data, width=width, height=height, content_type=FORMATS[fmt][1])


async def deliver_partial(on_partial: OnPartial | None, partial: PartialImage) -> None:
    """Await ``on_partial(partial)``; its failure is logged, never the generation's failure."""
    if on_partial is None:
        return
    try:
        await on_partial(partial)
    except Exception:
        log.exception("on_partial failed for partial image %s of image %s; generation goes on",
                      partial.partial_image_index, partial.image_index)

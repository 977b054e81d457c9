"""Provider-neutral types of image generation, and the check of returned image bytes."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

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
    """

    def __init__(self, message: str, code: str = "provider_error", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __repr__(self) -> str:
        return f"ProviderError({self.message!r}, code={self.code!r}, status={self.status!r})"


@runtime_checkable
class ImageProvider(Protocol):
    name: str

    async def generate(self, request: ImageRequest) -> ImageResult: ...

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

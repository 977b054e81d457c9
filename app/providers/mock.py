"""An offline provider: deterministic placeholder images of exactly the requested size/format.

With ``partial_images`` it first sends that many flat-colour preview frames per image (small:
at most ``_PARTIAL_EDGE`` pixels on the long side, the requested aspect ratio and format).
References and mask are accepted and ignored.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
from typing import Any

from PIL import Image, ImageDraw

from .base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    OnPartial,
    PartialImage,
    ProviderError,
    deliver_partial,
)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# Fast encoders: the placeholders are flat colours, so low effort still compresses well.
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "png": {"compress_level": 1},
    "jpeg": {"quality": 85},
    "webp": {"quality": 80, "method": 0},
}
_MAX_EDGE = 8192
_AUTO_SIZE = (1024, 1024)
_PARTIAL_EDGE = 256


def parse_size(size: str) -> tuple[int, int]:
    """``auto`` -> 1024x1024, ``WxH`` -> (W, H); anything else -> provider_rejected."""
    if size == "auto":
        return _AUTO_SIZE
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        width = height = 0
    if not (0 < width <= _MAX_EDGE and 0 < height <= _MAX_EDGE):
        raise ProviderError(f"invalid size {size!r}", "provider_rejected")
    return width, height


def _colour(prompt: str, index: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{prompt}\x00{index}".encode()).digest()
    return (64 + digest[0] % 160, 64 + digest[1] % 160, 64 + digest[2] % 160)


def placeholder(prompt: str, index: int, width: int, height: int, output_format: str) -> bytes:
    """A flat colour from sha256(prompt + index), a light diagonal band and a coarse grid."""
    colour = _colour(prompt, index)
    light = tuple(min(255, c + 70) for c in colour)
    dark = tuple(max(0, c - 40) for c in colour)
    img = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(img)
    band = max(8, min(width, height) // 8)
    draw.polygon([(0, height), (band, height), (width, band), (width, 0), (width - band, 0),
                  (0, height - band)], fill=light)
    step = max(32, min(width, height) // 8)
    line = max(1, step // 32)
    for x in range(step, width, step):
        draw.line([(x, 0), (x, height)], fill=dark, width=line)
    for y in range(step, height, step):
        draw.line([(0, y), (width, y)], fill=dark, width=line)
    buf = io.BytesIO()
    img.save(buf, format=_PIL_FORMATS[output_format], **_SAVE_OPTIONS[output_format])
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def partial_frame(colour: tuple[int, int, int], width: int, height: int,
                  output_format: str) -> str:
    """Base64 of a flat ``colour`` image with the aspect ratio of ``width`` x ``height``,
    scaled down to at most ``_PARTIAL_EDGE`` on its long side."""
    scale = min(1.0, _PARTIAL_EDGE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=_PIL_FORMATS[output_format],
                                        **_SAVE_OPTIONS[output_format])
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _frame_colour(final: tuple[int, int, int], step: int, steps: int) -> tuple[int, int, int]:
    """From grey towards the final image's colour, one step per partial frame."""
    mix = (step + 1) / (steps + 1)
    r, g, b = (round(128 + (c - 128) * mix) for c in final)
    return (r, g, b)


def _render(request: ImageRequest, width: int, height: int) -> list[GeneratedImage]:
    return [
        GeneratedImage(
            data=placeholder(request.prompt, i, width, height, request.output_format),
            width=width, height=height, content_type=_CONTENT_TYPES[request.output_format],
        )
        for i in range(request.n)
    ]


class MockProvider:
    name = "mock"

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s

    async def generate(
        self, request: ImageRequest, on_partial: OnPartial | None = None
    ) -> ImageResult:
        if request.output_format not in _PIL_FORMATS:
            raise ProviderError(f"invalid output_format {request.output_format!r}",
                                "provider_rejected")
        if request.n < 1:
            raise ProviderError("n must be at least 1", "provider_rejected")
        if not 0 <= request.partial_images <= 3:
            raise ProviderError("partial_images must be within 0..3", "provider_rejected")
        width, height = parse_size(request.size)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        await self._send_partials(request, width, height, on_partial)
        images = await asyncio.to_thread(_render, request, width, height)
        return ImageResult(images=images, usage=None)

    async def _send_partials(self, request: ImageRequest, width: int, height: int,
                             on_partial: OnPartial | None) -> None:
        steps = request.partial_images
        for image_index in range(request.n if steps else 0):
            final = _colour(request.prompt, image_index)
            for step in range(steps):
                await asyncio.sleep(0)  # a frame "arrives": let the relay run
                frame = partial_frame(_frame_colour(final, step, steps), width, height,
                                      request.output_format)
                await deliver_partial(on_partial, PartialImage(
                    partial_image_index=step, b64_json=frame, image_index=image_index))

    async def aclose(self) -> None:
        return None

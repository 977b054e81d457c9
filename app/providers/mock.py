"""An offline provider: deterministic placeholder images of exactly the requested size/format."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

from PIL import Image, ImageDraw

from .base import GeneratedImage, ImageRequest, ImageResult, ProviderError

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


def placeholder(prompt: str, index: int, width: int, height: int, output_format: str) -> bytes:
    """A flat colour from sha256(prompt + index), a light diagonal band and a coarse grid."""
    digest = hashlib.sha256(f"{prompt}\x00{index}".encode()).digest()
    colour = (64 + digest[0] % 160, 64 + digest[1] % 160, 64 + digest[2] % 160)
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

    async def generate(self, request: ImageRequest) -> ImageResult:
        if request.output_format not in _PIL_FORMATS:
            raise ProviderError(f"invalid output_format {request.output_format!r}",
                                "provider_rejected")
        if request.n < 1:
            raise ProviderError("n must be at least 1", "provider_rejected")
        width, height = parse_size(request.size)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        images = await asyncio.to_thread(_render, request, width, height)
        return ImageResult(images=images, usage=None)

    async def aclose(self) -> None:
        return None

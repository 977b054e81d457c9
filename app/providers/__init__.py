"""Image providers: ``openai`` (the real API) and ``mock`` (offline placeholders)."""

from __future__ import annotations

from .base import (
    GeneratedImage,
    ImageProvider,
    ImageRequest,
    ImageResult,
    OnPartial,
    PartialImage,
    ProviderError,
    ReferenceInput,
    decode_image,
)

__all__ = [
    "GeneratedImage",
    "ImageProvider",
    "ImageRequest",
    "ImageResult",
    "OnPartial",
    "PartialImage",
    "ProviderError",
    "ReferenceInput",
    "create_provider",
    "decode_image",
]

PROVIDERS = ("openai", "mock")


def create_provider(
    name: str, *, timeout_s: float, max_retries: int, total_timeout_s: float,
    concurrency: int = 1,
) -> ImageProvider:
    """The provider called ``name``; ``openai`` reads OPENAI_API_KEY / OPENAI_BASE_URL.
    ``concurrency``: how many calls may be in flight at once (the jobs of a worker)."""
    if name == "openai":
        from .openai import OpenAIProvider

        return OpenAIProvider(timeout_s=timeout_s, max_retries=max_retries,
                              total_timeout_s=total_timeout_s, concurrency=concurrency)
    if name == "mock":
        from .mock import MockProvider

        return MockProvider()
    raise ValueError(f"unknown image provider {name!r}; expected one of {', '.join(PROVIDERS)}")

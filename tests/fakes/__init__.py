"""Test doubles that run as real servers: a fake OpenAI Images API and a SeaweedFS S3.

Re-exports are lazy so that ``python -m tests.fakes.openai_fake`` does not import
this package's other modules (boto3) before running the fake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.openai_fake import OpenAIFake
    from tests.fakes.seaweed import SeaweedS3, find_weed

__all__ = ["OpenAIFake", "SeaweedS3", "find_weed"]


def __getattr__(name: str) -> Any:
    if name == "OpenAIFake":
        from tests.fakes.openai_fake import OpenAIFake

        return OpenAIFake
    if name in ("SeaweedS3", "find_weed"):
        from tests.fakes import seaweed

        return getattr(seaweed, name)
    raise AttributeError(name)

"""What every storage offers, and the object keys.

Object keys are deterministic per generation and index, so a re-run overwrites rather than
duplicates, and carry an HMAC token so a URL cannot be guessed from a generation id.
"""

import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CONTENT_TYPES = {ext: ct for ct, ext in EXTENSIONS.items()}


class StorageError(Exception):
    """Storage is unreachable or refused the operation (after bounded retries)."""


class Storage(Protocol):
    async def put_file(self, key: str, path: Path, content_type: str) -> None: ...
    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    async def get_file(self, key: str, path: Path) -> None: ...
    def read_chunks(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        """The object's bytes, `chunk_size` at a time (the last chunk may be shorter)."""
    async def delete(self, keys: list[str]) -> None: ...
    def url(self, key: str) -> str: ...
    async def check(self) -> None: ...


def generation_prefix(generation_id: str, secret: bytes) -> str:
    token = hmac.new(secret, generation_id.encode(), hashlib.sha256).hexdigest()[:24]
    return f"generations/{generation_id}/{token}"


def image_key(generation_id: str, index: int, content_type: str, secret: bytes) -> str:
    return f"{generation_prefix(generation_id, secret)}/{index}.{EXTENSIONS[content_type]}"


def reference_key(generation_id: str, index: int, content_type: str, secret: bytes) -> str:
    prefix = generation_prefix(generation_id, secret)
    return f"{prefix}/reference-{index}.{EXTENSIONS[content_type]}"


# What image_key() makes, and nothing else (reference keys are never served).
IMAGE_KEY = re.compile(
    r"generations/gen_[A-Za-z0-9]{1,64}/[0-9a-f]{24}/[0-9]{1,2}\.(png|jpg|webp)")


def undelivered_keys(generation_id: str, n: int, delivered: set[str], secret: bytes) -> list[str]:
    """Every key an attempt of this generation may have written that is not delivered."""
    return [key for index in range(n) for content_type in EXTENSIONS
            if (key := image_key(generation_id, index, content_type, secret)) not in delivered]



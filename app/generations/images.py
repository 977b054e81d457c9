"""A generation's objects in storage: its reference images (kept until it is final) and the
images it delivers. Keys are fixed by generation and index, so a re-run overwrites."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.errors import ServiceUnavailable
from app.generations.multipart import ReferenceFile
from app.models import ReferenceImage, ReferenceRole
from app.providers.base import GeneratedImage, ReferenceInput
from app.storage.base import Storage, StorageError, image_key, reference_key, undelivered_keys

log = logging.getLogger("gih.generations")

STORAGE_TRIES = 3


async def with_retries(action: Callable[[], Awaitable[None]], tries: int = STORAGE_TRIES) -> None:
    for attempt in range(1, tries + 1):
        try:
            await action()
            return
        except StorageError:
            if attempt == tries:
                raise
            await asyncio.sleep(0.5 * 2 ** attempt)


async def store_references(storage: Storage, secret: bytes, generation_id: str,
                           references: list[ReferenceFile]) -> list[ReferenceImage]:
    """Upload the checked reference files; their rows, to write with the generation."""
    rows: list[ReferenceImage] = []
    ordered = sorted(references, key=lambda ref: ref.role == ReferenceRole.MASK)  # mask last
    try:
        for index, ref in enumerate(ordered):
            key = reference_key(generation_id, index, ref.content_type, secret)
            await storage.put_file(key, ref.path, ref.content_type)
            rows.append(ReferenceImage(generation_id=generation_id, index=index,
                                       storage_key=key, filename=ref.filename[:255],
                                       content_type=ref.content_type, byte_size=ref.size,
                                       role=ref.role))
    except StorageError as exc:
        await discard(storage, [row.storage_key for row in rows])
        log.warning("storing references failed: %s", exc)
        raise ServiceUnavailable("image storage is unavailable; nothing was charged") from None
    return rows


async def fetch_references(storage: Storage, rows: list[ReferenceImage], folder: Path
                           ) -> tuple[tuple[ReferenceInput, ...], ReferenceInput | None]:
    """Download the references for the provider call, into `folder`: the images, and the
    mask if there is one."""
    images, mask = [], None
    for ref in rows:
        path = folder / f"reference-{ref.index}"
        await with_retries(lambda ref=ref, path=path: storage.get_file(  # type: ignore[misc]
            ref.storage_key, path))
        given = ReferenceInput(path=path, filename=ref.filename or f"reference-{ref.index}",
                               content_type=ref.content_type)
        if ref.role == ReferenceRole.MASK:
            mask = given
        else:
            images.append(given)
    return tuple(images), mask


async def store_images(storage: Storage, secret: bytes, generation_id: str,
                       images: list[GeneratedImage]) -> list[str]:
    keys = []
    for index, image in enumerate(images):
        key = image_key(generation_id, index, image.content_type, secret)
        await with_retries(lambda key=key, image=image: storage.put_bytes(  # type: ignore[misc]
            key, image.data, image.content_type))
        keys.append(key)
    return keys


async def discard_undelivered(storage: Storage, secret: bytes, generation_id: str, n: int,
                              delivered: set[str]) -> None:
    """Delete image objects a final generation does not deliver (left by an earlier attempt
    that stored more images, or by a failed one), so the bucket holds only what is billed."""
    if len(delivered) < n:
        await storage.delete(undelivered_keys(generation_id, n, delivered, secret))


async def discard(storage: Storage, keys: list[str]) -> bool:
    """Best effort: an orphan object costs storage, not money; True if it worked."""
    try:
        await storage.delete(keys)
    except Exception as exc:
        log.warning("could not delete %s stored objects: %s", len(keys), exc)
        return False
    return True

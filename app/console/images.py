"""A signed-in user's images, same-origin (the Content-Security-Policy allows no other): small
WebP thumbnails for lists, made on first request and kept in storage beside the image, and the
full image. Only the generation's owner gets them; anyone else a 404."""

import asyncio
import contextlib
import io
import tempfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.console.web import PageError, ViewerDep
from app.deps import ReaderDep, RuntimeDep
from app.models import Generation, GenerationImage
from app.runtime import Runtime
from app.storage.base import StorageError, generation_prefix

router = APIRouter(include_in_schema=False)

THUMB_PX = 256
CHUNK = 256 * 1024
CACHE = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}


def thumb_key(image: GenerationImage, secret: bytes) -> str:
    return f"{generation_prefix(image.generation_id, secret)}/thumb-{image.index}.webp"


def make_thumbnail(path: Path) -> bytes:
    with Image.open(path) as opened:
        opened.thumbnail((THUMB_PX, THUMB_PX))
        picture = opened if opened.mode in ("RGB", "RGBA") else opened.convert("RGBA")
        out = io.BytesIO()
        picture.save(out, "WEBP", quality=80, method=4)
        return out.getvalue()


async def read_all(rt: Runtime, key: str) -> bytes:
    data = bytearray()
    async for chunk in rt.storage.read_chunks(key, CHUNK):
        data += chunk
    return bytes(data)


async def thumbnail(rt: Runtime, image: GenerationImage) -> bytes:
    key = thumb_key(image, rt.secret)
    try:
        return await read_all(rt, key)
    except StorageError:
        pass  # not made yet
    with tempfile.TemporaryDirectory(prefix="gih-thumb-") as folder:
        original = Path(folder) / "original"
        await rt.storage.get_file(image.storage_key, original)
        data = await asyncio.to_thread(make_thumbnail, original)
    with contextlib.suppress(StorageError):  # if not kept, served all the same
        await rt.storage.put_bytes(key, data, "image/webp")
    return data


async def own_image(reader: AsyncSession, user_id: str, image_id: str) -> GenerationImage:
    image = None
    if image_id.startswith("img_") and len(image_id) <= 32:
        image = await reader.scalar(
            select(GenerationImage).join(Generation,
                                         Generation.id == GenerationImage.generation_id)
            .where(GenerationImage.id == image_id, Generation.user_id == user_id))
    if image is None:
        raise PageError(404, "No such image", "There is no image with this id in your account.")
    return image


@router.get("/thumbs/{image_id}")
async def get_thumbnail(image_id: str, rt: RuntimeDep, viewer: ViewerDep,
                        reader: ReaderDep) -> Response:
    image = await own_image(reader, viewer.user.id, image_id)
    try:
        data = await thumbnail(rt, image)
    except StorageError:
        raise PageError(503, "Image unavailable", "The image storage cannot be reached just "
                        "now. Try again in a moment.") from None
    return Response(data, media_type="image/webp", headers=CACHE)


@router.get("/images/{image_id}")
async def get_image(image_id: str, rt: RuntimeDep, viewer: ViewerDep,
                    reader: ReaderDep) -> Response:
    image = await own_image(reader, viewer.user.id, image_id)
    return StreamingResponse(rt.storage.read_chunks(image.storage_key, CHUNK),
                             media_type=image.content_type,
                             headers={**CACHE, "Content-Length": str(image.byte_size)})

"""Serves local-storage images at /files/<key> (embedded mode). Keys carry an HMAC token, so
paths cannot be guessed from a generation id; no API key is needed to fetch them."""

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from app.errors import NotFound
from app.storage import CONTENT_TYPES, LocalStorage, StorageError

router = APIRouter(include_in_schema=False)


@router.get("/files/{key:path}")
async def get_file(key: str, request: Request) -> FileResponse:
    storage = request.app.state.runtime.storage
    if not isinstance(storage, LocalStorage) or "/reference-" in key:
        raise NotFound("no such file")
    try:
        path = storage.path(key)
    except StorageError:
        raise NotFound("no such file") from None
    if not path.is_file():
        raise NotFound("no such file")
    media_type = CONTENT_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "private, max-age=86400"})

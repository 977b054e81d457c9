"""GET /files/<key>: local-storage images (the embedded default). Keys carry an HMAC token, so
paths cannot be guessed from a generation id; no API key is needed to fetch them."""

from fastapi import APIRouter
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

from app.deps import RuntimeDep
from app.errors import NotFound
from app.ops.middleware import is_head_request
from app.storage.base import CONTENT_TYPES, IMAGE_KEY
from app.storage.local import LocalStorage

router = APIRouter(include_in_schema=False)


class ImageFile(FileResponse):
    """A stored image. A Range it cannot serve is ignored (the whole image, 200), as RFC 9110
    allows, rather than answered outside the error envelope."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_head_request(scope):  # answered as GET by the router: send the headers only
            scope = {**scope, "method": "HEAD"}
        await super().__call__(scope, receive, send)

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except Exception:  # MalformedRangeHeader, RangeNotSatisfiable
            return []


@router.get("/files/{key:path}")
async def get_file(key: str, rt: RuntimeDep) -> FileResponse:
    storage = rt.storage
    if not isinstance(storage, LocalStorage) or not IMAGE_KEY.fullmatch(key):
        raise NotFound("no such file")
    path = storage.path(key)
    if not path.is_file():
        raise NotFound("no such file")
    media_type = CONTENT_TYPES[path.suffix.lstrip(".")]
    return ImageFile(path, media_type=media_type,
                     headers={"Cache-Control": "private, max-age=86400"})

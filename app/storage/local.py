"""Images on local disk, served by the API at /files/<key> (the embedded default)."""

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from app.storage.base import StorageError


class LocalStorage:
    """Files under one directory; the API serves them at /files/<key>."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root.resolve()
        self.base_url = base_url.rstrip("/")

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise StorageError(f"bad storage key {key!r}")
        return path

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        await self._run(self._copy, path, self.path(key))

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await self._run(self._write, self.path(key), data)

    async def get_file(self, key: str, path: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise StorageError(f"missing object {key}")
        await self._run(shutil.copyfile, source, path)

    async def read_chunks(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        try:
            with self.path(key).open("rb") as file:
                while chunk := await asyncio.to_thread(file.read, chunk_size):
                    yield chunk
        except OSError as exc:
            raise StorageError(f"local storage: {exc}") from exc

    @staticmethod
    async def _run(action: Callable[..., object], *args: object) -> None:
        try:
            await asyncio.to_thread(action, *args)
        except OSError as exc:  # a full disk, a folder removed under us: retried by callers
            raise StorageError(f"local storage: {exc}") from exc

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await asyncio.to_thread(self._delete, [self.path(key) for key in keys])

    def _delete(self, paths: list[Path]) -> None:
        """Delete the files, then every folder they leave empty (up to the root)."""
        for path in paths:
            path.unlink(missing_ok=True)
        for folder in sorted({p.parent for p in paths}, key=lambda f: len(f.parts), reverse=True):
            while folder != self.root and folder.is_relative_to(self.root):
                with contextlib.suppress(OSError):  # not empty (or gone): stop climbing
                    folder.rmdir()
                    folder = folder.parent
                    continue
                break

    def url(self, key: str) -> str:
        return f"{self.base_url}/files/{key}"

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")

    @staticmethod
    def _write(target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)  # atomic: a reader never sees half an image

    @staticmethod
    def _copy(source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)

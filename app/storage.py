"""Where images live: S3-compatible object storage, or local disk served by the API.

Object keys are deterministic per generation and index, so a re-run overwrites rather than
duplicates, and carry an HMAC token so a URL cannot be guessed from a generation id.
"""

import asyncio
import hashlib
import hmac
import logging
import os
import shutil
from pathlib import Path
from typing import Protocol

from app.config import Settings

log = logging.getLogger("gih.storage")

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CONTENT_TYPES = {ext: ct for ct, ext in EXTENSIONS.items()}


class StorageError(Exception):
    """Storage is unreachable or refused the operation (after bounded retries)."""


class Storage(Protocol):
    async def put_file(self, key: str, path: Path, content_type: str) -> None: ...
    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    async def get_file(self, key: str, path: Path) -> None: ...
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
        await asyncio.to_thread(self._copy, path, self.path(key))

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write, self.path(key), data)

    async def get_file(self, key: str, path: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise StorageError(f"missing object {key}")
        await asyncio.to_thread(shutil.copyfile, source, path)

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

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


class S3Storage:
    """An S3 bucket through boto3 (run in threads); URLs public/CDN or presigned per read."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path" if settings.s3_path_style else "auto"},
            connect_timeout=5, read_timeout=60,
            retries={"max_attempts": 4, "mode": "standard"},
            max_pool_connections=50,
            signature_version="s3v4",
        )
        self.bucket = settings.s3_bucket or ""
        self.public_base_url = (settings.s3_public_base_url or "").rstrip("/") or None
        self.presign_ttl = settings.s3_presign_ttl_s
        self.create_bucket = settings.s3_create_bucket
        session = boto3.session.Session()
        region = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.client = session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config,
                                     region_name=region)
        # Presigned URLs carry their host in the signature: sign them for the address clients
        # use when it differs from ours (e.g. http://minio:9000 inside a compose network).
        self.signer = self.client
        if settings.s3_presign_endpoint_url:
            self.signer = session.client("s3", endpoint_url=settings.s3_presign_endpoint_url,
                                         config=config, region_name=region)

    async def _call(self, method: str, **kwargs: object) -> object:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self.client, method), **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 {method} failed: {exc}") from exc

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        def upload() -> None:
            self.client.upload_file(str(path), self.bucket, key,
                                    ExtraArgs={"ContentType": content_type})

        try:
            await asyncio.to_thread(upload)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StorageError(f"S3 upload failed: {exc}") from exc

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await self._call("put_object", Bucket=self.bucket, Key=key, Body=data,
                         ContentType=content_type)

    async def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await asyncio.to_thread(self.client.download_file, self.bucket, key, str(path))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StorageError(f"S3 download failed: {exc}") from exc

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self._call("delete_objects", Bucket=self.bucket,
                             Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})

    def url(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{key}"
        # Local signing, no network: fresh on every read.
        return self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.presign_ttl)

    async def check(self) -> None:
        """Reachable, and the bucket exists (created when allowed)."""
        from botocore.exceptions import ClientError

        try:
            await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 404 or not self.create_bucket:
                raise StorageError(f"bucket {self.bucket}: {exc}") from exc
            log.info("creating bucket %s", self.bucket)
            try:
                await self._call("create_bucket", Bucket=self.bucket)
            except StorageError as create_exc:
                if "BucketAlreadyOwnedByYou" not in str(create_exc):
                    raise
        except Exception as exc:
            raise StorageError(f"S3 unreachable: {exc}") from exc


def create_storage(settings: Settings) -> Storage:
    if settings.storage == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.local_storage_dir, settings.base_url)

"""Images in an S3-compatible bucket."""

import asyncio
import logging
import os
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2

from app.config import Settings
from app.storage.base import StorageError
from app.storage.presign import Presigner

log = logging.getLogger("gih.storage")


PUT_URL_TTL_S = 300
PUT_TIMEOUT = httpx2.Timeout(60.0, connect=5.0)


def botocore_session() -> Any:
    """A botocore session on the process's one data loader, which keeps the S3 model it parsed
    (~14 MB of objects) for every session after it. `gih serve --workers N` calls `preload()`
    before it forks, so its workers share that. (Credentials stay per session.)"""
    import botocore.loaders
    import botocore.session

    global _loader
    if _loader is None:
        _loader = botocore.loaders.create_loader()
    session = botocore.session.get_session()
    session.register_component("data_loader", _loader)
    return session


_loader: Any = None


def preload() -> None:
    """Parse the S3 model now (a client that is never used: no request, no credential)."""
    botocore_session().create_client(
        "s3", region_name="us-east-1", aws_access_key_id="unused",
        aws_secret_access_key="unused")


class S3Storage:
    """An S3 bucket through boto3 (run in threads); URLs public/CDN or presigned per read.

    The hot write, a generated image (`put_bytes`), skips boto3: a PUT to a URL presigned
    locally (SigV4 with UNSIGNED-PAYLOAD, so the payload is not hashed, nor checksummed) sent
    on the event loop by an HTTP client kept per loop, with no thread hop. The caller retries
    it (`generations.images.with_retries`).
    """

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
        session = boto3.session.Session(botocore_session=botocore_session())
        region = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.client = session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config,
                                     region_name=region)
        # Presigned URLs carry their host in the signature: sign them for the address clients
        # use when it differs from ours (e.g. http://minio:9000 inside a compose network).
        self._http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = (
            weakref.WeakKeyDictionary())
        self.signer = self.client
        if settings.s3_presign_endpoint_url:
            self.signer = session.client("s3", endpoint_url=settings.s3_presign_endpoint_url,
                                         config=config, region_name=region)
        self.presigner = (None if self.public_base_url else Presigner.of(
            self.signer, session.get_credentials(), self.bucket, self.presign_ttl))
        self.uploader = Presigner.of(  # the worker's PUTs: our own endpoint
            self.client, session.get_credentials(), self.bucket, PUT_URL_TTL_S)

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
        url = (self.uploader.put_url(key, content_type) if self.uploader else
               self.client.generate_presigned_url(
                   "put_object", ExpiresIn=PUT_URL_TTL_S,
                   Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type}))
        try:
            answer = await self.http().put(url, content=data,
                                           headers={"Content-Type": content_type})
        except httpx2.HTTPError as exc:
            raise StorageError(f"S3 put_object failed: {type(exc).__name__}: {exc}") from exc
        if answer.status_code != 200:
            raise StorageError(f"S3 put_object failed: HTTP {answer.status_code} "
                               f"{answer.text[:300]}")

    def http(self) -> httpx2.AsyncClient:
        """The event loop's client (a connection pool belongs to one loop)."""
        loop = asyncio.get_running_loop()
        client = self._http.get(loop)
        if client is None:
            client = httpx2.AsyncClient(timeout=PUT_TIMEOUT, follow_redirects=False,
                                        limits=httpx2.Limits(max_connections=50))
            self._http[loop] = client
        return client

    async def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await asyncio.to_thread(self.client.download_file, self.bucket, key, str(path))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StorageError(f"S3 download failed: {exc}") from exc

    async def read_chunks(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = await asyncio.to_thread(self.client.get_object, Bucket=self.bucket, Key=key)
            body = answer["Body"]
            try:
                while chunk := await asyncio.to_thread(read_exactly, body, chunk_size):
                    yield chunk
            finally:
                body.close()
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StorageError(f"S3 read failed: {exc}") from exc

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self._call("delete_objects", Bucket=self.bucket,
                             Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})

    def url(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{key}"
        # Local signing, no network: fresh on every read.
        if self.presigner is not None:
            return self.presigner.url(key)
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


def read_exactly(body: Any, size: int) -> bytes:
    """`size` bytes of a botocore stream (its read() may return fewer), fewer only at the end."""
    parts, left = [], size
    while left > 0:
        part = body.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)

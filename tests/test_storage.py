"""Storage backends against a real S3 server (SeaweedFS) and local disk."""

import urllib.request
from pathlib import Path

import pytest

from app.config import Settings
from app.storage.base import StorageError, image_key
from app.storage.local import LocalStorage
from app.storage.s3 import PUT_URL_TTL_S, S3Storage


def s3_settings(s3, **overrides: object) -> Settings:
    values: dict[str, object] = {"storage": "s3", "s3_bucket": "gih-storage-test",
                                 "s3_endpoint_url": s3.endpoint_url, "secret_key": "s" * 40}
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def aws_env(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)


async def test_s3_creates_the_bucket_and_presigns_fresh_urls(s3, aws_env) -> None:
    storage = S3Storage(s3_settings(s3))
    await storage.check()  # creates the bucket
    key = image_key("gen_test", 0, "image/png", b"secret")
    await storage.put_bytes(key, b"\x89PNG...", "image/png")
    await storage.put_bytes(key, b"\x89PNG again", "image/png")  # a re-run overwrites
    url = storage.url(key)
    assert "X-Amz-Signature" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x89PNG again"


async def test_presigned_urls_can_be_signed_for_the_clients_endpoint(s3, aws_env) -> None:
    public = s3.endpoint_url.replace("127.0.0.1", "localhost")
    storage = S3Storage(s3_settings(s3, s3_presign_endpoint_url=public))
    await storage.check()
    await storage.put_bytes("probe.txt", b"hello", "text/plain")
    url = storage.url("probe.txt")
    assert url.startswith(public + "/")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"hello"


def botocore_url(storage: S3Storage, key: str) -> str:
    return storage.signer.generate_presigned_url(
        "get_object", Params={"Bucket": storage.bucket, "Key": key}, ExpiresIn=storage.presign_ttl)


@pytest.mark.parametrize("where", [
    {"s3_path_style": True}, {"s3_path_style": False}, {"s3_endpoint_url": None},
    {"s3_presign_endpoint_url": "https://images.example.com:8443"}])
async def test_presigned_urls_are_botocores_byte_for_byte(s3, aws_env, monkeypatch,
                                                          where) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token/with+odd=chars")
    storage = S3Storage(s3_settings(s3, **where))
    assert storage.presigner is not None
    keys = ["images/gen_abc/0-3f9a.png", "a b/c+d=e&f?g#h", "ünï/cødé.webp", "~x/.../y//z", "%41"]
    for key in keys:
        for _ in range(3):  # the same second on both sides
            ours, theirs = storage.url(key), botocore_url(storage, key)
            if ours.split("X-Amz-Date=")[1][:16] == theirs.split("X-Amz-Date=")[1][:16]:
                break
        assert ours == theirs
        assert "X-Amz-Security-Token=" in ours


@pytest.mark.parametrize("where", [{"s3_path_style": True}, {"s3_path_style": False},
                                   {"s3_public_base_url": "https://cdn.example.com/images/"}])
async def test_upload_urls_are_botocores_byte_for_byte(s3, aws_env, monkeypatch, where) -> None:
    """The worker's PUT of an image is presigned by our signer for our own endpoint (never the
    clients' one), whatever the reads use."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token/with+odd=chars")
    storage = S3Storage(s3_settings(s3, s3_presign_endpoint_url="https://images.example.com",
                                    **where))
    assert storage.uploader is not None
    for key, content_type in [("images/gen_abc/0-3f9a.png", "image/png"),
                              ("a b/c+d=e&f?g#h", "image/webp"), ("ünï/cødé.jpeg", "image/jpeg")]:
        for _ in range(3):  # the same second on both sides
            ours = storage.uploader.put_url(key, content_type)
            theirs = storage.client.generate_presigned_url(
                "put_object", ExpiresIn=PUT_URL_TTL_S,
                Params={"Bucket": storage.bucket, "Key": key, "ContentType": content_type})
            if ours.split("X-Amz-Date=")[1][:16] == theirs.split("X-Amz-Date=")[1][:16]:
                break
        assert ours == theirs
        assert ours.startswith(s3.endpoint_url)


async def test_public_base_url_replaces_presigning(s3, aws_env) -> None:
    storage = S3Storage(s3_settings(s3, s3_public_base_url="https://cdn.example.com/images/"))
    assert storage.url("a/b.png") == "https://cdn.example.com/images/a/b.png"


async def test_s3_down_is_a_storage_error(aws_env) -> None:
    settings = Settings(storage="s3", s3_bucket="x", s3_endpoint_url="http://127.0.0.1:1",
                        secret_key="s" * 40)
    storage = S3Storage(settings)
    with pytest.raises(StorageError):
        await storage.put_bytes("k", b"v", "text/plain")


async def test_local_storage_refuses_paths_outside_its_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images", "http://x")
    for bad in ("../escape.png", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(StorageError):
            storage.path(bad)
    await storage.put_bytes("generations/g/t/0.png", b"data", "image/png")
    assert (tmp_path / "images/generations/g/t/0.png").read_bytes() == b"data"


def test_image_keys_are_deterministic_and_secret_dependent() -> None:
    assert image_key("gen_a", 1, "image/png", b"k1") == image_key("gen_a", 1, "image/png", b"k1")
    assert image_key("gen_a", 1, "image/png", b"k1") != image_key("gen_a", 1, "image/png", b"k2")
    assert image_key("gen_a", 1, "image/webp", b"k1").endswith("/1.webp")

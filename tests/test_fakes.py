"""Quick checks that the fakes behave like the services they stand for."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from typing import Any

import openai
import pytest
from PIL import Image

from tests.fakes.openai_fake import OpenAIFake
from tests.fakes.seaweed import SeaweedS3


@pytest.fixture
def fake(openai_fake: OpenAIFake) -> OpenAIFake:
    return openai_fake  # the session's fake (conftest.py starts it), reset


def client(fake: OpenAIFake, **kwargs: Any) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(api_key="test", base_url=fake.base_url, **kwargs)


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.asyncio
async def test_generate_returns_real_images_and_usage(fake: OpenAIFake) -> None:
    async with client(fake) as api:
        result = await api.images.generate(
            model="gpt-image-2", prompt="x", size="1536x1024", n=2, output_format="png"
        )
    assert len(result.data) == 2
    for item in result.data:
        assert item.b64_json is not None
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert (image.format, image.size) == ("PNG", (1536, 1024))
    assert result.size == "1536x1024" and result.output_format == "png"
    assert result.usage is not None and result.usage.output_tokens > 0
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens
    [recorded] = fake.requests()
    assert recorded["endpoint"] == "/v1/images/generations"
    assert recorded["fields"]["model"] == "gpt-image-2" and recorded["fields"]["n"] == 2


@pytest.mark.asyncio
async def test_image_kb_pads_jpeg(fake: OpenAIFake) -> None:
    fake.configure(image_kb=200)
    async with client(fake) as api:
        result = await api.images.generate(prompt="x", size="auto", output_format="jpeg")
    data = base64.b64decode(result.data[0].b64_json or "")
    assert 150_000 < len(data) < 260_000
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)


@pytest.mark.asyncio
async def test_edit_records_uploaded_files(fake: OpenAIFake) -> None:
    a, b = png(), png((16, 16))
    async with client(fake) as api:
        result = await api.images.edit(
            model="gpt-image-2",
            image=[("a.png", a, "image/png"), ("b.png", b, "image/png")],
            prompt="make it blue",
            n=1,
            size="1024x1024",
            quality="low",
            output_format="webp",
        )
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or ""))).format == "WEBP"
    [recorded] = fake.requests()
    assert recorded["endpoint"] == "/v1/images/edits"
    assert recorded["fields"]["prompt"] == "make it blue"
    assert recorded["fields"]["quality"] == "low"
    files = recorded["files"]
    assert [(f["field"], f["filename"], f["size"]) for f in files] == [
        ("image[]", "a.png", len(a)),
        ("image[]", "b.png", len(b)),
    ]
    assert all(f["content_type"] == "image/png" and len(f["sha256"]) == 64 for f in files)


@pytest.mark.asyncio
async def test_fail_status_400_moderation(fake: OpenAIFake) -> None:
    fake.configure(fail_status=400, fail_code="moderation_blocked")
    async with client(fake) as api:
        with pytest.raises(openai.BadRequestError) as info:
            await api.images.generate(model="gpt-image-2", prompt="x")
    assert "rejected by the safety system" in info.value.message
    assert info.value.code == "moderation_blocked"


@pytest.mark.asyncio
async def test_fail_first_then_success(fake: OpenAIFake) -> None:
    fake.configure(fail_first=1, retry_after_ms=10)
    async with client(fake, max_retries=1) as api:
        result = await api.images.generate(model="gpt-image-2", prompt="x")
    assert len(result.data) == 1
    assert [r["status"] for r in fake.requests()] == [429, 200]


@pytest.mark.asyncio
async def test_fewer_images(fake: OpenAIFake) -> None:
    fake.configure(fewer_images=1)
    async with client(fake) as api:
        result = await api.images.generate(model="gpt-image-2", prompt="x", n=3)
    assert len(result.data) == 1


@pytest.mark.asyncio
async def test_timeout(fake: OpenAIFake) -> None:
    fake.configure(timeout=True)
    async with client(fake, timeout=1.0) as api:
        with pytest.raises(openai.APITimeoutError):
            await api.images.generate(model="gpt-image-2", prompt="x")


@pytest.mark.asyncio
async def test_malformed_bodies(fake: OpenAIFake) -> None:
    async with client(fake) as api:
        fake.configure(malformed=True)  # truncated JSON labelled application/json
        with pytest.raises(json.JSONDecodeError):
            await api.images.generate(model="gpt-image-2", prompt="x")
        fake.configure(malformed="html")  # the SDK hands back the text, or raises if strict
        assert isinstance(await api.images.generate(model="gpt-image-2", prompt="x"), str)
    async with client(fake, _strict_response_validation=True) as strict:
        with pytest.raises(openai.APIResponseValidationError):
            await strict.images.generate(model="gpt-image-2", prompt="x")
        fake.configure(malformed_b64=True)
        result = await strict.images.generate(model="gpt-image-2", prompt="x")
    with pytest.raises(ValueError):
        base64.b64decode(result.data[0].b64_json or "", validate=True)


def test_s3_put_get_presigned(s3: SeaweedS3) -> None:
    api = s3.client()
    api.create_bucket(Bucket="test-images")
    api.put_object(Bucket="test-images", Key="a/b.png", Body=png(), ContentType="image/png")
    got = api.get_object(Bucket="test-images", Key="a/b.png")
    assert got["Body"].read() == png() and got["ContentType"] == "image/png"
    url = api.generate_presigned_url(
        "get_object", Params={"Bucket": "test-images", "Key": "a/b.png"}, ExpiresIn=60
    )
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == png()
    assert s3.startup_seconds is not None and s3.startup_seconds < 60

"""Image providers: OpenAIProvider through the real SDK against the HTTP fake, and MockProvider."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.providers import ImageRequest, ProviderError, ReferenceInput, create_provider
from app.providers.base import decode_image
from app.providers.mock import MockProvider
from app.providers.openai import OpenAIProvider
from tests.fakes.openai_fake import OpenAIFake
from tests.fakes.processes import free_port

API_KEY = "sk-test-" + "k" * 32
MODERATION = "Your request was rejected by the safety system"


@pytest.fixture
def fake(openai_fake: OpenAIFake) -> OpenAIFake:
    return openai_fake  # the session's fake, reset


MakeProvider = Callable[..., OpenAIProvider]


@pytest.fixture
async def make(fake: OpenAIFake) -> AsyncIterator[MakeProvider]:
    made: list[OpenAIProvider] = []

    def factory(**kw: Any) -> OpenAIProvider:
        options: dict[str, Any] = {"api_key": API_KEY, "base_url": fake.base_url,
                                   "timeout_s": 10.0, "max_retries": 0, "total_timeout_s": 15.0}
        options.update(kw)
        made.append(OpenAIProvider(**options))
        return made[-1]

    yield factory
    for provider in made:
        await provider.aclose()


def req(**kw: Any) -> ImageRequest:
    values: dict[str, Any] = {"model": "gpt-image-2", "prompt": "a red fox", "size": "1024x1024",
                              "quality": "low", "n": 1, "output_format": "png"}
    values.update(kw)
    return ImageRequest(**values)


async def fails(provider: OpenAIProvider | MockProvider, request: ImageRequest) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.generate(request)
    assert API_KEY not in info.value.message
    return info.value


def reference(path: Path, kb: int, colour: tuple[int, int, int]) -> ReferenceInput:
    """A real PNG padded with random noise to about ``kb`` KB."""
    img = Image.new("RGB", (256, 256), colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.write_bytes(buf.getvalue() + os.urandom(kb * 1024))  # trailing bytes: still a PNG
    return ReferenceInput(path=path, filename=path.name, content_type="image/png")


def digest(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


# --- OpenAIProvider ------------------------------------------------------------------------


async def test_generate(make: MakeProvider, fake: OpenAIFake) -> None:
    result = await make().generate(req(size="1536x1024", n=2, quality="medium"))
    assert len(result.images) == 2
    for image in result.images:
        assert (image.width, image.height, image.content_type) == (1536, 1024, "image/png")
        with Image.open(io.BytesIO(image.data)) as img:
            assert (img.format, img.size) == ("PNG", (1536, 1024))
    assert isinstance(result.usage, dict) and result.usage["output_tokens"] > 0
    assert result.usage["input_tokens_details"]["text_tokens"] > 0
    (call,) = fake.requests()
    assert call["endpoint"] == "/v1/images/generations"
    assert call["headers"]["authorization"] == f"Bearer {API_KEY}"
    fields = call["fields"]
    assert {k: fields[k] for k in ("model", "prompt", "size", "quality", "n", "output_format")} == {
        "model": "gpt-image-2", "prompt": "a red fox", "size": "1536x1024", "quality": "medium",
        "n": 2, "output_format": "png"}


@pytest.mark.parametrize("fmt, content_type", [("jpeg", "image/jpeg"), ("webp", "image/webp")])
async def test_generate_formats(make: MakeProvider, fmt: str, content_type: str) -> None:
    result = await make().generate(req(size="auto", output_format=fmt))
    (image,) = result.images
    assert (image.width, image.height, image.content_type) == (1024, 1024, content_type)


async def test_edit_sends_reference_files(make: MakeProvider, fake: OpenAIFake,
                                          tmp_path: Path) -> None:
    refs = (reference(tmp_path / "a.png", 1500, (255, 0, 0)),
            reference(tmp_path / "b.png", 3, (0, 0, 255)))
    result = await make().generate(req(references=refs, n=1, quality="high"))
    assert len(result.images) == 1
    (call,) = fake.requests()
    assert call["endpoint"] == "/v1/images/edits"
    assert call["content_type"].startswith("multipart/form-data")
    got = [(f["filename"], f["content_type"], f["sha256"], f["size"]) for f in call["files"]]
    assert got == [(r.filename, "image/png", *digest(r.path)) for r in refs]
    fields = call["fields"]
    assert (fields["model"], fields["prompt"], fields["size"], fields["quality"], fields["n"],
            fields["output_format"]) == ("gpt-image-2", "a red fox", "1024x1024", "high", "1",
                                         "png")


async def test_edit_retry_resends_whole_files(make: MakeProvider, fake: OpenAIFake,
                                              tmp_path: Path) -> None:
    fake.configure(fail_first=2, fail_first_status=503, retry_after_ms=10)
    refs = (reference(tmp_path / "a.png", 700, (0, 255, 0)),
            reference(tmp_path / "b.png", 200, (9, 9, 9)))
    result = await make(max_retries=2).generate(req(references=refs))
    assert len(result.images) == 1
    calls = fake.requests()
    assert [c["status"] for c in calls] == [503, 503, 200]
    expected = [digest(r.path) for r in refs]
    for call in calls:
        assert [(f["sha256"], f["size"]) for f in call["files"]] == expected


async def test_moderation_rejected(make: MakeProvider, fake: OpenAIFake) -> None:
    fake.configure(fail_status=400, fail_code="moderation_blocked")
    err = await fails(make(max_retries=3), req())
    assert (err.code, err.status) == ("provider_rejected", 400)
    assert err.message.startswith(MODERATION)
    assert len(fake.requests()) == 1  # 400 is never retried


async def test_unauthorized_is_provider_error_without_key(make: MakeProvider,
                                                          fake: OpenAIFake) -> None:
    fake.configure(fail_status=401, fail_message=f"Incorrect API key provided: {API_KEY}.")
    err = await fails(make(), req())
    assert (err.code, err.status) == ("provider_error", 401)


async def test_rejection_message_never_shows_the_key(make: MakeProvider,
                                                     fake: OpenAIFake) -> None:
    fake.configure(fail_status=400, fail_message=f"Invalid value for key {API_KEY}")
    err = await fails(make(), req())
    assert (err.code, err.message) == ("provider_rejected", "Invalid value for key ***")


async def test_rate_limited_then_success(make: MakeProvider, fake: OpenAIFake) -> None:
    fake.configure(fail_first=1, retry_after_ms=20)
    result = await make(max_retries=2).generate(req())
    assert len(result.images) == 1
    assert [c["status"] for c in fake.requests()] == [429, 200]


async def test_server_error_after_retries(make: MakeProvider, fake: OpenAIFake) -> None:
    fake.configure(fail_status=500, retry_after_ms=10)
    err = await fails(make(max_retries=2), req())
    assert (err.code, err.status) == ("provider_error", 500)
    assert "500" in err.message
    assert len(fake.requests()) == 3


async def test_attempt_timeout(make: MakeProvider, fake: OpenAIFake) -> None:
    fake.configure(timeout=True)
    started = time.monotonic()
    err = await fails(make(timeout_s=1, max_retries=0), req())
    assert err.code == "provider_timeout"
    assert time.monotonic() - started < 2.0


async def test_total_timeout_bounds_retries(make: MakeProvider, fake: OpenAIFake) -> None:
    fake.configure(fail_status=503, retry_after_ms=300)
    started = time.monotonic()
    err = await fails(make(timeout_s=5, max_retries=10, total_timeout_s=1.0), req())
    assert err.code == "provider_timeout"
    assert time.monotonic() - started < 1.6
    assert 2 <= len(fake.requests()) <= 5


async def test_fewer_images(make: MakeProvider, fake: OpenAIFake) -> None:
    fake.configure(fewer_images=1)
    result = await make().generate(req(n=3))
    assert len(result.images) == 1


async def test_no_images_is_an_error(make: MakeProvider, fake: OpenAIFake) -> None:
    fake.configure(fewer_images=0)
    err = await fails(make(), req(n=2))
    assert err.code == "provider_error"


@pytest.mark.parametrize("switches", [
    {"malformed": True}, {"malformed": "html"}, {"malformed_b64": True},
    {"malformed_b64": "image"},
])
async def test_malformed(make: MakeProvider, fake: OpenAIFake, switches: dict[str, Any]) -> None:
    fake.configure(**switches)
    err = await fails(make(), req())
    assert err.code == "provider_malformed"


async def test_unreachable() -> None:
    provider = OpenAIProvider(api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1",
                              timeout_s=2, max_retries=0, total_timeout_s=5)
    try:
        err = await fails(provider, req())
    finally:
        await provider.aclose()
    assert err.code == "provider_unreachable"


async def test_create_provider_reads_openai_env(fake: OpenAIFake,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    provider = create_provider("openai", timeout_s=5, max_retries=0, total_timeout_s=10)
    try:
        assert provider.name == "openai"
        assert len((await provider.generate(req())).images) == 1
    finally:
        await provider.aclose()
    assert fake.requests()[0]["headers"]["authorization"] == f"Bearer {API_KEY}"


def test_create_provider_mock_and_unknown() -> None:
    assert isinstance(create_provider("mock", timeout_s=1, max_retries=0, total_timeout_s=1),
                      MockProvider)
    with pytest.raises(ValueError):
        create_provider("dall-e", timeout_s=1, max_retries=0, total_timeout_s=1)


def test_decode_image_rejects_non_images() -> None:
    with pytest.raises(ProviderError) as info:
        decode_image(b"GIF89a not really", "png")
    assert info.value.code == "provider_malformed"
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(ProviderError):
        decode_image(gif.getvalue(), "png")


# --- MockProvider --------------------------------------------------------------------------


@pytest.mark.parametrize("size, expected", [("1024x1024", (1024, 1024)),
                                            ("3840x2160", (3840, 2160)),
                                            ("auto", (1024, 1024))])
@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_mock_sizes_and_formats(size: str, expected: tuple[int, int], fmt: str) -> None:
    result = await MockProvider().generate(req(size=size, output_format=fmt, n=2))
    assert result.usage is None and len(result.images) == 2
    for image in result.images:
        assert (image.width, image.height, image.content_type) == (*expected, f"image/{fmt}")
        with Image.open(io.BytesIO(image.data)) as img:
            assert (img.format, img.size) == (fmt.upper(), expected)
    assert result.images[0].data != result.images[1].data


async def test_mock_is_deterministic() -> None:
    provider = MockProvider()
    first = await provider.generate(req(prompt="same", n=2))
    second = await provider.generate(req(prompt="same", n=2))
    other = await provider.generate(req(prompt="different", n=1))
    assert [i.data for i in first.images] == [i.data for i in second.images]
    assert other.images[0].data != first.images[0].data


async def test_mock_rejects_bad_size() -> None:
    with pytest.raises(ProviderError) as info:
        await MockProvider().generate(req(size="big"))
    assert info.value.code == "provider_rejected"

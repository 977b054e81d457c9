"""Streaming providers: partial images, edits with several images and a mask, image options,
and which failures are worth a retry. OpenAIProvider runs through the real SDK against the
HTTP fake (the session's ``openai_fake``); MockProvider sends placeholder frames."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.providers import ImageRequest, PartialImage, ProviderError, ReferenceInput
from app.providers.mock import MockProvider
from app.providers.openai import OpenAIProvider
from tests.fakes.openai_fake import OpenAIFake

API_KEY = "sk-test-" + "s" * 32


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> None:
    if "openai_fake" in request.fixturenames:
        request.getfixturevalue("openai_fake").reset()


MakeProvider = Callable[..., OpenAIProvider]


@pytest.fixture
async def make(openai_fake: OpenAIFake) -> AsyncIterator[MakeProvider]:
    made: list[OpenAIProvider] = []

    def factory(**kw: Any) -> OpenAIProvider:
        options: dict[str, Any] = {"api_key": API_KEY, "base_url": openai_fake.base_url,
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


class Partials:
    """An on_partial that records what it got (and may fail every call)."""

    def __init__(self, fail: bool = False) -> None:
        self.got: list[PartialImage] = []
        self.fail = fail

    async def __call__(self, partial: PartialImage) -> None:
        self.got.append(partial)
        if self.fail:
            raise RuntimeError("the relay broke")

    @property
    def indexes(self) -> list[tuple[int, int]]:
        return [(p.image_index, p.partial_image_index) for p in self.got]


def decoded(b64: str) -> tuple[str | None, tuple[int, int]]:
    with Image.open(io.BytesIO(base64.b64decode(b64, validate=True))) as img:
        img.load()
        return img.format, img.size


def png(path: Path, size: tuple[int, int], colour: tuple[int, ...], mode: str = "RGB"
        ) -> ReferenceInput:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return ReferenceInput(path=path, filename=path.name, content_type="image/png")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def fails(provider: OpenAIProvider | MockProvider, request: ImageRequest,
                on_partial: Partials | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.generate(request, on_partial)
    assert API_KEY not in info.value.message
    return info.value


# --- streaming through the SDK -------------------------------------------------------------


async def test_stream_generate_relays_partials_then_returns_finals(
        make: MakeProvider, openai_fake: OpenAIFake) -> None:
    partials = Partials()
    request = req(size="1536x1024", quality="medium", n=2, partial_images=2)
    result = await make().generate(request, partials)

    # OpenAI's partial events do not say which image they belong to: image_index stays 0.
    assert [p.partial_image_index for p in partials.got] == [0, 1, 0, 1]
    assert {p.image_index for p in partials.got} == {0}
    for partial in partials.got:
        assert decoded(partial.b64_json) == ("PNG", (1536, 1024))
    assert len(result.images) == 2
    for image in result.images:
        assert (image.width, image.height, image.content_type) == (1536, 1024, "image/png")
        with Image.open(io.BytesIO(image.data)) as img:
            assert (img.format, img.size) == ("PNG", (1536, 1024))
    (call,) = openai_fake.requests()
    assert call["endpoint"] == "/v1/images/generations"
    assert (call["fields"]["stream"], call["fields"]["partial_images"]) == (True, 2)
    assert (call["events_sent"], call["stream_end"], call["images_returned"]) == (6, "completed", 2)

    # The completed events' usage, summed, is what the same request costs without streaming.
    plain = await make().generate(req(size="1536x1024", quality="medium", n=2))
    assert plain.usage is not None
    # (The JSON answer's model also has output_tokens_details, None here.)
    assert result.usage == {k: v for k, v in plain.usage.items() if v is not None}
    assert result.usage is not None and result.usage["output_tokens"] == 2 * 1568
    assert [i.data for i in result.images] == [i.data for i in plain.images]


async def test_stream_edit_sends_every_image_and_the_mask(
        make: MakeProvider, openai_fake: OpenAIFake, tmp_path: Path) -> None:
    refs = (png(tmp_path / "first.png", (64, 64), (255, 0, 0)),
            png(tmp_path / "second.png", (32, 48), (0, 0, 255)))
    mask = png(tmp_path / "mask.png", (64, 64), (0, 0, 0, 0), mode="RGBA")
    partials = Partials()
    request = req(references=refs, mask=mask, size="1024x1536", output_format="webp",
                  partial_images=2, options={"input_fidelity": "high", "user": "end-user-7"})
    result = await make().generate(request, partials)

    assert partials.indexes == [(0, 0), (0, 1)]
    assert [decoded(p.b64_json) for p in partials.got] == [("WEBP", (1024, 1536))] * 2
    (image,) = result.images
    assert (image.width, image.height, image.content_type) == (1024, 1536, "image/webp")
    (call,) = openai_fake.requests()
    assert call["endpoint"] == "/v1/images/edits"
    got = [(f["field"], f["filename"], f["content_type"], f["sha256"]) for f in call["files"]]
    assert got == [("image[]", "first.png", "image/png", sha256(refs[0].path)),
                   ("image[]", "second.png", "image/png", sha256(refs[1].path)),
                   ("mask", "mask.png", "image/png", sha256(mask.path))]
    fields = call["fields"]
    assert (fields["stream"], fields["partial_images"]) == ("true", "2")
    assert (fields["input_fidelity"], fields["user"]) == ("high", "end-user-7")
    assert call["stream_end"] == "completed"


async def test_edit_without_stream_sends_the_mask(make: MakeProvider, openai_fake: OpenAIFake,
                                                  tmp_path: Path) -> None:
    ref = png(tmp_path / "only.png", (16, 16), (1, 2, 3))
    mask = png(tmp_path / "m.png", (16, 16), (0, 0, 0, 255), mode="RGBA")
    partials = Partials()
    result = await make().generate(req(references=(ref,), mask=mask), partials)
    assert len(result.images) == 1 and partials.got == []
    (call,) = openai_fake.requests()
    assert [(f["field"], f["sha256"]) for f in call["files"]] == [
        ("image[]", sha256(ref.path)), ("mask", sha256(mask.path))]
    assert "stream" not in call["fields"] and "partial_images" not in call["fields"]


async def test_generate_passes_options_through(make: MakeProvider,
                                               openai_fake: OpenAIFake) -> None:
    options = {"background": "transparent", "moderation": "low", "output_compression": 70,
               "user": "end-user-1", "input_fidelity": "high"}
    await make().generate(req(output_format="webp", options=options))
    (call,) = openai_fake.requests()
    fields = call["fields"]
    assert {k: fields.get(k) for k in options} == {
        "background": "transparent", "moderation": "low", "output_compression": 70,
        "user": "end-user-1", "input_fidelity": None}  # input_fidelity is for edits only
    assert "input_fidelity" not in fields


async def test_edit_passes_its_options_through(make: MakeProvider, openai_fake: OpenAIFake,
                                               tmp_path: Path) -> None:
    ref = png(tmp_path / "r.png", (16, 16), (9, 9, 9))
    options = {"background": "opaque", "moderation": "low", "output_compression": 55,
               "input_fidelity": "low", "user": "u-2"}
    await make().generate(req(references=(ref,), output_format="jpeg", options=options))
    fields = openai_fake.requests()[0]["fields"]
    assert {k: fields.get(k) for k in options} == {
        "background": "opaque", "moderation": None, "output_compression": "55",
        "input_fidelity": "low", "user": "u-2"}  # the edit endpoint takes no moderation


async def test_options_left_out_or_none_are_not_sent(make: MakeProvider,
                                                     openai_fake: OpenAIFake) -> None:
    await make().generate(req(options={"background": None, "user": None}))
    await make().generate(req())
    for call in openai_fake.requests():
        assert not {"background", "moderation", "output_compression", "input_fidelity",
                    "user"} & set(call["fields"])


async def test_partials_arrive_as_the_stream_goes(make: MakeProvider,
                                                  openai_fake: OpenAIFake) -> None:
    """The upstream holds the stream after two partials: both are relayed before it ends."""
    openai_fake.configure(stream_stall_after=2)
    partials = Partials()
    started = time.monotonic()
    err = await fails(make(timeout_s=10, total_timeout_s=1.0), req(partial_images=3), partials)
    assert (err.code, err.retryable) == ("provider_timeout", True)
    assert time.monotonic() - started < 1.8
    assert partials.indexes == [(0, 0), (0, 1)]
    assert openai_fake.requests()[0]["stream_end"] == "stalled"


async def test_silent_stream_times_out_per_attempt(make: MakeProvider,
                                                   openai_fake: OpenAIFake) -> None:
    openai_fake.configure(stream_stall_after=1)
    started = time.monotonic()
    err = await fails(make(timeout_s=1, total_timeout_s=10), req(partial_images=2))
    assert (err.code, err.retryable) == ("provider_timeout", True)
    assert time.monotonic() - started < 2.5


async def test_error_event_mid_stream_is_retryable(make: MakeProvider,
                                                   openai_fake: OpenAIFake) -> None:
    openai_fake.configure(stream_fail_after=3)  # two partials and the first image, then error
    partials = Partials()
    err = await fails(make(max_retries=2), req(n=2, partial_images=2), partials)
    assert (err.code, err.status, err.retryable) == ("provider_error", None, True)
    assert partials.indexes == [(0, 0), (0, 1)]
    (call,) = openai_fake.requests()  # the SDK never retries a stream once it has begun
    assert (call["events_sent"], call["stream_end"]) == (3, "error")


async def test_moderation_error_event_is_not_retryable(make: MakeProvider,
                                                       openai_fake: OpenAIFake) -> None:
    openai_fake.configure(stream_fail_after=1, fail_code="moderation_blocked",
                          fail_message=f"Rejected by the safety system for key {API_KEY}")
    err = await fails(make(), req(partial_images=1))
    assert (err.code, err.retryable) == ("provider_rejected", False)
    assert err.message == "Rejected by the safety system for key ***"


@pytest.mark.parametrize("partial_images", [0, 2])
@pytest.mark.parametrize("status, code, retryable", [
    (400, "provider_rejected", False), (404, "provider_rejected", False),
    (401, "provider_error", False), (403, "provider_error", False),
    (408, "provider_error", True), (409, "provider_error", True),
    (429, "provider_error", True), (500, "provider_error", True),
    (503, "provider_error", True),
])
async def test_upstream_status_decides_retryable(make: MakeProvider, openai_fake: OpenAIFake,
                                                 status: int, code: str, retryable: bool,
                                                 partial_images: int) -> None:
    openai_fake.configure(fail_status=status)
    partials = Partials()
    err = await fails(make(), req(partial_images=partial_images), partials)
    assert (err.status, err.code, err.retryable) == (status, code, retryable)
    assert partials.got == []


async def test_stream_request_is_retried_before_it_begins(make: MakeProvider,
                                                          openai_fake: OpenAIFake) -> None:
    openai_fake.configure(fail_first=1, fail_first_status=503, retry_after_ms=10)
    partials = Partials()
    result = await make(max_retries=1).generate(req(partial_images=1), partials)
    assert len(result.images) == 1 and partials.indexes == [(0, 0)]
    assert [c["status"] for c in openai_fake.requests()] == [503, 200]


@pytest.mark.parametrize("switches", [
    {"malformed": True}, {"malformed": "html"}, {"malformed_b64": True},
    {"malformed_b64": "image"},
])
async def test_malformed_stream_is_retryable(make: MakeProvider, openai_fake: OpenAIFake,
                                             switches: dict[str, Any]) -> None:
    openai_fake.configure(**switches)
    err = await fails(make(), req(partial_images=1))
    assert (err.code, err.retryable) == ("provider_malformed", True)


async def test_stream_never_returns_more_than_n(make: MakeProvider,
                                                openai_fake: OpenAIFake) -> None:
    openai_fake.configure(fewer_images=3)  # the upstream sends 3 images whatever n asked
    result = await make().generate(req(n=1, partial_images=1))
    assert len(result.images) == 1
    # ... but all three were paid for upstream: the usage says so.
    assert result.usage is not None and result.usage["output_tokens"] == 3 * 272


async def test_stream_with_fewer_or_no_images(make: MakeProvider,
                                              openai_fake: OpenAIFake) -> None:
    openai_fake.configure(fewer_images=1)
    result = await make().generate(req(n=3, partial_images=1))
    assert len(result.images) == 1
    openai_fake.configure(fewer_images=0)
    err = await fails(make(), req(n=2, partial_images=1))
    assert (err.code, err.retryable) == ("provider_error", True)


async def test_failing_on_partial_does_not_fail_the_generation(
        make: MakeProvider, caplog: pytest.LogCaptureFixture) -> None:
    partials = Partials(fail=True)
    with caplog.at_level(logging.ERROR, logger="app.providers.base"):
        result = await make().generate(req(n=2, partial_images=2), partials)
    assert len(result.images) == 2
    assert len(partials.got) == 4  # every partial was still offered
    assert sum("on_partial failed" in r.getMessage() for r in caplog.records) == 4


# --- MockProvider --------------------------------------------------------------------------


@pytest.mark.parametrize("size, frame", [("1536x1024", (256, 171)), ("3840x2160", (256, 144)),
                                         ("128x64", (128, 64)), ("auto", (256, 256))])
async def test_mock_sends_placeholder_frames(size: str, frame: tuple[int, int]) -> None:
    partials = Partials()
    result = await MockProvider().generate(req(size=size, n=2, partial_images=3,
                                               output_format="jpeg"), partials)
    assert partials.indexes == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [decoded(p.b64_json) for p in partials.got] == [("JPEG", frame)] * 6
    assert len({p.b64_json for p in partials.got}) == 6  # each frame differs
    assert result.usage is None and len(result.images) == 2
    plain = await MockProvider().generate(req(size=size, n=2, output_format="jpeg"))
    assert [i.data for i in result.images] == [i.data for i in plain.images]


async def test_mock_without_partials_or_callback() -> None:
    partials = Partials()
    await MockProvider().generate(req(n=2), partials)
    assert partials.got == []
    result = await MockProvider().generate(req(n=2, partial_images=2))  # no on_partial
    assert len(result.images) == 2


async def test_mock_edit_with_mask_and_failing_on_partial(tmp_path: Path) -> None:
    ref = png(tmp_path / "r.png", (16, 16), (5, 5, 5))
    mask = png(tmp_path / "m.png", (16, 16), (0, 0, 0, 0), mode="RGBA")
    partials = Partials(fail=True)
    result = await MockProvider().generate(
        req(references=(ref,), mask=mask, partial_images=2, options={"background": "opaque"}),
        partials)
    assert len(result.images) == 1 and len(partials.got) == 2


async def test_mock_rejects_partial_images_out_of_range() -> None:
    err = await fails(MockProvider(), req(partial_images=4))
    assert (err.code, err.retryable) == ("provider_rejected", False)


# --- ProviderError.retryable ---------------------------------------------------------------


@pytest.mark.parametrize("code, status, retryable", [
    ("provider_timeout", None, True), ("provider_unreachable", None, True),
    ("provider_malformed", None, True), ("provider_error", None, True),
    ("provider_error", 500, True), ("provider_error", 429, True), ("provider_error", 408, True),
    ("provider_error", 401, False), ("provider_error", 403, False),
    ("provider_rejected", 400, False), ("provider_rejected", None, False),
])
def test_retryable_follows_code_and_status(code: str, status: int | None,
                                           retryable: bool) -> None:
    assert ProviderError("x", code, status).retryable is retryable


def test_retryable_can_be_said_outright() -> None:
    assert ProviderError("x", "provider_error", 500, retryable=False).retryable is False
    assert ProviderError("x", "provider_rejected", 400, retryable=True).retryable is True
    assert "retryable=False" in repr(ProviderError("x", "provider_rejected", 400))

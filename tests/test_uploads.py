"""Reference images and multipart bodies: what a client sees when an upload is refused (one
table, through HTTP, on both databases), and the streaming parser's guarantees underneath
(app/generations/multipart.py: any chunking, temp files removed, reading stops early, bounded
memory). Uploads against the real `gih serve` (bombs, floods of parts, 51 and 200 MB bodies,
clients that stall) are in tests/reliability/test_hostile_input.py; the 50 MB limit and the
API's memory during a 49.5 MB upload in tests/test_embedded.py."""

import hashlib
import io
import os
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from app.generations.multipart import (
    ParsedForm,
    UploadError,
    check_image,
    drain,
    parse_multipart,
    sniff_image_type,
)
from app.models import Generation
from tests.conftest import bearer
from tests.helpers import (
    BASE,
    PNG_BYTES,
    assert_400,
    assert_nothing_charged,
    jpeg_bytes,
    webp_bytes,
)
from tests.payloads import noise_png

BOUNDARY = "----gihBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
MB = 1024 * 1024
GENERATIONS = "/api/v1/images/generations"

# A part: (name, filename or None, content type or None, data bytes or an iterator of bytes).
Part = tuple[str | None, str | None, str | None, bytes | Iterable[bytes]]


def image_bytes(fmt: str, size: tuple[int, int] = (32, 24), noisy: bool = False) -> bytes:
    if noisy:
        im = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    else:
        im = Image.new("RGB", size, (200, 30, 90))
    out = io.BytesIO()
    im.save(out, fmt)
    return out.getvalue()


def pieces(parts: list[Part], final: bool = True) -> Iterator[bytes]:
    for name, filename, ctype, data in parts:
        disposition = "form-data"
        if name is not None:
            disposition += f'; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        if ctype is not None:
            head += f"Content-Type: {ctype}\r\n"
        yield (head + "\r\n").encode()
        if isinstance(data, bytes):
            yield data
        else:
            yield from data
        yield b"\r\n"
    if final:
        yield f"--{BOUNDARY}--\r\n".encode()


def body_bytes(parts: list[Part], final: bool = True) -> bytes:
    return b"".join(pieces(parts, final))


# --- refused uploads, as the client sees them -----------------------------------------------

BASE_PARTS: list[Part] = [("model", None, None, b"gpt-image-2"),
                          ("prompt", None, None, b"a red bicycle")]


def ref(data: bytes, filename: str = "ref.png", content_type: str | None = "image/png",
        name: str | None = "reference_image") -> Part:
    return (name, filename, content_type, data)


def corrupt_pngs() -> dict[str, bytes]:
    png = noise_png()
    idat = png.index(b"IDAT")
    corrupt_crc = bytearray(png)
    corrupt_crc[idat + 4 + int.from_bytes(png[idat - 4:idat], "big")] ^= 0xFF
    big = io.BytesIO()
    Image.effect_noise((256, 256), 50).save(big, "PNG")
    return {
        "png: signature and IHDR only": png[:8 + 25],
        "png: cut inside IDAT": png[:idat + 40],
        "png: cut after 2,000 bytes": big.getvalue()[:2000],
        "png: no IEND": png[:-12],
        "png: IDAT CRC wrong": bytes(corrupt_crc),
        "png: signature only": png[:8],
        "jpeg: first 200 bytes": jpeg_bytes()[:200],
        "webp: RIFF header only": webp_bytes()[:16],
        "jpeg magic, then text": b"\xff\xd8\xff" + b"not really a jpeg" * 10,
    }


def gif_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "GIF")
    return out.getvalue()


# case -> (extra parts after model and prompt, param, a fragment of the message)
REFUSED: dict[str, tuple[Callable[[], list[Part]], str | None, str]] = {
    "text named .png": (lambda: [ref(b"just some text, honestly", "notes.png")],
                        "reference_image", "reference_image #1 is not a PNG, JPEG or WebP image"),
    "two bytes": (lambda: [ref(b"hi", ".png")], "reference_image",
                  "reference_image #1 is not a PNG, JPEG or WebP image"),
    "a GIF called .png": (lambda: [ref(gif_bytes(), "pic.png")], "reference_image",
                          "is not a PNG, JPEG or WebP image"),
    "an empty file": (lambda: [ref(b"", "a.png")], "reference_image",
                      "reference_image #1 is empty"),
    **{case: ((lambda data=data: [ref(data)]), "reference_image", "reference_image #1 is not")
       for case, data in corrupt_pngs().items()},
    "the second of two bad": (lambda: [ref(PNG_BYTES, "a.png"), ref(b"nope", "b.png")],
                              "reference_image", "reference_image #2 is not a PNG"),
    "17 references": (lambda: [ref(PNG_BYTES, f"{i}.png") for i in range(17)],
                      "reference_image", "at most 16 reference images"),
    "17 as reference_image[]": (lambda: [ref(PNG_BYTES, f"{i}.png", name="reference_image[]")
                                         for i in range(17)],
                                "reference_image", "at most 16 reference images"),
    "a URL in a text part": (lambda: [ref(b"https://example.com/a.png", None, None)],
                             "reference_image", "reference_image must be a file upload"),
    "text part without name": (lambda: [(None, None, None, b"value")], None, "without a name"),
    "file part without name": (lambda: [ref(PNG_BYTES, name=None)], None, "without a name"),
    "empty name": (lambda: [("", None, None, b"value")], None, "without a name"),
}


def multipart_body(parts: list[Part]) -> bytes:
    return body_bytes(BASE_PARTS + parts)


@pytest.mark.parametrize("case", list(REFUSED))
async def test_refused_uploads(any_db, case: str) -> None:
    make_parts, param, fragment = REFUSED[case]
    user, key = await any_db.user_with_key(100)
    response = await any_db.http.post(GENERATIONS, content=multipart_body(make_parts()),
                                      headers={**bearer(key), "Content-Type": CONTENT_TYPE})
    error = assert_400(response, param)
    assert fragment in error["message"], error
    await assert_nothing_charged(any_db, user, key, 100)


async def test_a_part_without_content_disposition_is_refused(any_db) -> None:
    user, key = await any_db.user_with_key(100)
    raw = body_bytes(BASE_PARTS, final=False)
    raw += f"--{BOUNDARY}\r\nX-Other: 1\r\n\r\nvalue\r\n--{BOUNDARY}--\r\n".encode()
    response = await any_db.http.post(GENERATIONS, content=raw,
                                      headers={**bearer(key), "Content-Type": CONTENT_TYPE})
    assert "without a name" in assert_400(response)["message"]
    await assert_nothing_charged(any_db, user, key, 100)


async def test_sixteen_references_are_accepted(any_db) -> None:
    _, key = await any_db.user_with_key(100)
    files = [("reference_image", (f"{i}.png", PNG_BYTES, "image/png")) for i in range(16)]
    response = await any_db.http.post(GENERATIONS, headers=bearer(key),
                                      data={**BASE, "size": "1024x1024"}, files=files)
    assert response.status_code == 200, response.text
    async with any_db.session() as session:
        generation = await session.get(Generation, response.json()["id"])
        assert generation.reference_count == 16


async def test_references_go_by_content_whatever_they_are_called(any_db) -> None:
    """Names, extensions and declared types are the client's; the bytes decide."""
    _, key = await any_db.user_with_key(100)
    files = [
        ("reference_image", ("photo.png", webp_bytes(), "image/png")),
        ("reference_image[]", ("x.gif", jpeg_bytes(), "image/gif")),
        ("reference_image", ("photo.jpg", PNG_BYTES, "image/jpeg")),
        ("reference_image", ("../../../../escape.webp", jpeg_bytes(), "application/octet-stream")),
        ("reference_image[]", ("no-extension", webp_bytes(), "text/plain")),
        ("reference_image", ("\x01name\x7f.png\r\nX-Evil: 1", PNG_BYTES, "image/png")),
    ]
    response = await any_db.http.post(GENERATIONS, headers=bearer(key),
                                      data={**BASE, "size": "1024x1024"}, files=files)
    assert response.status_code == 200, response.text
    async with any_db.session() as session:
        generation = await session.scalar(select(Generation)
                                          .where(Generation.id == response.json()["id"]))
        assert generation.reference_count == 6


# --- the streaming parser underneath -------------------------------------------------------


class Stream:
    """An async byte stream re-chunked to `size`, counting the chunks handed out."""

    def __init__(self, source: Iterable[bytes], size: int = 64 * 1024) -> None:
        self.source, self.size, self.consumed = source, size, 0
        self.iterator = self.chunks()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iterator

    async def chunks(self) -> AsyncIterator[bytes]:
        buf = bytearray()
        for piece in self.source:
            buf += piece
            while len(buf) >= self.size:
                self.consumed += 1
                yield bytes(buf[: self.size])
                del buf[: self.size]
        if buf:
            self.consumed += 1
            yield bytes(buf)


async def parse(parts: list[Part] | bytes, tmp: Path, chunk: int = 64 * 1024,
                **limits: Any) -> ParsedForm:
    source = [parts] if isinstance(parts, bytes) else pieces(parts)
    limits.setdefault("max_file_bytes", 50 * MB)
    limits.setdefault("max_files", 16)
    return await parse_multipart(Stream(source, chunk), CONTENT_TYPE, tmp_dir=tmp, **limits)


async def rejected(parts: list[Part] | bytes, tmp: Path, match: str, **limits: Any) -> UploadError:
    with pytest.raises(UploadError, match=match) as info:
        await parse(parts, tmp, **limits)
    assert list(tmp.iterdir()) == [], "temp files must be removed on error"
    return info.value


@pytest.mark.parametrize("chunk", [1, 7, 64 * 1024])
async def test_two_png_references_and_fields(tmp_path: Path, chunk: int) -> None:
    first, second = image_bytes("PNG", (32, 24)), image_bytes("PNG", (10, 20), noisy=True)
    form = await parse([
        ("model", None, None, b"gpt-image-1"),
        ("prompt", None, None, "a caf\u00e9 \u2615".encode()),
        ("reference_image", "../../secret/one.png", "image/png", first),
        ("mask", "mask.png", "image/png", first),  # another file field: discarded
        ("reference_image[]", "C:\\Users\\me\\two.png", "image/png", second),
        ("prompt", None, None, b"last wins"),
    ], tmp_path, chunk)
    assert form.fields == {"model": "gpt-image-1", "prompt": "last wins"}
    assert [r.filename for r in form.references] == ["one.png", "two.png"]
    for reference, data in zip(form.references, [first, second], strict=True):
        assert reference.content_type == "image/png"
        assert reference.size == len(data)
        assert reference.sha256 == hashlib.sha256(data).hexdigest()
        assert reference.path.parent == tmp_path and reference.path.read_bytes() == data
    assert len(list(tmp_path.iterdir())) == 2


def test_sniff_image_type() -> None:
    assert sniff_image_type(b"\x89PNG\r\n\x1a\n\0\0\0\r") == "image/png"
    assert sniff_image_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_image_type(b"RIFF\x10\0\0\0WEBP") == "image/webp"
    assert sniff_image_type(b"RIFF\x10\0\0\0WAVE") is None
    assert sniff_image_type(b"GIF89a") is None


async def test_format_must_match_sniffed_type(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(image_bytes("PNG"))
    check_image(path, "image/png", 10_000)  # no error: a PNG it is
    with pytest.raises(UploadError):
        check_image(path, "image/jpeg", 10_000)


@pytest.mark.parametrize("chunk", [1, 64 * 1024])
async def test_a_refused_reference_leaves_no_temp_file(tmp_path: Path, chunk: int) -> None:
    """Whatever the chunking, a refusal after a good reference removes that one's file too."""
    with pytest.raises(UploadError, match="reference_image #2 is not a PNG"):
        await parse([("reference_image", "a.png", "image/png", image_bytes("PNG")),
                     ("reference_image", "b.png", "image/png", b"nope")], tmp_path, chunk)
    assert list(tmp_path.iterdir()) == []


async def test_too_many_parts_stops_reading(tmp_path: Path) -> None:
    parts: list[Part] = [(f"f{i}", None, None, b"x" * 50) for i in range(1000)]
    stream = Stream(pieces(parts), 1024)
    with pytest.raises(UploadError, match="too many multipart parts"):
        await parse_multipart(stream, CONTENT_TYPE, tmp_dir=tmp_path,
                              max_file_bytes=MB, max_files=4)
    total = len(body_bytes(parts)) // 1024 + 1
    assert stream.consumed < total / 10
    await drain(stream, 10 * 1024)  # the caller may drain a bounded amount afterwards
    assert stream.consumed < total / 5


async def test_oversize_reference_streams_with_low_memory(tmp_path: Path) -> None:
    def filler() -> Iterator[bytes]:
        yield image_bytes("PNG")
        block = b"\0" * (64 * 1024)
        for _ in range(51 * 16):
            yield block

    parts: list[Part] = [("prompt", None, None, b"big"),
                         ("reference_image", "big.png", "image/png", filler())]
    stream = Stream(pieces(parts))
    tracemalloc.start()
    try:
        with pytest.raises(UploadError, match=r"#1 is larger than the 50 MB limit"):
            await parse_multipart(stream, CONTENT_TYPE, tmp_dir=tmp_path,
                                  max_file_bytes=50 * MB, max_files=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MB
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("header", ["multipart/form-data", "multipart/form-data; boundary=",
                                    'multipart/form-data; boundary="a\x01b"', "application/json"])
async def test_missing_or_invalid_boundary(tmp_path: Path, header: str) -> None:
    with pytest.raises(UploadError, match="multipart"):
        await parse_multipart(Stream([b"x"]), header, tmp_dir=tmp_path, max_file_bytes=MB,
                              max_files=1)


@pytest.mark.parametrize("chunk", [1, 64 * 1024])
async def test_truncated_body(tmp_path: Path, chunk: int) -> None:
    raw = body_bytes([("prompt", None, None, b"hi"),
                      ("reference_image", "a.png", "image/png", image_bytes("PNG"))])
    with pytest.raises(UploadError, match="multipart body is incomplete"):
        await parse(raw[:-60], tmp_path, chunk)
    assert list(tmp_path.iterdir()) == []
    await rejected(body_bytes([("prompt", None, None, b"hi")], final=False), tmp_path,
                   "multipart body is incomplete")
    await rejected(b"", tmp_path, "multipart body is incomplete")


async def test_malformed_body(tmp_path: Path) -> None:
    await rejected(b"this is not multipart at all", tmp_path, "malformed multipart body")


async def test_invalid_utf8_field(tmp_path: Path) -> None:
    err = await rejected([("prompt", None, None, b"caf\xe9 \xff")], tmp_path, "not valid UTF-8")
    assert err.param == "prompt"


async def test_oversize_text_field(tmp_path: Path) -> None:
    form = await parse([("prompt", None, None, b"x" * 10)], tmp_path, max_field_bytes=10)
    assert form.fields["prompt"] == "x" * 10
    err = await rejected([("prompt", None, None, b"x" * 11)], tmp_path, "longer than 10 bytes",
                         max_field_bytes=10)
    assert err.param == "prompt"

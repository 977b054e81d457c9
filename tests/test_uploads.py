"""Streaming multipart parsing and reference-image checks (app/uploads.py)."""

import hashlib
import io
import os
import struct
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from app.generations.multipart import (
    ParsedForm,
    UploadError,
    check_image,
    drain,
    parse_multipart,
    sniff_image_type,
)

BOUNDARY = "----gihBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
MB = 1024 * 1024

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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose IHDR declares huge dimensions (8-bit grayscale)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + png_chunk(b"IEND", b""))


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
                **limits: int) -> ParsedForm:
    source = [parts] if isinstance(parts, bytes) else pieces(parts)
    limits.setdefault("max_file_bytes", 50 * MB)
    limits.setdefault("max_files", 16)
    return await parse_multipart(Stream(source, chunk), CONTENT_TYPE, tmp_dir=tmp, **limits)


async def rejected(parts: list[Part] | bytes, tmp: Path, match: str, **limits: int) -> UploadError:
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
    for ref, data in zip(form.references, [first, second], strict=True):
        assert ref.content_type == "image/png"
        assert ref.size == len(data)
        assert ref.sha256 == hashlib.sha256(data).hexdigest()
        assert ref.path.parent == tmp_path and ref.path.read_bytes() == data
    assert len(list(tmp_path.iterdir())) == 2


async def test_type_comes_from_content_not_name(tmp_path: Path) -> None:
    form = await parse([
        ("reference_image", "photo.png", "image/png", image_bytes("WEBP")),
        ("reference_image", "x.gif", "image/gif", image_bytes("JPEG", (16, 8))),
    ], tmp_path)
    assert [r.content_type for r in form.references] == ["image/webp", "image/jpeg"]


def test_sniff_image_type() -> None:
    assert sniff_image_type(b"\x89PNG\r\n\x1a\n\0\0\0\r") == "image/png"
    assert sniff_image_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_image_type(b"RIFF\x10\0\0\0WEBP") == "image/webp"
    assert sniff_image_type(b"RIFF\x10\0\0\0WAVE") is None
    assert sniff_image_type(b"GIF89a") is None


@pytest.mark.parametrize("data", [b"just some text, not an image at all", b"hi"])
async def test_text_file_named_png_is_rejected(tmp_path: Path, data: bytes) -> None:
    err = await rejected([("reference_image", ".png", "image/png", data)], tmp_path,
                         r"reference_image #1 is not a PNG, JPEG or WebP image")
    assert err.param == "reference_image"


async def test_empty_file_is_rejected(tmp_path: Path) -> None:
    await rejected([("reference_image", "a.png", "image/png", b"")], tmp_path, "#1 is empty")


async def test_truncated_png_is_rejected(tmp_path: Path) -> None:
    data = image_bytes("PNG", (64, 64), noisy=True)
    await rejected([("reference_image", "a.png", None, data[: len(data) // 2])], tmp_path,
                   "reference_image #1 is not a decodable image")


async def test_decompression_bomb_is_rejected_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    await rejected([("reference_image", "bomb.png", "image/png", bomb_png())], tmp_path,
                   r"100000x100000 pixels, more than the 100000000 pixel limit")
    assert time.monotonic() - started < 1
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20_000, 20_000))  # below Pillow's own limit, above ours
    with pytest.raises(UploadError, match="pixel limit"):
        check_image(path, "image/png", max_pixels=1_000_000)


async def test_format_must_match_sniffed_type(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(image_bytes("PNG"))
    check_image(path, "image/png", 10_000)  # no error: a PNG it is
    with pytest.raises(UploadError):
        check_image(path, "image/jpeg", 10_000)


async def test_too_many_references(tmp_path: Path) -> None:
    png = image_bytes("PNG")
    parts: list[Part] = [("reference_image[]", f"{i}.png", "image/png", png) for i in range(17)]
    assert len((await parse(parts[:16], tmp_path)).references) == 16
    for path in tmp_path.iterdir():
        path.unlink()
    await rejected(parts, tmp_path, "at most 16 reference images")


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


async def test_reference_image_must_be_a_file(tmp_path: Path) -> None:
    await rejected([("reference_image", None, None, b"https://example.com/a.png")], tmp_path,
                   "reference_image must be a file upload")


async def test_part_without_a_name(tmp_path: Path) -> None:
    await rejected([(None, "a.png", "image/png", image_bytes("PNG"))], tmp_path,
                   "multipart part without a name")
    raw = f"--{BOUNDARY}\r\nX-Other: 1\r\n\r\nvalue\r\n--{BOUNDARY}--\r\n".encode()
    await rejected(raw, tmp_path, "multipart part without a name")


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


async def test_error_after_a_good_reference_removes_its_file(tmp_path: Path) -> None:
    await rejected([("reference_image", "a.png", "image/png", image_bytes("PNG")),
                    ("reference_image", "b.png", "image/png", b"nope")], tmp_path,
                   "reference_image #2 is not a PNG")

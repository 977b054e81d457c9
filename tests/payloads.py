"""Hostile request bodies, built from scratch (Pillow and the standard library only): images
that claim to be huge, and multipart bodies part by part. Used by
tests/reliability/test_hostile_input.py (what the server answers) and `python -m
bench.reliability` (how long it takes and how much memory it costs)."""

import io
import struct
import zlib

from PIL import Image

MULTIPART = "multipart/form-data; boundary=hostile"


def small_image(fmt: str, size: tuple[int, int], color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring width x height RGB, with a few hundred bytes of IDAT."""
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 65536, 9)) + png_chunk(b"IEND", b""))


def jpeg_bomb() -> bytes:
    """A small JPEG whose frame header (SOF0) claims 65500x65500."""
    data = bytearray(small_image("JPEG", (30, 40), "white"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def webp_bomb() -> bytes:
    """A WebP whose extended header (VP8X) claims a 16384x16384 canvas."""
    small = small_image("WEBP", (40, 30), "blue")
    vp8x = (b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0"
            + (16383).to_bytes(3, "little") + (16383).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + small[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def noise_png(size: int = 128) -> bytes:
    """A PNG of noise: it does not compress, so its size is about size² x 3 bytes."""
    out = io.BytesIO()
    Image.effect_noise((size, size), 60).convert("RGB").save(out, "PNG")
    return out.getvalue()


def form_part(name: str | None, value: bytes, filename: str | None = None,
              content_type: str | None = None, disposition: bool = True) -> bytes:
    """One part of a MULTIPART body; `name` None, or no disposition at all, make broken ones."""
    headers = []
    if disposition:
        params = "form-data" + (f'; name="{name}"' if name is not None else "")
        params += f'; filename="{filename}"' if filename is not None else ""
        headers.append(f"Content-Disposition: {params}")
    if content_type:
        headers.append(f"Content-Type: {content_type}")
    return (b"--hostile\r\n" + "\r\n".join(headers).encode() + b"\r\n\r\n" + value + b"\r\n")


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--hostile--\r\n"


BASE_PARTS = (form_part("model", b"gpt-image-2"), form_part("prompt", b"hostile"))

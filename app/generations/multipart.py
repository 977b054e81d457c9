"""Streaming multipart/form-data parsing for generation requests, with reference-image checks:
every limit is enforced while the body streams, files go to temp files, never whole to memory."""

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.models import ReferenceRole

PARAM = "reference_image"
BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,255}[0-9A-Za-z'()+_,\-./:=?]")
# Plugin classes are used directly: Image.open() would emit a DecompressionBombWarning (or
# need the global Image.MAX_IMAGE_PIXELS changed); we check the pixel count ourselves instead.
PLUGINS: dict[str, type[ImageFile.ImageFile]] = {
    "image/png": PngImagePlugin.PngImageFile,
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
}


class UploadError(Exception):
    """A client error in an uploaded form; the caller answers 400 invalid_request."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


@dataclass(frozen=True)
class FileField:
    """A form field that carries image files: how errors name it, and its limits."""

    param: str  # e.g. reference_image; errors say "reference_image #2 ..."
    noun: str  # plural, for "at most 16 reference images"
    role: ReferenceRole = ReferenceRole.IMAGE
    types: tuple[str, ...] = IMAGE_TYPES
    max_count: int | None = None  # None: the caller's max_files (the model's limit)


REFERENCE = FileField(PARAM, "reference images")
# /api/v1/images/generations: reference_image, repeatable, also as reference_image[]
REFERENCE_FIELDS = {PARAM: REFERENCE, "reference_image[]": REFERENCE}


@dataclass
class ReferenceFile:
    path: Path
    filename: str
    content_type: str
    size: int
    sha256: str
    role: ReferenceRole = ReferenceRole.IMAGE


@dataclass
class ParsedForm:
    fields: dict[str, str] = field(default_factory=dict)
    references: list[ReferenceFile] = field(default_factory=list)


def sniff_image_type(head: bytes) -> str | None:
    """The image MIME type from the magic bytes, or None when not PNG, JPEG or WebP."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_image(path: Path, expected_type: str, max_pixels: int, label: str = "image",
                param: str = PARAM) -> None:
    """Open and verify an image with Pillow (blocking: run it in a thread)."""
    try:
        plugin = PLUGINS[expected_type]
        with plugin(path) as im:
            if im.format != plugin.format:
                raise UploadError(f"{label} is not a {plugin.format} image", param)
            width, height = im.size
            if width * height > max_pixels:
                raise UploadError(f"{label} is {width}x{height} pixels, more than the "
                                  f"{max_pixels} pixel limit", param)
            im.verify()
    except UploadError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise UploadError(f"{label} is not a decodable image ({exc})", param) from exc


def clean_filename(raw: str) -> str:
    """Keep the basename of a client filename, without control characters, <= 255 chars."""
    name = re.split(r"[/\\]", raw)[-1]
    return "".join(ch for ch in name if ch.isprintable())[:255]


def decode_header(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def format_mb(n: int) -> str:
    return f"{n / (1024 * 1024):g}"


class FormReader:
    """The MultipartParser callbacks; every limit raises UploadError from inside write()."""

    def __init__(self, tmp_dir: Path, max_file_bytes: int, max_files: int,
                 max_field_bytes: int, max_parts: int,
                 file_fields: dict[str, FileField]) -> None:
        self.tmp_dir, self.max_file_bytes, self.max_files = tmp_dir, max_file_bytes, max_files
        self.max_field_bytes, self.max_parts = max_field_bytes, max_parts
        self.file_fields = file_fields
        self.counts: dict[FileField, int] = {}
        self.form = ParsedForm()
        self.pending: list[tuple[str, FileField, ReferenceFile]] = []  # to check with Pillow
        self.paths: list[Path] = []  # every temp file created, for cleanup
        self.parts = 0
        self.ended = False
        self.file: BinaryIO | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise UploadError(f"too many multipart parts (at most {self.max_parts})")
        self.headers: dict[str, bytes] = {}
        self.hname, self.hvalue = bytearray(), bytearray()
        self.kind = "text"  # "text" | "ref" | "skip"
        self.data, self.size, self.head = bytearray(), 0, bytearray()
        self.sniffed: str | None = None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.hname += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.hvalue += data[start:end]

    def header_end(self) -> None:
        self.headers[self.hname.decode("latin-1").strip().lower()] = bytes(self.hvalue).strip()
        self.hname, self.hvalue = bytearray(), bytearray()

    def headers_finished(self) -> None:
        disposition = self.headers.get("content-disposition", b"").decode("latin-1")
        _, opts = parse_options_header(disposition)
        self.name = decode_header(opts.get(b"name", b""))
        if not self.name:
            raise UploadError("multipart part without a name")
        is_file = b"filename" in opts
        spec = self.file_fields.get(self.name)
        if spec is not None:
            if not is_file and "content-type" not in self.headers:
                raise UploadError(f"{spec.param} must be a file upload", spec.param)
            limit = self.max_files if spec.max_count is None else spec.max_count
            count = self.counts.get(spec, 0)
            if count >= limit:
                raise UploadError(f"at most {limit} {spec.noun}", spec.param)
            self.counts[spec] = count + 1
            self.kind = "ref"
            self.spec = spec
            self.label = spec.param if spec.max_count == 1 else f"{spec.param} #{count + 1}"
            self.filename = clean_filename(decode_header(opts.get(b"filename", b"")))
            self.hash = hashlib.sha256()
            fd, name = tempfile.mkstemp(prefix="ref-", suffix=".upload", dir=self.tmp_dir)
            self.path = Path(name)
            self.paths.append(self.path)
            self.file = os.fdopen(fd, "wb")
        elif is_file:
            self.kind = "skip"

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.kind == "text":
            if self.size > self.max_field_bytes:
                raise UploadError(f"field {self.name} is longer than {self.max_field_bytes} "
                                  "bytes", self.name)
            self.data += data[start:end]
        elif self.kind == "skip":
            if self.size > self.max_file_bytes:
                raise UploadError(f"file field {self.name} is larger than the "
                                  f"{format_mb(self.max_file_bytes)} MB limit", self.name)
        else:
            if self.size > self.max_file_bytes:
                raise UploadError(f"{self.label} is larger than the "
                                  f"{format_mb(self.max_file_bytes)} MB limit", self.spec.param)
            chunk = memoryview(data)[start:end]
            if len(self.head) < 12:
                self.head += chunk[:12 - len(self.head)]
                if len(self.head) == 12:
                    self.sniff()
            self.hash.update(chunk)
            assert self.file is not None
            self.file.write(chunk)

    def sniff(self) -> None:
        self.sniffed = sniff_image_type(bytes(self.head))
        if self.sniffed not in self.spec.types:
            kinds = "a PNG image" if self.spec.types == ("image/png",) else \
                "a PNG, JPEG or WebP image"
            raise UploadError(f"{self.label} is not {kinds}", self.spec.param)

    def part_end(self) -> None:
        if self.kind == "text":
            try:
                self.form.fields[self.name] = self.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UploadError(f"field {self.name} is not valid UTF-8", self.name) from exc
        elif self.kind == "ref":
            assert self.file is not None
            self.file.close()
            self.file = None
            if self.size == 0:
                raise UploadError(f"{self.label} is empty", self.spec.param)
            if self.sniffed is None:
                self.sniff()
            assert self.sniffed is not None
            ref = ReferenceFile(self.path, self.filename, self.sniffed, self.size,
                                self.hash.hexdigest(), self.spec.role)
            self.form.references.append(ref)
            self.pending.append((self.label, self.spec, ref))

    def end(self) -> None:
        self.ended = True

    def cleanup(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        for path in self.paths:
            path.unlink(missing_ok=True)


def get_boundary(content_type_header: str) -> bytes:
    ctype, opts = parse_options_header(content_type_header)
    if ctype != b"multipart/form-data":
        raise UploadError("the request body must be multipart/form-data")
    boundary = opts.get(b"boundary", b"").decode("latin-1")
    if not boundary:
        raise UploadError("multipart boundary is missing")
    if not BOUNDARY_RE.fullmatch(boundary):
        raise UploadError("multipart boundary is invalid")
    return boundary.encode("latin-1")


async def parse_multipart(stream: AsyncIterator[bytes], content_type_header: str, *,
                          tmp_dir: Path, max_file_bytes: int, max_files: int,
                          max_field_bytes: int = 256 * 1024, max_parts: int = 64,
                          max_pixels: int = 100_000_000,
                          file_fields: dict[str, FileField] | None = None) -> ParsedForm:
    """Stream a multipart body into text fields and checked image files (temp files): the
    fields of `file_fields` (default: reference_image); other file parts are skipped."""
    parser = MultipartParser(get_boundary(content_type_header))
    reader = FormReader(tmp_dir, max_file_bytes, max_files, max_field_bytes, max_parts,
                        REFERENCE_FIELDS if file_fields is None else file_fields)
    parser.callbacks = reader.callbacks()  # type: ignore[assignment]
    try:
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
            while reader.pending:
                label, spec, ref = reader.pending.pop(0)
                await asyncio.to_thread(check_image, ref.path, ref.content_type, max_pixels,
                                        label, spec.param)
            if reader.ended:
                break
        if not reader.ended:
            raise UploadError("multipart body is incomplete")
    except FormParserError as exc:
        reader.cleanup()
        raise UploadError(f"malformed multipart body: {exc}") from exc
    except BaseException:
        reader.cleanup()
        raise
    return reader.form


async def drain(stream: AsyncIterator[bytes], limit_bytes: int) -> None:
    """Read and discard the rest of a body, up to limit_bytes."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total >= limit_bytes:
            break

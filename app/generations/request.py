"""Reading a generation request: the body (JSON, or multipart streamed to temp files), the
Idempotency-Key, and the fields checked into a GenerationInput."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from python_multipart.multipart import parse_options_header

from app.catalog.catalog import Catalog
from app.catalog.schemas import Model
from app.catalog.sizes import CatalogError, ResolvedSize, resolve_size
from app.errors import InvalidRequest
from app.generations.multipart import (
    FileField,
    ReferenceFile,
    UploadError,
    drain,
    parse_multipart,
)

if TYPE_CHECKING:  # the worker reads GenerationInput and does not load FastAPI
    from fastapi import Request

MAX_PROMPT_CHARS = 32_000
MAX_N = 4
MAX_JSON_BYTES = 1024 * 1024
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
TRUE_WORDS = {"true": True, "1": True, "false": False, "0": False}
ASCII_INTEGER = re.compile(r"[0-9]{1,6}")
MAX_WEBHOOK_URL = 2048
WEBHOOK_EVENTS = ("generation.succeeded", "generation.failed", "generation.canceled")
# The database cannot store NUL characters or lone UTF-16 surrogates.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Letters that render as nothing (Unicode calls them letters, not spaces or format characters).
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


@dataclass(frozen=True)
class GenerationInput:
    model: Model
    prompt: str
    resolved: ResolvedSize
    n: int
    is_async: bool
    output_format: str
    # Passed through to the provider (the /v1 API's background, moderation, output_compression,
    # input_fidelity, user, partial_images); empty from /api/v1.
    options: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] | None = None  # None: every event

    @property
    def credits_requested(self) -> int:
        return self.n * self.model.credits_per_image[self.resolved.tier]  # type: ignore[index]

    def fingerprint(self, reference_hashes: list[str]) -> str:
        """Identifies the request for Idempotency-Key comparison."""
        canonical = {
            "model": self.model.id, "prompt": self.prompt, "size": self.resolved.size,
            "aspect_ratio": self.resolved.aspect_ratio, "quality": self.resolved.tier,
            "render_quality": self.resolved.render_quality, "n": self.n,
            "async": self.is_async, "output_format": self.output_format,
            "references": reference_hashes,
        }
        if self.options:  # (absent from /api/v1 requests: their fingerprints stay as they were)
            canonical["options"] = self.options
        if self.webhook_url:
            canonical["webhook"] = [self.webhook_url, self.webhook_events]
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass
class RequestBody:
    fields: dict[str, Any]
    references: list[ReferenceFile] = field(default_factory=list)


def media_type(request: Request) -> str:
    """The Content-Type's media type, lowercased (media types are case-insensitive)."""
    ctype, _ = parse_options_header(request.headers.get("content-type", ""))
    return ctype.decode("latin-1").strip().lower()


@contextlib.asynccontextmanager
async def read_body(request: Request, *, catalog: Catalog, max_file_bytes: int,
                    file_fields: dict[str, FileField] | None = None,
                    json_allowed: bool = True) -> AsyncIterator[RequestBody]:
    """The fields and the image files (temp files, deleted when the block ends): JSON, or
    multipart with the files of `file_fields` (default: reference_image)."""
    kind = media_type(request)
    if json_allowed and (kind == "application/json" or kind.endswith("+json")):
        yield RequestBody(await read_json(request))
        return
    if kind != "multipart/form-data":
        raise InvalidRequest("Content-Type must be application/json or multipart/form-data"
                             if json_allowed else "Content-Type must be multipart/form-data")
    tmp = Path(tempfile.mkdtemp(prefix="gih-upload-"))
    try:
        try:
            form = await parse_multipart(
                request.stream(), request.headers["content-type"], tmp_dir=tmp,
                max_file_bytes=max_file_bytes, max_files=catalog.max_reference_images,
                file_fields=file_fields)
        except UploadError as exc:
            await drain_quietly(request)
            raise InvalidRequest(exc.message, param=exc.param) from None
        yield RequestBody(dict(form.fields), form.references)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def read_json(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise InvalidRequest(f"JSON body is larger than {MAX_JSON_BYTES // 1024} KB")
    try:
        fields = json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("request body must be a JSON object")
    if "reference_image" in fields or "reference_image[]" in fields:
        raise InvalidRequest("reference_image is accepted only as a multipart/form-data file",
                             param="reference_image")
    return fields


async def drain_quietly(request: Request) -> None:
    """Read (and drop) what the client is still sending, so it sees our 400 and not a reset."""
    with contextlib.suppress(Exception):  # the client may be gone; the 400 stands
        await drain(request.stream(), DRAIN_LIMIT_BYTES)


def check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not all(" " <= c <= "~" for c in value):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 printable ASCII characters",
                             param="Idempotency-Key")
    return value


def is_invisible(char: str) -> bool:
    """Whitespace, format characters (zero-width space, joiners, BOM, ...) and blank letters."""
    return char.isspace() or unicodedata.category(char) in ("Cf", "Cc") or char in BLANK_LETTERS


def strip_invisible(text: str) -> str:
    start, end = 0, len(text)
    while start < end and is_invisible(text[start]):
        start += 1
    while end > start and is_invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def _text(fields: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required", param=name)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=name)
    if UNSTORABLE.search(value):
        raise InvalidRequest(f"{name} must not contain NUL characters or unpaired surrogates",
                             param=name)
    return value.strip()


def _integer(fields: dict[str, Any], name: str, default: int) -> int:
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"{name} must be an integer", param=name)
    if isinstance(value, str):
        text = value.strip()
        if not ASCII_INTEGER.fullmatch(text):  # not str.isdigit(): it accepts "²" and "٣"
            raise InvalidRequest(f"{name} must be an integer", param=name)
        value = int(text)
    return value


def _boolean(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS:
        return TRUE_WORDS[value.strip().lower()]
    raise InvalidRequest(f"{name} must be true or false", param=name)


def parse_input(fields: dict[str, Any], catalog: Catalog, *,
                reference_count: int) -> GenerationInput:
    model_id = _text(fields, "model", required=True)
    model = catalog.get(model_id or "")
    if model is None:
        known = ", ".join(m.id for m in catalog.models())
        raise InvalidRequest(f"unknown model {model_id!r}; available: {known}", param="model")
    prompt = _text(fields, "prompt", required=True) or ""
    visible = strip_invisible(prompt)  # kept as sent; measured without what shows nothing
    if not visible:
        raise InvalidRequest("prompt must not be empty (or only invisible characters)",
                             param="prompt")
    if len(visible) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"prompt is longer than {MAX_PROMPT_CHARS:,} characters",
                             param="prompt")
    limit = min(MAX_N, model.max_images_per_request)
    n = _integer(fields, "n", 1)
    if not 1 <= n <= limit:
        raise InvalidRequest(f"n must be between 1 and {limit}", param="n")
    output_format = (_text(fields, "output_format") or "png").lower()
    if output_format not in ("png", "jpeg", "webp"):
        raise InvalidRequest("output_format must be one of png, jpeg, webp",
                             param="output_format")
    if reference_count > model.reference_image_limit:
        raise InvalidRequest(f"at most {model.reference_image_limit} reference images "
                             f"for {model.id}", param="reference_image")
    try:
        resolved = resolve_size(model, size=_text(fields, "size") or None,
                                aspect_ratio=_text(fields, "aspect_ratio") or None,
                                quality=_text(fields, "quality") or None)
    except CatalogError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    url, events = webhook_of(fields)
    return GenerationInput(model=model, prompt=prompt, resolved=resolved, n=n,
                           is_async=_boolean(fields, "async"), output_format=output_format,
                           webhook_url=url, webhook_events=events)


def webhook_of(fields: dict[str, Any]) -> tuple[str | None, tuple[str, ...] | None]:
    """`webhook_url` (http or https, at most 2,048 characters) and `webhook_events` (a list,
    or in a form a comma-separated value; default: every event). Whether the host is public is
    checked apart (it needs a DNS lookup)."""
    url = _text(fields, "webhook_url")
    if not url:
        if fields.get("webhook_events") is not None:
            raise InvalidRequest("webhook_events needs a webhook_url", param="webhook_events")
        return None, None
    if len(url) > MAX_WEBHOOK_URL:
        raise InvalidRequest(f"webhook_url is longer than {MAX_WEBHOOK_URL:,} characters",
                             param="webhook_url")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("webhook_url must be an http or https URL", param="webhook_url")
    raw = fields.get("webhook_events")
    if raw is None:
        return url, None
    if isinstance(raw, str):
        raw = [name.strip() for name in raw.split(",") if name.strip()]
    if not isinstance(raw, list) or not raw or not all(isinstance(n, str) for n in raw):
        raise InvalidRequest("webhook_events must be a non-empty list of event names",
                             param="webhook_events")
    unknown = sorted(set(raw) - set(WEBHOOK_EVENTS))
    if unknown:
        raise InvalidRequest(f"unknown webhook_events {unknown}; known: "
                             f"{', '.join(WEBHOOK_EVENTS)}", param="webhook_events")
    return url, tuple(name for name in WEBHOOK_EVENTS if name in raw)

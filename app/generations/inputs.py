"""Turn the fields of a JSON or multipart request into a checked GenerationInput."""

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from app.catalog import Catalog, CatalogError, ModelSpec, ResolvedSize, resolve_size
from app.errors import InvalidRequest

MAX_PROMPT_CHARS = 32_000
MAX_N = 4
OUTPUT_FORMATS = ("png", "jpeg", "webp")
TRUE_WORDS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True)
class GenerationInput:
    model: ModelSpec
    prompt: str
    resolved: ResolvedSize
    n: int
    is_async: bool
    output_format: str

    @property
    def credits_requested(self) -> int:
        return self.n * self.model.credits_per_image[self.resolved.tier]

    def fingerprint(self, reference_hashes: list[str]) -> str:
        """Identifies the request for Idempotency-Key comparison."""
        canonical = {
            "model": self.model.id, "prompt": self.prompt, "size": self.resolved.size,
            "aspect_ratio": self.resolved.aspect_ratio, "quality": self.resolved.tier,
            "render_quality": self.resolved.render_quality, "n": self.n,
            "async": self.is_async, "output_format": self.output_format,
            "references": reference_hashes,
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


# The database cannot store NUL characters or lone UTF-16 surrogates.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


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
        if not text.isdigit() or len(text) > 6:
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
    if not prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"prompt is longer than {MAX_PROMPT_CHARS:,} characters",
                             param="prompt")
    limit = min(MAX_N, model.max_images_per_request)
    n = _integer(fields, "n", 1)
    if not 1 <= n <= limit:
        raise InvalidRequest(f"n must be between 1 and {limit}", param="n")
    output_format = (_text(fields, "output_format") or "png").lower()
    if output_format not in OUTPUT_FORMATS:
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
    return GenerationInput(model=model, prompt=prompt, resolved=resolved, n=n,
                           is_async=_boolean(fields, "async"), output_format=output_format)

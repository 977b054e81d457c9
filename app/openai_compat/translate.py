"""OpenAI's image request fields, checked and turned into the GenerationInput every generation
is made from (so a /v1 request is priced, charged and refunded exactly as /api/v1 says)."""

from dataclasses import dataclass, replace
from typing import Any

from app.catalog.catalog import Catalog
from app.errors import InvalidRequest
from app.generations.multipart import FileField
from app.generations.request import GenerationInput, parse_input
from app.models import ReferenceRole

RESPONSE_FORMATS = ("b64_json", "url")
MAX_PARTIAL_IMAGES = 3
CHOICES = {
    "background": ("transparent", "opaque", "auto"),
    "moderation": ("low", "auto"),
    "input_fidelity": ("high", "low"),
}
MAX_USER_CHARS = 256

# /v1/images/edits: `image` (one file) or `image[]` (repeated; the SDK's list), and `mask`.
IMAGE = FileField("image", "images")
EDIT_FILE_FIELDS = {"image": IMAGE, "image[]": IMAGE,
                    "mask": FileField("mask", "masks", ReferenceRole.MASK, ("image/png",), 1)}


@dataclass(frozen=True)
class OpenAIRequest:
    generation: GenerationInput
    response_format: str  # b64_json | url
    stream: bool


def _choice(fields: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}", param=name)
    return value.strip().lower()


def _bounded_int(fields: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}", param=name)
    return value


def _flag(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name)
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
        return value.strip().lower() in ("true", "1")
    raise InvalidRequest(f"{name} must be true or false", param=name)


def translate(fields: dict[str, Any], catalog: Catalog, *, images: int = 0,
              edit: bool = False) -> OpenAIRequest:
    """Check OpenAI's fields (unknown ones are ignored) and map them onto ours."""
    model = fields.get("model")
    if model is None or model == "":
        model = catalog.models()[0].id  # OpenAI's default: the catalog's first model
    quality = fields.get("quality")
    known = catalog.get(model) if isinstance(model, str) else None
    if known is not None and quality is not None and quality not in known.render_qualities:
        raise InvalidRequest(f"quality {quality!r} must be one of: "
                             f"{', '.join(known.render_qualities)}", param="quality")
    response_format = _choice(fields, "response_format", RESPONSE_FORMATS) or "b64_json"
    stream = _flag(fields, "stream")
    options: dict[str, Any] = {}
    for name, choices in CHOICES.items():
        if name == "input_fidelity" and not edit:
            continue
        if (choice := _choice(fields, name, choices)) is not None:
            options[name] = choice
    if (compression := _bounded_int(fields, "output_compression", 0, 100)) is not None:
        options["output_compression"] = compression
    user = fields.get("user")
    if user is not None:
        if not isinstance(user, str) or len(user) > MAX_USER_CHARS:
            raise InvalidRequest(f"user must be a string of at most {MAX_USER_CHARS} characters",
                                 param="user")
        options["user"] = user
    partial_images = _bounded_int(fields, "partial_images", 0, MAX_PARTIAL_IMAGES) or 0
    if stream and partial_images:
        options["partial_images"] = partial_images
    if edit and images == 0:
        raise InvalidRequest("image is required: one file as image, or several as image[]",
                             param="image")
    if known is not None and images > known.reference_image_limit:
        raise InvalidRequest(f"at most {known.reference_image_limit} images for {known.id}",
                             param="image")
    ours = {"model": model, "prompt": fields.get("prompt"), "n": fields.get("n"),
            "size": fields.get("size"), "quality": quality,
            "output_format": fields.get("output_format"),
            "webhook_url": fields.get("webhook_url"),
            "webhook_events": fields.get("webhook_events")}
    generation = parse_input({k: v for k, v in ours.items() if v is not None}, catalog,
                             reference_count=images)
    return OpenAIRequest(generation=replace(generation, options=options),
                         response_format=response_format, stream=stream)

"""The generation object of the contract (section 7), built from the rows."""

from typing import Any

from app.models import Generation, GenerationImage
from app.schemas import iso
from app.storage import Storage

FINAL_STATUSES = ("succeeded", "failed")


def poll_url(base_url: str, generation_id: str) -> str:
    return f"{base_url}/api/v1/generations/{generation_id}"


def final_charge(generation: Generation) -> int:
    """usage.credits: what the generation finally costs; 0 until it has succeeded."""
    if generation.status != "succeeded":
        return 0
    return generation.credits_requested - generation.credits_refunded


def generation_body(generation: Generation, images: list[GenerationImage], *, storage: Storage,
                    base_url: str) -> dict[str, Any]:
    error = None
    if generation.status == "failed":
        error = {"message": generation.error_message or "generation failed",
                 "code": generation.error_code or "generationFailed"}
    return {
        "object": "image_generation",
        "id": generation.id,
        "status": generation.status,
        "model": generation.model,
        "prompt": generation.prompt,
        "size": generation.size,
        "aspect_ratio": generation.aspect_ratio,
        "quality": generation.quality,
        "n": generation.n,
        "created_at": iso(generation.created_at),
        "completed_at": iso(generation.completed_at),
        "images": [{
            "id": image.id,
            "object": "image",
            "url": storage.url(image.storage_key),  # presigned URLs are fresh on every read
            "width": image.width,
            "height": image.height,
            "content_type": image.content_type,
            "created_at": iso(image.created_at),
        } for image in sorted(images, key=lambda i: i.index)],
        "usage": {"credits": final_charge(generation),
                  "credits_requested": generation.credits_requested},
        "poll_url": poll_url(base_url, generation.id),
        "error": error,
    }

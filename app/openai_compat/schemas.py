"""OpenAI's shapes: the model objects, and (for the document) the images answer."""

from typing import Any, Literal

from pydantic import BaseModel

MODELS_CREATED = 1777507200  # 2026-04-30, the catalog's epoch: OpenAI's `created` of a model


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = MODELS_CREATED
    owned_by: str


class ModelObjectList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    """What a 200 holds (written out as it streams, so never whole in memory)."""

    created: int
    data: list[ImageData]
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    usage: dict[str, Any] | None = None

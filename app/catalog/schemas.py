"""A catalog model: the entry of the operator's catalog file and the object GET /models returns,
validated by this one class (unknown fields refused, every rule checked at load)."""

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.catalog.sizes import TIERS, CatalogError, size_for

Tier = Literal["1K", "2K", "4K"]
Text = Annotated[str, Field(min_length=1, strict=True)]
Count = Annotated[int, Field(strict=True)]


def _distinct(items: list[str]) -> list[str]:
    if len(set(items)) != len(items):
        raise ValueError("must list distinct strings")
    return items


Names = Annotated[list[Text], Field(min_length=1), AfterValidator(_distinct)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Text
    object: Literal["model"] = "model"
    name: Text
    provider: Text
    provider_model: Text
    aspect_ratios: Names
    qualities: Annotated[list[Tier], Field(min_length=1), AfterValidator(_distinct)]
    render_qualities: Names
    default_aspect_ratio: Text
    default_quality: Tier
    reference_image_limit: Annotated[Count, Field(ge=0)]
    max_images_per_request: Annotated[Count, Field(ge=1)]
    credits_per_image: dict[Tier, Annotated[Count, Field(gt=0)]]

    @model_validator(mode="after")
    def _consistent(self) -> "Model":
        """The rules that tie fields together; the prices are put in the order of `qualities`."""
        if set(self.qualities) & set(self.render_qualities):
            raise ValueError("tier names in 'render_qualities'")
        for tier in self.credits_per_image:
            if tier not in self.qualities:
                raise ValueError(f"'credits_per_image' has tier {tier!r}, not in 'qualities'")
        for tier in self.qualities:
            if tier not in self.credits_per_image:
                raise ValueError(f"'credits_per_image' has no price for tier {tier!r}")
        self.credits_per_image = {tier: self.credits_per_image[tier] for tier in self.qualities}
        for ratio in self.aspect_ratios:
            try:
                for tier in self.qualities:
                    size_for(ratio, tier)
            except CatalogError as exc:
                raise ValueError(f"aspect ratio {ratio!r}: {exc.message}") from None
        if self.default_aspect_ratio not in self.aspect_ratios:
            raise ValueError("'default_aspect_ratio' must be one of 'aspect_ratios'")
        if self.default_quality not in self.qualities:
            raise ValueError("'default_quality' must be one of 'qualities'")
        return self


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


__all__ = ["TIERS", "Model", "ModelList", "Tier"]

"""Response shapes (Pydantic), separate from the ORM tables."""

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and Z, as the contract writes timestamps."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class ErrorDetail(BaseModel):
    message: str
    code: str
    model_config = {"extra": "allow"}


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    provider: str
    provider_model: str
    aspect_ratios: list[str]
    qualities: list[str]
    render_qualities: list[str]
    default_aspect_ratio: str
    default_quality: str
    reference_image_limit: int
    max_images_per_request: int
    credits_per_image: dict[str, int]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class NextExpiration(BaseModel):
    credits: int
    expires_at: str


class CreditBalance(BaseModel):
    object: Literal["credit_balance"] = "credit_balance"
    credits: int
    account_type: str
    next_expiration: NextExpiration | None


def balance_body(balance: Any) -> dict[str, Any]:
    upcoming = balance.next_expiration
    return {
        "credits": balance.credits,
        "account_type": balance.account_type,
        "next_expiration": None if upcoming is None else {
            "credits": upcoming.credits, "expires_at": iso(upcoming.expires_at)},
    }

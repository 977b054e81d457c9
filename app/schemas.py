"""Shapes every domain's schemas share: the error envelope and the contract's timestamps."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainSerializer, WithJsonSchema


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and Z, as the contract writes timestamps."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


# A datetime in a response: always written as 2026-04-30T08:00:00.000Z.
Timestamp = Annotated[
    datetime,
    PlainSerializer(iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time",
                    "example": "2026-04-30T08:00:00.000Z"}),
]


class Schema(BaseModel):
    """Base of response models: built from our own values, so attributes are read as given."""

    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(BaseModel):
    message: str
    code: str
    model_config = ConfigDict(extra="allow")


class ErrorResponse(BaseModel):
    error: ErrorDetail

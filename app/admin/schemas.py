"""What the admin API answers and takes (section 13)."""

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from app.admin.usage import Figures
from app.credits.schemas import Balance
from app.keys.schemas import ApiKeyInfo
from app.models import ApiKey, CreditGrant, LimitReset, User, UserRole
from app.openapi import error_doc
from app.schemas import Schema, Timestamp

LIMIT = 1_000_000_000


class AdminUser(Schema):
    object: Literal["user"] = "user"
    id: str
    email: str
    role: UserRole
    account_type: str
    has_password: bool
    created_at: Timestamp
    disabled_at: Timestamp | None
    balance: Balance

    @classmethod
    def of(cls, user: User, balance: Balance, **extra: Any) -> Self:
        return cls(id=user.id, email=user.email, role=user.role,
                   account_type=user.account_type, has_password=user.password_hash is not None,
                   created_at=user.created_at, disabled_at=user.disabled_at, balance=balance,
                   **extra)


class AdminKey(ApiKeyInfo):
    object: Literal["api_key"] = "api_key"
    user_id: str

    @classmethod
    def of_key(cls, key: ApiKey, now: datetime, *, spend: int = 0) -> Self:
        info = ApiKeyInfo.of(key, now, spend=spend)
        return cls(**info.model_dump(), user_id=key.user_id)


class NewAdminKey(AdminKey):
    key: str = Field(description="the raw key: shown this once, never stored")


class AdminUserDetail(AdminUser):
    keys: list[AdminKey]


class AdminUserList(Schema):
    object: Literal["list"] = "list"
    data: list[AdminUser]
    has_more: bool


class CreditGrantOut(Schema):
    object: Literal["credit_grant"] = "credit_grant"
    id: str
    user_id: str
    credits: int
    expires_at: Timestamp | None
    note: str | None
    created_at: Timestamp
    balance: Balance = Field(description="the user's balance now")

    @classmethod
    def of(cls, grant: CreditGrant, balance: Balance) -> Self:
        return cls(id=grant.id, user_id=grant.user_id, credits=grant.credits,
                   expires_at=grant.expires_at, note=grant.note, created_at=grant.created_at,
                   balance=balance)


class UsageFigures(BaseModel):
    generations: int
    succeeded: int
    failed: int
    canceled: int
    failure_rate: float = Field(description="failed / (succeeded + failed)")
    credits_charged: int
    credits_refunded: int
    credits_net: int
    avg_latency_s: float | None = Field(description="mean seconds from a succeeded "
                                                    "generation's start to its end")

    @classmethod
    def of(cls, figures: Figures, **extra: Any) -> Self:
        return cls(generations=figures.generations, succeeded=figures.succeeded,
                   failed=figures.failed, canceled=figures.canceled,
                   failure_rate=figures.failure_rate, credits_charged=figures.credits_charged,
                   credits_refunded=figures.credits_refunded, credits_net=figures.credits_net,
                   avg_latency_s=figures.avg_latency_s, **extra)


class DayUsage(UsageFigures):
    day: str = Field(description="YYYY-MM-DD (UTC)")


class ModelUsage(UsageFigures):
    model: str


class DayModelUsage(UsageFigures):
    day: str
    model: str


class UsageReport(Schema):
    object: Literal["usage"] = "usage"
    from_: Timestamp = Field(serialization_alias="from")
    to: Timestamp
    total: UsageFigures
    days: list[DayUsage]
    models: list[ModelUsage]
    rows: list[DayModelUsage]

    model_config = ConfigDict(populate_by_name=True)


# --- requests --------------------------------------------------------------------------------

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewUser(Strict):
    email: str = Field(min_length=3, max_length=320)
    password: str | None = Field(None, min_length=10, max_length=1024,
                                 description="for the console; none: the user cannot sign in "
                                             "until one is set")
    role: UserRole = UserRole.USER
    account_type: str = Field("FREE", min_length=1, max_length=32)
    credits: int = Field(0, ge=0, le=LIMIT, description="a first grant")


class NewGrant(Strict):
    credits: int = Field(ge=1, le=LIMIT)
    expires_at: datetime | None = Field(None, description="when this grant expires")
    note: str | None = Field(None, max_length=1000)


class NewKey(Strict):
    name: str | None = Field(None, max_length=200)
    expires_at: datetime | None = None
    rate_limit: int | None = Field(None, ge=0, le=LIMIT)
    max_concurrency: int | None = Field(None, ge=0, le=LIMIT)
    credit_limit: int | None = Field(None, ge=0, le=LIMIT)
    limit_reset: LimitReset | None = None


ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc("invalid_request"),
    401: error_doc("missingApiKey, invalidApiKey or expiredApiKey"),
    403: error_doc("forbidden: the key's user is not an admin"),
    500: error_doc("internalError"),
    503: error_doc("serviceUnavailable"),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: error_doc("notFound")}

"""The balance, in the one shape every answer uses (GET /credits adds `object`)."""

from typing import Any, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from app.schemas import Schema, Timestamp


class NextExpiration(Schema):
    credits: int
    expires_at: Timestamp


class Balance(Schema):
    credits: int
    account_type: str
    next_expiration: NextExpiration | None


class CreditBalance(Balance):
    object: Literal["credit_balance"] = "credit_balance"

    @model_serializer(mode="wrap")
    def _object_first(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {"object": data.pop("object"), **data}


class CreditMovementOut(Schema):
    """One movement of the caller's credits, however many lots it touched."""

    object: Literal["credit_movement"] = "credit_movement"
    id: str
    kind: str
    credits: int
    balance_after: int
    generation_id: str | None
    note: str | None
    created_at: Timestamp


class CreditMovementList(Schema):
    object: Literal["list"] = "list"
    data: list[CreditMovementOut]
    has_more: bool

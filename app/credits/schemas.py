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

"""The OpenAPI document: FastAPI's, true to the contract (no 422, bearer auth), and the error
answers each route documents (response schemas import this module, the worker too: FastAPI
is loaded only to build the document)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.schemas import ErrorResponse

if TYPE_CHECKING:
    from fastapi import FastAPI

PUBLIC_PATHS_WITHOUT_KEY = {"/api/v1/models", "/v1/models", "/v1/models/{model_id}"}


def error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_doc("missingApiKey, invalidApiKey or expiredApiKey"),
    500: error_doc("internalError"),
    503: error_doc("serviceUnavailable"),
}


def contract_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, minus the 422 answers it documents but this API never gives (a
    validation error is a 400 in the error envelope), with bearer auth on every keyed route."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "an API key: gih_live_ + 32 characters"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                if path not in PUBLIC_PATHS_WITHOUT_KEY:
                    operation["security"] = [{"bearerAuth": []}]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema

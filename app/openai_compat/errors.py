"""Errors of the /v1 surface: the contract's envelope with OpenAI's `type` and `param`, and
`x-should-retry`, so that the official SDK's automatic retries (twice, on 408/409/429/5xx, with
no idempotency key) never charge again for work that is done or still running, and never
repeat a request that cannot succeed."""

from fastapi.responses import JSONResponse

from app.errors import error_body
from app.ops.error_handlers import Failure

TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_credits",
         403: "permission_error", 404: "invalid_request_error", 405: "invalid_request_error",
         409: "invalid_request_error", 429: "rate_limit_error"}
GENERATION_HEADER = "x-gih-generation-id"


def error_type(status: int) -> str:
    return "server_error" if status >= 500 else TYPES.get(status, "invalid_request_error")


def shape(failure: Failure) -> JSONResponse:
    extra = dict(failure.extra)
    param = extra.pop("param", None)
    body = error_body(failure.code, failure.message, type=error_type(failure.status),
                      param=param, **extra)
    headers = {**(failure.headers or {}),
               "x-should-retry": "true" if failure.retry else "false"}
    if isinstance(extra.get("generation_id"), str):
        headers[GENERATION_HEADER] = extra["generation_id"]
    return JSONResponse(body, status_code=failure.status, headers=headers)

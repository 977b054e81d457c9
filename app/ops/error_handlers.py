"""The contract's error envelope, for every route and every failure.

Every handler describes the failure as an `Failure` and `answer()` shapes it: the contract's
envelope by default, or the shape of the API surface the path belongs to (the OpenAI-compatible
`/v1` adds `type`, `param` and `x-should-retry`), registered with `register_surface()`.
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.errors import ApiError, ErrorCode, error_body, is_unavailable

log = logging.getLogger("gih.errors")


@dataclass
class Failure:
    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    retry: bool = False  # the same request could succeed if sent again, charged once


Shape = Callable[[Failure], JSONResponse]
SURFACES: list[tuple[str, Shape]] = []


def register_surface(prefix: str, shape: Shape) -> None:
    """Errors on paths under `prefix` are shaped by `shape`."""
    SURFACES[:] = [(p, s) for p, s in SURFACES if p != prefix] + [(prefix, shape)]


def envelope(failure: Failure) -> JSONResponse:
    return JSONResponse(error_body(failure.code, failure.message, **failure.extra),
                        status_code=failure.status, headers=failure.headers)


def answer(path: str, failure: Failure) -> JSONResponse:
    for prefix, shape in SURFACES:
        if path.startswith(prefix):
            return shape(failure)
    return envelope(failure)


def failure_of(exc: ApiError) -> Failure:
    return Failure(exc.status, exc.code, exc.message, exc.headers(), exc.extra, exc.retry)


def error_response(status: int, code: str, message: str, *,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The contract's envelope, for answers that are errors by design (e.g. /readyz)."""
    return envelope(Failure(status, code, message, headers, extra))


HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
              401: ErrorCode.MISSING_API_KEY}


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    return (f"{param}: {message}" if param else message), param


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(request.url.path, failure_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        extra: dict[str, Any] = {"param": param} if param else {}
        return answer(request.url.path,
                      Failure(400, ErrorCode.INVALID_REQUEST, message, extra=extra))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST)
        if exc.status_code >= 500:
            code = ErrorCode.INTERNAL_ERROR
        message = {404: "no such route", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail))
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405 and (methods := documented_methods(request)):
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return answer(request.url.path, Failure(exc.status_code, code, message, headers))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return crash_response(request.method, request.url.path, exc)


def documented_methods(request: Request) -> list[str] | None:
    """The methods the OpenAPI document gives this path (a path may have a route per method,
    and Starlette's 405 names only the first's); None for an undocumented path."""
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}/]+\}", "[^/]+", template), request.url.path):
            methods = {method.upper() for method in operations}
            return sorted(methods | ({"HEAD"} if "GET" in methods else set()))
    return None


def crash_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    """503 when a dependency is unreachable, else 500; never the internals."""
    if isinstance(exc, ClientDisconnect):  # nobody is listening; not a server error
        log.info("client disconnected during %s %s", method, path)
        return answer(path, Failure(400, ErrorCode.INVALID_REQUEST,
                                    "the client disconnected mid-request"))
    if is_unavailable(exc):
        log.warning("dependency unavailable on %s %s: %r", method, path, exc)
        return answer(path, Failure(503, ErrorCode.SERVICE_UNAVAILABLE,
                                    "a dependency is unavailable, retry later", retry=True))
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return answer(path, Failure(500, ErrorCode.INTERNAL_ERROR, "internal server error"))

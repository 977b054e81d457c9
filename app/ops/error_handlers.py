"""The contract's error envelope, for every route and every failure."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.errors import ApiError, ErrorCode, error_body, is_unavailable

log = logging.getLogger("gih.errors")


def error_response(status: int, code: str, message: str, *,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


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
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers(),
                              **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        extra: dict[str, Any] = {"param": param} if param else {}
        return error_response(400, ErrorCode.INVALID_REQUEST, message, **extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST)
        if exc.status_code >= 500:
            code = ErrorCode.INTERNAL_ERROR
        message = {404: "no such route", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return crash_response(request.method, request.url.path, exc)


def crash_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    """503 when a dependency is unreachable, else 500; never the internals."""
    if isinstance(exc, ClientDisconnect):  # nobody is listening; not a server error
        log.info("client disconnected during %s %s", method, path)
        return error_response(400, ErrorCode.INVALID_REQUEST,
                              "the client disconnected mid-request")
    if is_unavailable(exc):
        log.warning("dependency unavailable on %s %s: %r", method, path, exc)
        return error_response(503, ErrorCode.SERVICE_UNAVAILABLE,
                              "a dependency is unavailable, retry later")
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return error_response(500, ErrorCode.INTERNAL_ERROR, "internal server error")

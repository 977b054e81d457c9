"""The errors of the contract, as exceptions (no web framework here: the worker uses them
too). `app.error_handlers` turns them into responses."""

from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError


class ApiError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def headers(self) -> dict[str, str] | None:
        return None


class InvalidRequest(ApiError):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message, **({"param": param} if param else {}))


class AuthError(ApiError):
    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class InsufficientCredits(ApiError):
    status = 402
    code = "insufficientCredits"


class NotFound(ApiError):
    status = 404
    code = "notFound"


class IdempotencyConflict(ApiError):
    status = 409
    code = "idempotencyConflict"


class GenerationFailed(ApiError):
    status = 500
    code = "generationFailed"


class ServiceUnavailable(ApiError):
    status = 503
    code = "serviceUnavailable"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "code": code, **extra}}


def is_unavailable(exc: BaseException) -> bool:
    """A dependency we cannot reach, as opposed to a bug."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError | ConnectionError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OSError | TimeoutError):
        return True
    cause: BaseException | None = exc
    for _ in range(5):  # a driver error arrives wrapped by SQLAlchemy's adapter
        if cause is None:
            return False
        if type(cause).__name__ in UNAVAILABLE_NAMES:
            return True
        cause = cause.__cause__
    return False


UNAVAILABLE_NAMES = {"ConnectionDoesNotExistError", "CannotConnectNowError", "RedisError",
                     "ConnectionError", "TooManyConnectionsError"}

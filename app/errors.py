"""The errors of the contract (section 1), as exceptions with their HTTP status and code.

No web framework here: the worker and the CLI raise them too. `app.ops.error_handlers` turns
them into the error envelope.
"""

from enum import StrEnum
from typing import Any

import asyncpg
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    MISSING_API_KEY = "missingApiKey"
    INVALID_API_KEY = "invalidApiKey"
    EXPIRED_API_KEY = "expiredApiKey"
    INSUFFICIENT_CREDITS = "insufficientCredits"
    KEY_LIMIT_REACHED = "keyLimitReached"
    NOT_FOUND = "notFound"
    METHOD_NOT_ALLOWED = "methodNotAllowed"
    IDEMPOTENCY_CONFLICT = "idempotencyConflict"
    NOT_CANCELABLE = "notCancelable"
    RATE_LIMITED = "rateLimited"
    GENERATION_FAILED = "generationFailed"
    INTERNAL_ERROR = "internalError"
    SERVICE_UNAVAILABLE = "serviceUnavailable"
    GENERATION_PENDING = "generationPending"
    FORBIDDEN = "forbidden"
    # The CLI's, and the admin API's (POST /api/v1/admin/users with a known email).
    DUPLICATE_EMAIL = "duplicateEmail"


class ApiError(Exception):
    status = 400
    code = ErrorCode.INVALID_REQUEST
    # Whether the same request, sent again, could succeed without being charged twice (the
    # OpenAI-compatible API says so in x-should-retry).
    retry = False

    def __init__(self, message: str, *, retry: bool | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        if retry is not None:
            self.retry = retry

    def headers(self) -> dict[str, str] | None:
        return None


class InvalidRequest(ApiError):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        extra: dict[str, Any] = {"param": param} if param else {}
        super().__init__(message, **extra)


class AuthError(ApiError):
    status = 401

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class InsufficientCredits(ApiError):
    status = 402
    code = ErrorCode.INSUFFICIENT_CREDITS


class KeyLimitReached(ApiError):
    """The key's own credit limit for its period would be passed; nothing is charged."""

    status = 402
    code = ErrorCode.KEY_LIMIT_REACHED


class RateLimited(ApiError):
    """The key's request rate or concurrency limit is reached; nothing is charged."""

    status = 429
    code = ErrorCode.RATE_LIMITED
    retry = True

    def __init__(self, message: str, *, retry_after_s: int, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after_s = max(1, retry_after_s)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Forbidden(ApiError):
    """Authenticated, but not allowed (the admin API for anyone but an admin)."""

    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(ApiError):
    status = 404
    code = ErrorCode.NOT_FOUND


class MethodNotAllowed(ApiError):
    status = 405
    code = ErrorCode.METHOD_NOT_ALLOWED


class IdempotencyConflict(ApiError):
    status = 409
    code = ErrorCode.IDEMPOTENCY_CONFLICT


class NotCancelable(ApiError):
    status = 409
    code = ErrorCode.NOT_CANCELABLE


class DuplicateEmail(ApiError):
    status = 409
    code = ErrorCode.DUPLICATE_EMAIL


class GenerationFailed(ApiError):
    """The provider failed; the credits were refunded. Carries `generation_id`."""

    status = 500
    code = ErrorCode.GENERATION_FAILED


class ServiceUnavailable(ApiError):
    """A dependency is down; nothing is charged (or it was refunded)."""

    status = 503
    code = ErrorCode.SERVICE_UNAVAILABLE
    retry = True


class GenerationPending(ApiError):
    """/v1 only: the wait ended before the generation did; it goes on and is billed."""

    status = 504
    code = ErrorCode.GENERATION_PENDING


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "code": code, **extra}}


# A dependency we cannot reach, as opposed to a bug. asyncpg's errors arrive wrapped by
# SQLAlchemy's adapter (as the __cause__ of a DBAPIError, or on their own from pool code).
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError, ConnectionError, OSError,
               TimeoutError, RedisError, asyncpg.PostgresConnectionError,
               asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError)


def is_unavailable(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            return False
        if isinstance(cause, UNAVAILABLE):
            return True
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        cause = cause.__cause__
    return False

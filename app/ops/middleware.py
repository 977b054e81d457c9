"""Per-request bookkeeping, as pure ASGI: the request id (X-Request-ID), one JSON log line, HTTP
metrics, the error envelope for what escapes the handlers, and HEAD answered as GET."""

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops import metrics
from app.ops.error_handlers import crash_response
from app.ops.logs import request_id

log = logging.getLogger("gih.request")

VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEAD_FLAG = "gih.head_request"


def is_head_request(scope: Scope) -> bool:
    """A HEAD the router serves as GET (a response may then skip producing its body)."""
    return bool(scope.get(HEAD_FLAG))


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if VALID_REQUEST_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex


def note(scope_or_request: Any, **fields: str) -> None:
    """Attach fields (user_id, generation_id) to the request's log line."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    scope.setdefault("state", {}).setdefault("log_fields", {}).update(fields)


def add_headers(scope_or_request: Any, headers: dict[str, str]) -> None:
    """Headers for the request's answer, whatever it turns out to be (an error included),
    e.g. the x-ratelimit-* of a generation request."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    scope.setdefault("state", {}).setdefault("response_headers", {}).update(headers)


class Sender:
    """The `send` of a request inside RequestMiddleware: adds the request id and the headers
    asked for (`add_headers`), drops a HEAD's body, remembers the status. An object with slots
    rather than a closure and its cells: a waiting request holds it."""

    __slots__ = ("send", "scope", "header", "is_head", "status", "started")

    def __init__(self, send: Send, scope: Scope, rid: str, is_head: bool) -> None:
        self.send = send
        self.scope = scope
        self.header = (b"x-request-id", rid.encode())
        self.is_head = is_head
        self.status = 500
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
            extra = [(name.encode(), value.encode()) for name, value
                     in self.scope.get("state", {}).get("response_headers", {}).items()]
            message["headers"] = [*message.get("headers", []), self.header, *extra]
        elif self.is_head and message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await self.send(message)


class RequestMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "HEAD":  # every GET route answers HEAD: the same headers, no body
            scope = {**scope, "method": "GET", HEAD_FLAG: True}
        rid = incoming_request_id(scope)
        token = request_id.set(rid)
        started = time.perf_counter()
        sender = Sender(send, scope, rid, method == "HEAD")
        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            if sender.started:
                raise
            # Answer here rather than let the error reach the server, which would also drop
            # the client's keep-alive connection.
            await crash_response(scope["method"], scope["path"], exc)(scope, receive, sender)
        finally:
            elapsed = time.perf_counter() - started
            status = sender.status
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.http_requests.labels(method, route, str(status)).inc()
            metrics.http_latency.labels(method, route).observe(elapsed)
            fields = scope.get("state", {}).get("log_fields", {})
            log.info("%s %s %s", method, route, status, extra={
                "event": "request", "method": method, "path": scope["path"], "route": route,
                "status": status, "duration_ms": round(elapsed * 1000, 1), **fields})
            request_id.reset(token)

"""Routes answered ahead of FastAPI's router, as plain ASGI, for the hottest reads on PostgreSQL
(`Runtime.direct`): no dependency graph, no exit stacks, no response-model validation of what we
built ourselves. The FastAPI route of the same path stays (the OpenAPI document, and SQLite);
`tests/test_fast_routes.py` holds both to the same answers.

A handler takes the request's scope, its `receive` and the runtime and returns the JSON body of a
200 (or an `Answer`: its status, body and headers), or raises an `ApiError`, shaped here exactly
as FastAPI's handler shapes it. Anything else escapes to
`RequestMiddleware` (inside which this runs: request id, log line, metrics, HEAD as GET).

`FastRoutedApp` dispatches them before FastAPI's own middleware (its server-error, telemetry
and body-limit layers), which a waiting sync request would otherwise hold as frames.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.errors import ApiError
from app.ops.error_handlers import answer, failure_of
from app.ops.middleware import RequestMiddleware
from app.runtime import Runtime

JSON_HEADERS = (b"content-type", b"application/json")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # JSON
    headers: list[tuple[bytes, bytes]]  # after content-length and content-type, as FastAPI


Handler = Callable[[Scope, Receive, Runtime], Awaitable[bytes | Answer]]


@dataclass(frozen=True)
class FastRoute:
    path: str  # the route label of metrics and logs, as a Starlette route's `path`
    handler: Handler


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's first value (`name` in lower case), as Starlette reads it."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


class FastRoutes:
    """`routes` maps (method, path) to a handler; a path may end in one parameter,
    `/prefix/{name}`, matched as Starlette matches it (one segment, no `/`) and handed over in
    `scope["path_params"]`. Called (inside `RequestMiddleware`) with the route `route_for`
    found in `scope["route"]`."""

    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.exact: dict[tuple[str, str], FastRoute] = {}
        self.prefixed: list[tuple[str, str, str, FastRoute]] = []  # method, prefix, name
        for (method, path), handler in routes.items():
            route = FastRoute(path, handler)
            prefix, brace, name = path.partition("{")
            if brace:
                self.prefixed.append((method, prefix, name.removesuffix("}"), route))
            else:
                self.exact[(method, path)] = route

    def route_for(self, scope: Scope, runtime: Runtime | None) -> FastRoute | None:
        """The route of an HTTP request (a HEAD as its GET), on PostgreSQL only."""
        if runtime is None or runtime.direct is None:
            return None
        method, path = scope["method"], scope["path"]
        if method == "HEAD":
            method = "GET"
        route = self.exact.get((method, path))
        if route is not None:
            return route
        for route_method, prefix, name, route in self.prefixed:
            if method == route_method and path.startswith(prefix):
                value = path[len(prefix):]
                if value and "/" not in value:
                    scope["path_params"] = {name: value}
                    return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: FastRoute = scope["route"]
        try:
            result = await route.handler(scope, receive, scope["app"].state.runtime)
        except ApiError as exc:
            await answer(scope["path"], failure_of(exc))(scope, receive, send)
            return
        reply = result if isinstance(result, Answer) else Answer(200, result, [])
        await send({"type": "http.response.start", "status": reply.status, "headers": [
            (b"content-length", str(len(reply.body)).encode()), JSON_HEADERS, *reply.headers]})
        await send({"type": "http.response.body", "body": reply.body})


class FastRoutedApp(FastAPI):
    """FastAPI, with `fast_routes` answered ahead of it: inside `RequestMiddleware` only."""

    def __init__(self, *, fast_routes: dict[tuple[str, str], Handler], **options: Any) -> None:
        super().__init__(**options)
        self.fast_routes = FastRoutes(fast_routes)
        self.fast_stack = RequestMiddleware(self.fast_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.fast_routes.route_for(scope, getattr(self.state, "runtime", None))
            if route is not None:
                scope["app"] = self
                scope["route"] = route
                await self.fast_stack(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

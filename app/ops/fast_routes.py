"""Routes answered ahead of FastAPI's router, as plain ASGI, for the hottest reads on PostgreSQL
(`Runtime.direct`): no dependency graph, no exit stacks, no response-model validation of what we
built ourselves. The FastAPI route of the same path stays (the OpenAPI document, and SQLite);
`tests/test_fast_routes.py` holds both to the same answers.

A handler takes the request's scope, its `receive` and the runtime and returns the JSON body of a
200 (or an `Answer`: its status, body and headers), or raises an `ApiError`, shaped here exactly
as FastAPI's handler shapes it. Anything else escapes to
`RequestMiddleware` (inside which this runs: request id, log line, metrics, HEAD as GET).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ApiError
from app.ops.error_handlers import answer, failure_of
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
    `scope["path_params"]`."""

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], Handler]) -> None:
        self.app = app
        self.exact: dict[tuple[str, str], FastRoute] = {}
        self.prefixed: list[tuple[str, str, str, FastRoute]] = []  # method, prefix, name
        for (method, path), handler in routes.items():
            route = FastRoute(path, handler)
            prefix, brace, name = path.partition("{")
            if brace:
                self.prefixed.append((method, prefix, name.removesuffix("}"), route))
            else:
                self.exact[(method, path)] = route

    def match(self, scope: Scope) -> FastRoute | None:
        if scope["type"] != "http":
            return None
        method, path = scope["method"], scope["path"]
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
        route = self.match(scope)
        runtime: Runtime | None = (getattr(scope["app"].state, "runtime", None)
                                   if route is not None else None)
        if route is None or runtime is None or runtime.direct is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        try:
            result = await route.handler(scope, receive, runtime)
        except ApiError as exc:
            await answer(scope["path"], failure_of(exc))(scope, receive, send)
            return
        reply = result if isinstance(result, Answer) else Answer(200, result, [])
        await send({"type": "http.response.start", "status": reply.status, "headers": [
            (b"content-length", str(len(reply.body)).encode()), JSON_HEADERS, *reply.headers]})
        await send({"type": "http.response.body", "body": reply.body})

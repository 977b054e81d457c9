"""Liveness (/healthz: the process answers) and readiness (/readyz: its dependencies answer)."""

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.deps import RuntimeDep
from app.errors import ErrorCode
from app.ops import metrics
from app.ops.error_handlers import error_response
from app.runtime import Runtime

router = APIRouter(include_in_schema=False)

CHECK_TIMEOUT_S = 3.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _database(rt: Runtime) -> None:
    for last in (False, True):
        try:
            async with rt.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return
        except DBAPIError as exc:
            # A pooled connection had died (the pool is now renewed): ask once more, afresh.
            if last or not exc.connection_invalidated:
                raise


async def _check(name: str, probe: Awaitable[Any]) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
        return name, "ok"
    except TimeoutError:
        return name, f"timed out after {CHECK_TIMEOUT_S:.0f} s"
    except Exception as exc:  # any failure means not ready; say which
        return name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> JSONResponse:
    probes = [_check("database", _database(rt)), _check("storage", rt.storage.check())]
    if rt.settings.redis_url:
        probes.append(_check("redis", rt.queue.ping()))
    checks = dict(await asyncio.gather(*probes))
    failing = [name for name, result in checks.items() if result != "ok"]
    if failing:
        return error_response(503, ErrorCode.SERVICE_UNAVAILABLE,
                              f"not ready: {', '.join(failing)}", checks=checks, failing=failing)
    return JSONResponse({"status": "ok", "checks": checks})


@router.get("/metrics")
async def metrics_endpoint(rt: RuntimeDep) -> Response:
    extra = []
    try:
        depth = await asyncio.wait_for(rt.queue.depth(), CHECK_TIMEOUT_S)
        extra = ["# HELP gih_queue_depth Generation jobs waiting in the queue",
                 "# TYPE gih_queue_depth gauge", f"gih_queue_depth {depth}"]
    except Exception:  # the queue being down must not hide the other metrics
        pass
    body, content_type = metrics.render(extra)
    return Response(body, media_type=content_type)

"""The ASGI application: create_app() and its lifespan."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI

from app.admin import endpoints as admin
from app.catalog import endpoints as catalog
from app.config import Settings, get_settings
from app.console import endpoints as console
from app.credits import endpoints as credits
from app.generations import endpoints as generations
from app.generations.jobs import run_generation, sweep_forever
from app.openai_compat import endpoints as openai_compat
from app.openai_compat import errors as openai_errors
from app.openapi import contract_openapi
from app.ops import health, logs
from app.ops.error_handlers import install_handlers, register_surface
from app.ops.fast_routes import FastRoutedApp
from app.ops.middleware import RequestMiddleware
from app.runtime import close_runtime, open_runtime
from app.storage import endpoints as files
from app.webhooks import endpoints as webhooks

log = logging.getLogger("gih")


def describe_mode(settings: Settings) -> str:
    database = "SQLite" if settings.is_sqlite else "PostgreSQL"
    jobs = "Redis/arq" if settings.redis_url else "in-process jobs"
    mode = "embedded" if settings.embedded else "production"
    return (f"{mode} mode: {database}, {settings.storage} storage, {jobs}, "
            f"provider {settings.provider_name}")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.configure(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.check()
        rt = open_runtime(settings)
        app.state.runtime = rt
        log.info("GPT Image Hub serving in %s", describe_mode(settings))
        if settings.provider_name == "mock":
            log.warning("*** MOCK PROVIDER: images are placeholders, no real generation. "
                        "Set OPENAI_API_KEY (or GIH_PROVIDER=openai) for real images. ***")
        try:
            await rt.storage.check()  # creates the bucket when allowed
        except Exception as exc:
            log.warning("storage is not ready: %s", exc)
        await rt.queue.start(partial(run_generation, rt))
        background: list[asyncio.Task[Any]] = []
        if rt.queue.runs_jobs:  # embedded: this process is also the worker, and sweeps
            background.append(asyncio.create_task(sweep_forever(rt), name="gih-sweep"))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await close_runtime(rt)

    app = FastRoutedApp(
        fast_routes={
            ("GET", "/api/v1/credits"): credits.get_credits_fast,
            ("GET", "/api/v1/generations/{generation_id}"): generations.get_generation_fast,
            ("POST", "/api/v1/images/generations"): generations.create_generation_fast},
        title="GPT Image Hub",
        version="0.1.0",
        description="Credit-metered image generation API (OpenAI GPT Image models).",
        lifespan=lifespan,
        redirect_slashes=False,  # never a redirect built from the client's Host header
    )
    install_handlers(app)
    register_surface("/v1", openai_errors.shape)
    app.openapi = lambda: contract_openapi(app)  # type: ignore[method-assign]
    app.add_middleware(RequestMiddleware)
    for router in (catalog.router, credits.router, generations.router, openai_compat.router,
                   webhooks.router, files.router, health.router):
        app.include_router(router)
    app.include_router(admin.router)
    console.install(app)  # the web console at /: pages, static files, error pages
    return app

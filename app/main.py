"""The ASGI application: create_app() and its lifespan."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import api, files, health, logs
from app.config import Settings, get_settings
from app.error_handlers import install_handlers
from app.generations import endpoints as generations
from app.generations.jobs import run_generation, sweep_forever
from app.jobs import InProcessQueue
from app.middleware import RequestMiddleware
from app.runtime import close_runtime, open_runtime

log = logging.getLogger("gih")


def describe_mode(settings: Settings) -> str:
    database = "SQLite" if settings.is_sqlite else "PostgreSQL"
    jobs = "Redis/arq" if settings.redis_url else "in-process jobs"
    mode = "embedded" if settings.embedded else "production"
    return (f"{mode} mode: {database}, {settings.storage} storage, {jobs}, "
            f"provider {settings.provider_name}")


def contract_openapi(app: FastAPI) -> dict:
    """FastAPI's schema, minus the 422 answers it documents but this API never gives (a
    validation error is a 400 in the error envelope)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "an API key: gih_live_ + 32 characters"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                if path != "/api/v1/models":
                    operation["security"] = [{"bearerAuth": []}]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.configure(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.check()
        rt = open_runtime(settings)
        app.state.runtime = rt
        app.state.settings = settings
        app.state.sessionmaker = rt.sessionmaker
        app.state.reader = rt.reader
        app.state.key_secret = rt.secret
        app.state.catalog = rt.catalog
        log.info("GPT Image Hub serving in %s", describe_mode(settings))
        if settings.provider_name == "mock":
            log.warning("*** MOCK PROVIDER: images are placeholders, no real generation. "
                        "Set OPENAI_API_KEY (or GIH_PROVIDER=openai) for real images. ***")
        try:
            await rt.storage.check()  # creates the bucket when allowed
        except Exception as exc:
            log.warning("storage is not ready: %s", exc)
        background = []
        await rt.queue.start()
        if isinstance(rt.queue, InProcessQueue):
            # Embedded: this process is also the worker, and sweeps what a crash left behind.
            rt.queue.runner = lambda gen_id, attempt: run_generation(rt, gen_id, attempt)
            background.append(asyncio.create_task(sweep_forever(rt), name="gih-sweep"))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await close_runtime(rt, grace_s=settings.shutdown_grace_s)

    app = FastAPI(
        title="GPT Image Hub",
        version="0.1.0",
        description="Credit-metered image generation API (OpenAI GPT Image models).",
        lifespan=lifespan,
    )
    install_handlers(app)
    app.openapi = lambda: contract_openapi(app)  # type: ignore[method-assign]
    app.add_middleware(RequestMiddleware)
    app.include_router(api.router)
    app.include_router(generations.router)
    app.include_router(files.router)
    app.include_router(health.router)
    return app

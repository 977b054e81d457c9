"""The ASGI application: create_app() and its lifespan."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import api
from app.catalog import load_catalog
from app.config import Settings, get_settings
from app.db import create_engine, create_sessionmaker
from app.errors import install_handlers

log = logging.getLogger("gih")


def describe_mode(settings: Settings) -> str:
    database = "SQLite" if settings.is_sqlite else "PostgreSQL"
    jobs = "Redis/arq" if settings.redis_url else "in-process jobs"
    mode = "embedded" if settings.embedded else "production"
    return (f"{mode} mode: {database}, {settings.storage} storage, {jobs}, "
            f"provider {settings.provider_name}")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.check()
        engine = create_engine(settings)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.key_secret = settings.hashing_secret()
        app.state.catalog = load_catalog(settings.catalog_path)
        log.info("GPT Image Hub serving in %s", describe_mode(settings))
        if settings.provider_name == "mock":
            log.warning("*** MOCK PROVIDER: images are placeholders, no real generation. "
                        "Set OPENAI_API_KEY (or GIH_PROVIDER=openai) for real images. ***")
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="GPT Image Hub",
        version="0.1.0",
        description="Credit-metered image generation API (OpenAI GPT Image models).",
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(api.router)
    return app

"""Builds the FastAPI application; `uvicorn mailsync.api.app:create_app --factory` serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mailsync import __version__
from mailsync.api import errors
from mailsync.api.middleware import (
    BodyLimitMiddleware,
    RateLimitMiddleware,
    RequestIdMiddleware,
    UnhandledErrorMiddleware,
)
from mailsync.api.routes import health, sync, webhooks
from mailsync.jobs import Orchestrator
from mailsync.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None, orchestrator: Orchestrator | None = None
) -> FastAPI:
    settings = settings or get_settings()
    orchestrator = orchestrator or Orchestrator(
        settings.resolved_prefect_api_url, settings=settings
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        orchestrator.close()

    app = FastAPI(
        title="mailsync",
        version=__version__,
        description="Trigger and follow syncs of a workspace's Gmail and Microsoft 365 mailboxes.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.orchestrator = orchestrator
    app.state.limits = orchestrator.limits  # the request quotas (ratelimit.py)
    errors.install(app)
    app.include_router(sync.router)
    app.include_router(health.router)
    app.include_router(webhooks.router)
    # Added last = outermost: the request id exists before anything can fail, so even the
    # rate limiter's 429s carry it; the rate limiter is outside the body cap, so an
    # over-quota client is refused before its body is read and 413s carry the figures.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(RateLimitMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app

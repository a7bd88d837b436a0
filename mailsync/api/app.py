"""Builds the FastAPI application; `uvicorn mailsync.api.app:create_app --factory` serves it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI

from mailsync import __version__
from mailsync.api import errors
from mailsync.api.middleware import (
    ArrivalMeterMiddleware,
    BodyLimitMiddleware,
    HeaderLimitMiddleware,
    RateLimitMiddleware,
    RequestIdMiddleware,
    UnhandledErrorMiddleware,
)
from mailsync.api.openapi import document_limits
from mailsync.api.overload import Gates, OverloadMiddleware
from mailsync.api.routes import health, mailboxes, messages, oauth, push, sync, webhooks
from mailsync.core.rules.token_buckets import TokenBuckets
from mailsync.db.tables import utcnow
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None,
    orchestrator: Orchestrator | None = None,
    clock: Callable[[], float] = time.time,
    now: Callable[[], datetime] = utcnow,
) -> FastAPI:
    """The app; `clock` (epoch seconds) drives the general request quotas (ratelimit.py),
    `now` the time rules of mailboxes and consent flows (a state's 10 minutes, lag_seconds)."""
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
    app.state.now = now
    app.state.orchestrator = orchestrator
    app.state.request_quotas = TokenBuckets(clock)  # the general request quotas (ratelimit.py)
    app.state.overload = gates = Gates.from_settings(settings)  # overload.py
    errors.install(app)
    app.include_router(sync.router)
    app.include_router(messages.router)
    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(oauth.router)  # before mailboxes: /connect is no {mailbox_id}
    app.include_router(mailboxes.router)
    app.include_router(push.router)
    # Added last = outermost. From the outside in:
    # - the request id exists before anything can fail, so every refusal below carries it;
    # - oversized heads (431) are refused before any work;
    # - every request is counted against its address's arrival quota before it may hold an
    #   overload slot (429), whatever its headers;
    # - load shedding (503) comes before anything reads the body or asks the database or
    #   Prefect, so a shed request costs nothing and counts nowhere;
    # - the rate limiter is outside the body limits, so an over-quota client is refused
    #   before its body is read, and 413s and 408s carry the figures;
    # - unexpected errors become the 500 envelope inside all of them.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(
        BodyLimitMiddleware, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
    app.add_middleware(RateLimitMiddleware)
    app.add_middleware(OverloadMiddleware, gates=gates)
    app.add_middleware(ArrivalMeterMiddleware)
    app.add_middleware(
        HeaderLimitMiddleware,
        max_bytes=settings.max_header_bytes,
        max_count=settings.max_header_count,
    )
    app.add_middleware(RequestIdMiddleware)
    document_limits(app, settings)
    return app

"""The API as served, plus one bare FastAPI endpoint doing a single database insert.

The trigger benchmark compares `POST /v1/email/sync` with `POST /bare/insert` on the same
server process: the bare route sits on an outer app with no middleware, so it measures what
FastAPI, uvicorn and one SQLite insert cost by themselves.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlmodel import Session

from mailsync.api.app import create_app as create_api
from mailsync.db import get_engine
from mailsync.db.tables import IdempotencyRecord, new_id, utcnow
from mailsync.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    api = create_api(settings)
    outer = FastAPI(lifespan=api.router.lifespan_context)
    engine = get_engine(settings.resolved_database_url)

    @outer.post("/bare/insert", status_code=201)
    def insert() -> dict[str, str]:
        key = new_id("bare")
        row = IdempotencyRecord(
            workspace_id="bench", key=key, request_hash="-", expires_at=utcnow()
        )
        with Session(engine) as session:
            session.add(row)
            session.commit()
        return {"key": key}

    outer.mount("/", api)
    return outer

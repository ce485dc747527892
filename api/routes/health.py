"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.db.migrate import current_revision, head_revision
from api.deps import ContextDep
from api.schemas import Health, Readiness
from tuner.storage.rdb import display_url

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="the process answers")
def health() -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, summary="the database answers and its schema is current", responses={503: {"model": Readiness, "description": "not ready: the database does not answer or its schema is not current"}})
def ready(ctx: ContextDep) -> JSONResponse:
    url = display_url(ctx.settings.storage)
    try:
        revision = current_revision(ctx.settings.storage)
    except Exception as exc:  # any driver error means: not ready
        body = Readiness(ready=False, database=url, schema_revision=None, detail=f"database unreachable: {type(exc).__name__}")
        return JSONResponse(body.model_dump(), status_code=503)
    ok = revision == head_revision()
    detail = None if ok else f"schema revision {revision}, need {head_revision()}: run `tuner db upgrade`"
    return JSONResponse(Readiness(ready=ok, database=url, schema_revision=revision, detail=detail).model_dump(), status_code=200 if ok else 503)

"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.context import ServiceContext
from api.db.migrate import current_revision, head_revision
from api.deps import ContextDep, optional_principal
from api.schemas import Health, Readiness
from tuner.storage.rdb import display_url

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="the process answers")
def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Readiness,
    summary="the database answers and its schema is current (details for admin tokens only)",
    responses={503: {"model": Readiness, "description": "not ready: the database does not answer or its schema is not current"}},
)
async def ready(request: Request, ctx: ContextDep) -> JSONResponse:
    # Anonymous callers (load balancers) learn up or down, nothing else: the database URL,
    # revision and error would tell an attacker what runs here. An admin token sees them.
    principal = await optional_principal(request, ctx)
    details = principal is not None and principal.is_admin
    body, status = await run_in_threadpool(_readiness, ctx)
    if not details:
        body = Readiness(ready=body.ready)
    return JSONResponse(body.model_dump(exclude_none=not details), status_code=status)


def _readiness(ctx: ServiceContext) -> tuple[Readiness, int]:
    url = display_url(ctx.settings.storage)
    try:
        revision = current_revision(ctx.settings.storage)
    except Exception as exc:  # any driver error means: not ready
        return Readiness(ready=False, database=url, schema_revision=None, detail=f"database unreachable: {type(exc).__name__}"), 503
    ok = revision == head_revision()
    detail = None if ok else f"schema revision {revision}, need {head_revision()}: run `tuner db upgrade`"
    return Readiness(ready=ok, database=url, schema_revision=revision, detail=detail), 200 if ok else 503

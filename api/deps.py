"""FastAPI dependencies as named types (`SessionDep`, `WriterDep`, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import Principal
from api.context import ServiceContext
from api.problems import ApiProblem
from api.settings import Settings
from tuner.errors import FieldProblem


async def get_context(request: Request) -> ServiceContext:
    # async: FastAPI runs plain `def` dependencies on a worker thread, a hop per request
    return request.app.state.ctx


ContextDep = Annotated[ServiceContext, Depends(get_context)]


def get_settings(ctx: ContextDep) -> Settings:
    return ctx.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    session = ctx.sessions()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(detail: str, fix: str) -> ApiProblem:
    return ApiProblem(
        401,
        "Unauthorized",
        detail,
        [FieldProblem("Authorization", None, detail, fix)],
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _principal(request: Request, ctx: ServiceContext) -> Principal | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("the Authorization header is not 'Bearer <token>'", "send 'Authorization: Bearer <token>'")
    token = token.strip()
    # A cached token is checked on the event loop; only a cache miss reads the database.
    principal = ctx.tokens.cached(token)
    if principal is None:
        principal = await run_in_threadpool(ctx.tokens.verify, token)
    if principal is None:
        raise _unauthorized("the bearer token is unknown or revoked", "create one with `tuner token create --name NAME`")
    return principal


async def require_writer(request: Request, ctx: ContextDep) -> Principal:
    """Every mutating endpoint: a valid bearer token is required."""
    principal = await _principal(request, ctx)
    if principal is None:
        raise _unauthorized("this endpoint changes data and needs a bearer token", "create one with `tuner token create --name NAME` and send 'Authorization: Bearer <token>'")
    return principal


async def require_reader(request: Request, ctx: ContextDep) -> Principal | None:
    """Read endpoints: a token only when the server is configured with read_requires_token."""
    principal = await _principal(request, ctx)
    if principal is None and ctx.settings.read_requires_token:
        raise _unauthorized("this server requires a bearer token for reads too", "send 'Authorization: Bearer <token>'")
    return principal


WriterDep = Annotated[Principal, Depends(require_writer)]
ReaderDep = Annotated[Principal | None, Depends(require_reader)]


class PageParams:
    def __init__(self, offset: int, limit: int) -> None:
        self.offset = offset
        self.limit = limit


def get_page(
    ctx: ContextDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> PageParams:
    settings = ctx.settings
    if limit is None:
        limit = min(settings.default_page_size, settings.max_page_size)
    if limit > settings.max_page_size:
        raise ApiProblem(
            422,
            "Invalid input",
            f"limit={limit} is above the page size limit",
            [FieldProblem("limit", limit, f"is above the page size limit {settings.max_page_size}", f"use limit <= {settings.max_page_size} and page with offset")],
        )
    return PageParams(offset, limit)


PageDep = Annotated[PageParams, Depends(get_page)]

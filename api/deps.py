"""FastAPI dependencies as named types (`SessionDep`, `WriterDep`, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.access import Scope, format_scopes
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


def _forbidden(field: str, value: object, detail: str, fix: str) -> ApiProblem:
    return ApiProblem(403, "Forbidden", detail, [FieldProblem(field, value, detail, fix)])


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


async def optional_principal(request: Request, ctx: ServiceContext) -> Principal | None:
    """The caller's principal, or None for no token or a bad one (for public endpoints that
    show more to some callers, such as /ready; they never refuse anyone)."""
    try:
        return await _principal(request, ctx)
    except ApiProblem:
        return None


def _owner_of(ctx: ServiceContext, name: str) -> tuple[bool, str | None]:
    """(the study exists, its owner). A study only in Optuna's tables (the CLI's) gets a row
    with no owner when first listed, so it exists and has none."""
    from api.repositories import studies as repo

    with ctx.sessions() as session:
        row = repo.get_by_name(session, name)
        if row is not None:
            return True, row.created_by
        return name in repo.optuna_study_names(session), None


async def authorize(request: Request, ctx: ContextDep) -> Principal | None:
    """Every route's access check, from its rule in `api.access.ROUTE_RULES`.

    Installed on every router (api.main), so no route can lack it; routes that need the
    caller declare `AuthDep`, which FastAPI answers from this same call. Order: a route
    without a rule is refused; a public route never looks at the token; a presented token
    must be valid (401); a missing token is 401 unless the route is a read on a server that
    allows anonymous reads; then the scope (403), then study ownership (403).
    """
    # FastAPI registers no HEAD for GET routes (HEAD answers 405 before this runs)
    rule = request.app.state.route_rules.get((request.method, request.scope["route"].endpoint))
    if rule is None:  # create_app refuses such routes; a route added after start-up lands here
        raise _forbidden("route", f"{request.method} {request.url.path}", "has no access rule", "add it to api.access.ROUTE_RULES")
    if rule.scope is None:
        return None
    principal = await _principal(request, ctx)
    if rule.scope is Scope.READ and not ctx.settings.read_requires_token:
        return principal  # reads are open on this server: any caller, valid token or none
    if principal is None:
        raise _unauthorized(
            f"this endpoint needs a bearer token with scope {rule.scope.value}",
            f"create one with `tuner token create --name NAME --scope {rule.scope.value}` and send 'Authorization: Bearer <token>'",
        )
    if not principal.has(rule.scope):
        raise _forbidden(
            "scope",
            format_scopes(principal.scopes),
            f"token {principal.token_name!r} lacks scope {rule.scope.value}",
            f"use a token with scope {rule.scope.value} (`tuner token create --name NAME --scope {rule.scope.value}`)",
        )
    if rule.owned and not principal.is_admin:
        name = request.path_params["name"]  # every owned route is /.../{name}...; a KeyError would be a table error
        exists, owner = await run_in_threadpool(_owner_of, ctx, name)
        if exists and owner != principal.owner:
            whose = f"owner {owner!r}" if owner is not None else "no owner (created before owners were recorded, or outside the service)"
            raise _forbidden(
                "name",
                name,
                f"study {name!r} has {whose}; token {principal.token_name!r} acts for {principal.owner!r}",
                "use a token of the study's owner, or an admin token",
            )
    return principal


async def require_principal(principal: Annotated[Principal | None, Depends(authorize)]) -> Principal:
    """The caller of a route whose rule needs a token (never None there; checked anyway)."""
    if principal is None:
        raise _unauthorized("this endpoint needs a bearer token", "send 'Authorization: Bearer <token>'")
    return principal


#: The caller, for routes that need it. Either name runs `authorize` (cached per request,
#: so once even with the router-level install); what a route may do comes from its rule in
#: api.access.ROUTE_RULES, never from which of the two it declares.
#: ReaderDep: None for an anonymous read. WriterDep: routes whose rule needs a token.
ReaderDep = Annotated[Principal | None, Depends(authorize)]
WriterDep = Annotated[Principal, Depends(require_principal)]

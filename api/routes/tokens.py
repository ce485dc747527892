"""/api/v1/tokens: list, create and revoke bearer tokens (admin scope; api.access).

A revocation here takes effect at once on this server (its token cache is evicted in the
same request) and within `token_cache_s` on every other server of the same database.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.access import DEFAULT_SCOPES, Scope
from api.auth import create_token, list_tokens, revoke_token
from api.deps import ContextDep, SessionDep, WriterDep
from api.problems import not_found, problem_responses

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=problem_responses(401, 403, 422, 503))


class TokenRead(BaseModel):
    name: str
    owner: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None


class TokenCreate(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    scopes: list[Scope] = Field(default_factory=lambda: sorted(DEFAULT_SCOPES), min_length=1)
    owner: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="default: the token's name")


class TokenCreated(TokenRead):
    token: str = Field(description="the bearer token: shown once, never stored")


@router.get("", response_model=list[TokenRead], summary="every token (never the token itself)")
def tokens(session: SessionDep, _: WriterDep) -> list[TokenRead]:
    return [TokenRead(name=t.name, owner=t.owner, scopes=sorted(t.scopes), created_at=t.created_at, revoked_at=t.revoked_at) for t in list_tokens(session)]


@router.post("", response_model=TokenCreated, status_code=201, responses=problem_responses(400, 413), summary="create a token; the answer shows it once")
def create(body: TokenCreate, session: SessionDep, _: WriterDep) -> TokenCreated:
    token = create_token(session, body.name, set(body.scopes), body.owner)
    session.commit()
    info = next(t for t in list_tokens(session) if t.name == body.name)
    return TokenCreated(name=info.name, owner=info.owner, scopes=sorted(info.scopes), created_at=info.created_at, revoked_at=None, token=token)


@router.delete("/{name}", status_code=204, responses=problem_responses(404), summary="revoke a token: at once here, within token_cache_s elsewhere")
def revoke(name: str, ctx: ContextDep, session: SessionDep, _: WriterDep) -> Response:
    if not revoke_token(session, name):
        raise not_found("name", name, "active token", "list tokens with GET /api/v1/tokens")
    session.commit()
    ctx.tokens.evict(name)
    return Response(status_code=204)

"""Bearer tokens: created by `tuner token create`, stored as sha256 hashes, checked per request.

Tokens are 256-bit random strings, so a plain (unsalted) sha256 is enough: there is
nothing to brute-force, and a hash lookup keeps verification one indexed query. Verified
tokens are cached for `token_cache_s` (default 5 s) so the ask/tell hot path does not hit
the database. Revocation: the server that revokes a token (DELETE /api/v1/tokens/{name})
evicts it from its cache at once; every other server (and every server, after
`tuner token revoke`, which only writes the database) stops accepting it at most
`token_cache_s` after the revoking commit, when its cache entry expires.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.access import DEFAULT_SCOPES, Scope, format_scopes, parse_scopes
from api.db.models import ApiTokenRow, utcnow
from tuner.errors import FieldProblem, ValidationError

TOKEN_PREFIX = "tnr_"
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's name, its owner (who owns the studies it creates) and
    its scopes."""

    token_name: str
    owner: str
    scopes: frozenset[Scope]

    def has(self, scope: Scope) -> bool:
        """Whether the token may act with `scope`; admin implies every scope."""
        return scope in self.scopes or Scope.ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes


@dataclass(frozen=True)
class TokenInfo:
    """A stored token as `tuner token list` and GET /api/v1/tokens show it (never the token)."""

    name: str
    owner: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None


def _check_name(field: str, value: str | None) -> None:
    if not re.match(TOKEN_NAME_PATTERN, value or ""):
        raise ValidationError(FieldProblem(field, value, f"is not a valid {field}", "use 1-64 letters, digits, '_', '-' or '.'"))


def create_token(
    session: Session, name: str, scopes: Iterable[Scope | str] | None = None, owner: str | None = None
) -> str:
    """Store a new token under `name` and return it; the caller commits and shows it once.

    `scopes` defaults to DEFAULT_SCOPES (read, ask_tell, create); `owner` to `name`. Tokens
    with the same owner share their studies (a rotated token keeps its owner's studies).
    """
    _check_name("name", name)
    if owner is not None:
        _check_name("owner", owner)
    known = {scope.value for scope in Scope}
    unknown = sorted(str(s) for s in (scopes or ()) if s not in known)
    if unknown:
        raise ValidationError(FieldProblem("scopes", unknown, "names unknown scopes", "use: " + ", ".join(Scope)))
    chosen = frozenset(Scope(s) for s in (DEFAULT_SCOPES if scopes is None else scopes))
    if not chosen:
        raise ValidationError(FieldProblem("scopes", [], "is empty", "give at least one of: " + ", ".join(Scope)))
    if session.scalar(select(ApiTokenRow.id).where(ApiTokenRow.name == name)) is not None:
        raise ValidationError(
            FieldProblem("name", name, "is already used by another token", "pick another name or revoke the old token")
        )
    token = new_token()
    session.add(ApiTokenRow(name=name, token_hash=hash_token(token), owner=owner or name, scopes=format_scopes(chosen)))
    session.flush()
    return token


def revoke_token(session: Session, name: str) -> bool:
    row = session.scalar(select(ApiTokenRow).where(ApiTokenRow.name == name, ApiTokenRow.revoked_at.is_(None)))
    if row is None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True


def list_tokens(session: Session) -> list[TokenInfo]:
    rows = session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id)).all()
    return [TokenInfo(r.name, r.owner, parse_scopes(r.scopes), r.created_at, r.revoked_at) for r in rows]


class TokenVerifier:
    """Checks bearer tokens against the hashed tokens table, with a short positive cache.

    Only valid tokens are cached, each for `cache_s` from the moment its row was read.
    `evict(name)` drops a token at once; a verification that read the row before an
    eviction does not put it back (the generation check below).
    """

    def __init__(self, sessions: sessionmaker[Session], cache_s: float) -> None:
        self._sessions = sessions
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal of a recently verified token, without touching the database."""
        with self._lock:
            hit = self._cache.get(hash_token(token))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def verify(self, token: str) -> Principal | None:
        hit = self.cached(token)
        if hit is not None:
            return hit
        digest = hash_token(token)
        now = time.monotonic()
        with self._lock:
            generation = self._generation
        with self._sessions() as session:
            row = session.scalar(
                select(ApiTokenRow).where(ApiTokenRow.token_hash == digest, ApiTokenRow.revoked_at.is_(None))
            )
        if row is None:
            return None
        principal = Principal(row.name, row.owner, parse_scopes(row.scopes))
        with self._lock:
            if generation == self._generation:  # no eviction since the read: the row is still current
                self._cache[digest] = (now + self._cache_s, principal)
        return principal

    def evict(self, name: str) -> None:
        """Forget token `name` now (after revoking it): its next request reads the database."""
        with self._lock:
            self._generation += 1
            for digest in [d for d, (_, p) in self._cache.items() if p.token_name == name]:
                del self._cache[digest]

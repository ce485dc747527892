"""Bearer tokens: created by `tuner token create`, stored as sha256 hashes, checked per request.

Tokens are 256-bit random strings, so a plain (unsalted) sha256 is enough: there is
nothing to brute-force, and a hash lookup keeps verification one indexed query. Verified
tokens are cached for `token_cache_s` so the ask/tell hot path does not hit the database.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

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
    """Who made a request: the name of the token used."""

    token_name: str


def create_token(session: Session, name: str) -> str:
    """Store a new token under `name` and return it; the caller commits and shows it once."""
    import re

    if not re.match(TOKEN_NAME_PATTERN, name or ""):
        raise ValidationError(
            FieldProblem("name", name, "is not a valid token name", "use 1-64 letters, digits, '_', '-' or '.'")
        )
    if session.scalar(select(ApiTokenRow.id).where(ApiTokenRow.name == name)) is not None:
        raise ValidationError(
            FieldProblem("name", name, "is already used by another token", "pick another name or revoke the old token")
        )
    token = new_token()
    session.add(ApiTokenRow(name=name, token_hash=hash_token(token)))
    session.flush()
    return token


def revoke_token(session: Session, name: str) -> bool:
    row = session.scalar(select(ApiTokenRow).where(ApiTokenRow.name == name, ApiTokenRow.revoked_at.is_(None)))
    if row is None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True


class TokenVerifier:
    """Checks bearer tokens against the hashed tokens table, with a short positive cache."""

    def __init__(self, sessions: sessionmaker[Session], cache_s: float) -> None:
        self._sessions = sessions
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal]] = {}
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
        with self._sessions() as session:
            row = session.scalar(
                select(ApiTokenRow).where(ApiTokenRow.token_hash == digest, ApiTokenRow.revoked_at.is_(None))
            )
        if row is None:
            return None
        principal = Principal(row.name)
        with self._lock:
            self._cache[digest] = (now + self._cache_s, principal)
        return principal

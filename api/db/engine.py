"""Engines and sessions for the shared database (SQLite with WAL, or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from api.settings import normalize_storage_url

#: Seconds a SQLite writer waits for the lock before failing: the study loop, the
#: ask/tell writer and request handlers all write to one file.
SQLITE_BUSY_TIMEOUT_S = 30.0


def engine_kwargs(url: str) -> dict[str, Any]:
    """Connection options shared by our engine and Optuna's RDBStorage engine."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 10}


def make_engine(url: str) -> Engine:
    url = normalize_storage_url(url)
    engine = create_engine(url, **engine_kwargs(url))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run while one writer commits; NORMAL sync is durable in WAL mode
    # except for the last transactions on power loss (not on process crash).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction the caller commits; rolled back on error, always closed."""
    session = factory()
    try:
        yield session
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


def use_sqlite_pragmas(engine: Engine) -> None:
    """Give an existing engine (Optuna's) our SQLite settings on every new connection.

    Without it Optuna's connections run with synchronous=FULL, an fsync per commit
    (~9 ms here), which alone caps ask/tell at ~100 commits/s.
    """
    if not event.contains(engine, "connect", _sqlite_pragmas):
        event.listen(engine, "connect", _sqlite_pragmas)
        engine.dispose()  # connections opened before the listener are replaced lazily

"""Storage URLs: which database a study lives in, and how to open it for Optuna.

The embedded default is a SQLite file `tuner.db` in the working directory. SQLite gets
WAL journaling (readers — the REST service, the dashboard — never block the writer) and a
busy timeout (two processes writing at once wait instead of failing with "database is
locked"). PostgreSQL URLs pass through with a connection health check.

Optuna is imported inside functions only: this module is loaded by the CLI start-up.
"""

from __future__ import annotations

import sqlite3
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, TunerError, ValidationError

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

DEFAULT_STORAGE_URL = "sqlite:///tuner.db"
#: Seconds a SQLite connection waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 60.0
#: Seconds between heartbeats of running trials; a RUNNING trial whose heartbeat is older
#: than `STALE_GRACE_S` belongs to a dead process (on any machine) and is failed.
HEARTBEAT_INTERVAL_S = 15
STALE_GRACE_S = 90

_SUPPORTED_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql")


class StorageUnavailableError(TunerError):
    """The database of a storage URL cannot be reached or opened."""

    retryable = True


_open_lock = threading.Lock()
_opened: dict[str, RDBStorage] = {}


def resolve_storage_url(url: str | None) -> str:
    """The URL to use: `url` when given, else the SQLite file in the working directory."""
    if url is None or url == "":
        return DEFAULT_STORAGE_URL
    scheme = url.split(":", 1)[0]
    if "://" not in url or scheme not in _SUPPORTED_SCHEMES:
        raise ValidationError(
            FieldProblem(
                "storage",
                url,
                "is not a database URL tuner can use",
                "use sqlite:///path/to/tuner.db or postgresql+psycopg://user@host:5432/db",
            )
        )
    if scheme == "postgresql":
        # psycopg (v3) is what we install; SQLAlchemy's bare `postgresql://` means psycopg2.
        url = "postgresql+psycopg" + url[len("postgresql") :]
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory / non-SQLite URLs."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def engine_kwargs_for(url: str) -> dict[str, Any]:
    """SQLAlchemy `create_engine` arguments that make `url` safe for several processes."""
    if url.startswith("sqlite"):
        # pysqlite's `timeout` is SQLite's busy timeout; `check_same_thread=False` because
        # Optuna's scoped sessions hand connections between the loop's threads.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    return {"pool_pre_ping": True}


def _enable_wal(path: Path) -> None:
    # WAL is a property of the database file, so setting it once (before Optuna opens the
    # file) is enough for every later connection of every process.
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def open_storage(url: str | None = None) -> RDBStorage:
    """An Optuna `RDBStorage` for `url` (default SQLite file), shared within this process.

    Opening one runs Optuna's schema check, so it is cached per URL: the study loop, the
    worker and `tuner studies` in one process reuse the same engine and pool.
    """
    resolved = resolve_storage_url(url)
    path = sqlite_path(resolved)
    if path is not None and not path.is_absolute():
        # Cache by the real file: a relative URL means another file after a chdir.
        path = path.resolve()
        resolved = f"sqlite:///{path}"
    with _open_lock:
        storage = _opened.get(resolved)
        if storage is not None:
            return storage
        from optuna.storages import RDBStorage

        if path is not None:
            _enable_wal(path)
        try:
            with warnings.catch_warnings():
                # Heartbeats are "experimental" in Optuna since 2.9; we rely on them on purpose.
                warnings.simplefilter("ignore")
                storage = _rdb_storage(RDBStorage, resolved)
        except Exception as exc:  # sqlalchemy's OperationalError etc.: say which URL failed
            first_line = (str(exc).splitlines() or [""])[0]
            raise StorageUnavailableError(
                f"storage {display_url(resolved)} cannot be opened ({type(exc).__name__}: {first_line}); "
                "check that the database server is running and that the URL, user and database exist"
            ) from exc
        _opened[resolved] = storage
        return storage


def _rdb_storage(cls: type[RDBStorage], url: str) -> RDBStorage:
    return cls(
        url,
        engine_kwargs=engine_kwargs_for(url),
        heartbeat_interval=HEARTBEAT_INTERVAL_S,
        grace_period=STALE_GRACE_S,
    )


def display_url(url: str) -> str:
    """`url` with any password masked, for messages and tables."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"

"""Storage URLs: which database a study lives in, and how to open it for Optuna.

The embedded default is a SQLite file `tuner.db` in the working directory. SQLite gets
WAL journaling (readers — the REST service, the dashboard — never block the writer), a
busy timeout (two processes writing at once wait instead of failing with "database is
locked") and `synchronous=NORMAL`. PostgreSQL URLs pass through with a connection health
check.

Durability of `synchronous=NORMAL` (with WAL): a commit no longer waits for the disk to
flush (fsync) — ~2 ms per commit on a VM disk, several commits per trial. A crashed or killed
process (tuner, a worker, the service) loses nothing: committed transactions are in the
WAL file, which the OS keeps. Only an OS crash or a power loss may roll back the last
commits (the database stays consistent, never corrupt); a study resumed afterwards
re-runs those trials. Where every measured trial must survive a power cut, use
PostgreSQL (the multi-worker/production store), which commits durably.

Optuna writes each user attribute of a trial in its own transaction;
`set_trial_user_attrs` writes several (and the trial's heartbeat) in one, which is what
the study loop uses per trial.

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
#: SQLite `synchronous` level with the WAL journal: NORMAL = no fsync per commit (see above).
SQLITE_SYNCHRONOUS = "NORMAL"
#: Optuna's own heartbeat settings of the storage (`Study.optimize`'s heartbeat thread and
#: `fail_stale_trials` use them). tuner's study loop beats and fails lost trials by the
#: study's `heartbeat_grace_s` instead (tuner.study.recovery), so all processes of one
#: study agree whatever storage object they opened.
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
    storage = _batching_storage_class(cls)(
        url,
        engine_kwargs=engine_kwargs_for(url),
        heartbeat_interval=HEARTBEAT_INTERVAL_S,
        grace_period=STALE_GRACE_S,
    )
    if url.startswith("sqlite"):
        _relax_sqlite_sync(storage.engine)
    return storage


def _relax_sqlite_sync(engine: Any) -> None:
    """`PRAGMA synchronous=NORMAL` on every connection of `engine` (see the module docstring
    for the durability trade-off). The pragma is per connection, so it is set on connect;
    the connections RDBStorage opened while creating its schema are dropped so that none
    is left at FULL."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        finally:
            cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()


def sqlite_synchronous(storage: Any) -> int | None:
    """The `synchronous` level (0 OFF, 1 NORMAL, 2 FULL) of a pooled connection of a SQLite
    storage opened here, or None for other databases (tests check the setting with it)."""
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return None
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA synchronous").scalar())


_storage_classes: dict[type, type] = {}


def _batching_storage_class(base: type[RDBStorage]) -> type[RDBStorage]:
    """`base` (Optuna's RDBStorage) plus `set_trial_user_attrs`.

    Built on first use so that this module does not import Optuna at start-up.
    """
    cls = _storage_classes.get(base)
    if cls is None:
        cls = _storage_classes[base] = type(
            "TunerRDBStorage", (base,), {"set_trial_user_attrs": _set_trial_user_attrs}
        )
    return cls


def _set_trial_user_attrs(
    self: Any, trial_id: int, attrs: dict[str, Any], *, heartbeat: bool = False
) -> None:
    """Write user attributes of a running trial (and optionally its heartbeat) in ONE
    transaction, where Optuna's `set_trial_user_attr` commits once per key.

    Fewer commits per trial is most of the study loop's storage cost; one transaction
    also means a reader never sees a trial's owner without its config. Falls back to one
    write per key when this Optuna version lacks the internals it relies on.
    """
    from tuner.storage.optuna_private import attr_writer_without_commit, rdb_models

    write_attr = attr_writer_without_commit(self)
    try:
        models = rdb_models()
    except ImportError:
        models = None  # type: ignore[assignment]
    if write_attr is None or models is None or not hasattr(models, "TrialHeartbeatModel"):
        for key, value in attrs.items():
            self.set_trial_user_attr(trial_id, key, value)
        if heartbeat:
            self.record_heartbeat(trial_id)
        return
    from sqlalchemy import func

    session = self.scoped_session()
    try:
        for key, value in attrs.items():
            write_attr(session, models.TrialUserAttributeModel, trial_id, key, value)
        if heartbeat:
            beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
            if beat is None:
                session.add(models.TrialHeartbeatModel(trial_id=trial_id))
            else:
                beat.heartbeat = session.execute(func.now()).scalar()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def trial_attr_writer(storage: Any) -> Any:
    """The `set_trial_user_attrs` of the RDBStorage behind `storage` (an Optuna study's
    `_storage`, which wraps it in a cache), or None when it is another kind of storage."""
    from tuner.storage.optuna_private import rdb_backend

    backend = rdb_backend(storage)
    return getattr(backend, "set_trial_user_attrs", None)


def display_url(url: str) -> str:
    """`url` with any password masked, for messages and tables."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"

"""Every use of a private Optuna name, in one module, each behind a small typed function.

Optuna's public API has no way to get a study's storage and id, a trial's storage id, a
tell without `Study.tell`'s deep copy, or the ORM models of its RDB tables (its heartbeat
table among them); tuner needs each of them (the ask/tell engine's hot copy
and writer, the study loop's batched attrs and heartbeats, recovery of abandoned trials).
Keeping them here means an Optuna upgrade that moves one breaks this module only, and
`tests/test_optuna_private.py` says which name moved and in which Optuna version.
`tests/test_layering.py` refuses a private Optuna name anywhere else.

Nothing here imports Optuna at module level: importing tuner stays light.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.study import StudySummary
    from optuna.trial import FrozenTrial, TrialState

#: The private names used below (tests/test_optuna_private.py checks each one).
PRIVATE_NAMES = (
    "optuna.Study._storage",
    "optuna.Study._study_id",
    "optuna.trial.Trial._trial_id",
    "optuna.trial.FrozenTrial._trial_id",
    "optuna.study.StudySummary._study_id",
    "optuna.study._tell._tell_with_warning",
    "optuna.storages._rdb.models",
    "optuna.storages._CachedStorage._backend",
    "optuna.storages.RDBStorage._set_trial_attr_without_commit",
    "optuna.storages.RDBStorage._get_trials",
    "optuna.samplers._tpe._truncnorm._log_ndtr",
)


# -- studies and trials -------------------------------------------------------------------
def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (an RDBStorage is wrapped in Optuna's cache)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in its study's storage (not its number)."""
    return trial._trial_id


def summary_study_id(summary: StudySummary) -> int:
    """The id of a summarized study: the order studies were created in."""
    return summary._study_id


def tell_without_copy(study: optuna.Study, number: int, values: Sequence[float] | None, state: TrialState) -> None:
    """`Study.tell` minus its deep copy of the finished trial (which copies every attr:
    ~10% of an ask/tell pair's CPU). Same checks, same storage writes, same callbacks."""
    from optuna.study._tell import _tell_with_warning

    _tell_with_warning(study, number, list(values) if values is not None else None, state=state)


# -- the RDB storage ----------------------------------------------------------------------
def rdb_models() -> ModuleType:
    """`optuna.storages._rdb.models`: the ORM of Optuna's tables and its value encoders.
    Raises ImportError when this Optuna has no such module."""
    from optuna.storages._rdb import models

    return models


def rdb_backend(storage: Any) -> Any:
    """The RDBStorage behind `storage` (a study's storage wraps it in `_CachedStorage`);
    `storage` itself when it is not wrapped."""
    return getattr(storage, "_backend", storage)


def attr_writer_without_commit(storage: Any) -> Callable[..., None] | None:
    """RDBStorage's `_set_trial_attr_without_commit(session, model, trial_id, key, value)`,
    or None when this Optuna has none."""
    return getattr(storage, "_set_trial_attr_without_commit", None)


def running_heartbeats(storage: Any, study_id: int) -> tuple[datetime.datetime, dict[int, datetime.datetime]] | None:
    """The database's clock now and the last heartbeat of each of the study's RUNNING
    trials that has one (Optuna's `trial_heartbeats` table), in one read; None when the
    storage is not an RDBStorage with that table.

    Both times come from the database server (`now()`, as Optuna writes heartbeats), so
    hosts with skewed clocks still agree on a heartbeat's age. Naive datetimes in the
    database's own time zone, compared only with each other (Optuna does the same).
    """
    backend = rdb_backend(storage)
    make_session = getattr(backend, "scoped_session", None)
    if make_session is None:
        return None
    try:
        models = rdb_models()
        trials, beats = models.TrialModel, models.TrialHeartbeatModel
    except (ImportError, AttributeError):
        return None
    from optuna.trial import TrialState
    from sqlalchemy import func, select

    session = make_session()
    try:
        now = session.execute(select(func.now())).scalar()
        rows = session.execute(
            select(trials.trial_id, beats.heartbeat)
            .join(beats, beats.trial_id == trials.trial_id)
            .where(trials.study_id == study_id, trials.state == TrialState.RUNNING)
        ).all()
        session.commit()
    finally:
        session.close()
    return now.replace(tzinfo=None), {trial: beat.replace(tzinfo=None) for trial, beat in rows}


def trials_since(storage: Any, study_id: int, trial_ids: set[int], id_greater_than: int) -> list[FrozenTrial]:
    """The study's trials whose id is in `trial_ids` or above `id_greater_than`, in one
    query: RDBStorage's `_get_trials`, what Optuna's own cached storage refreshes with.
    Without it (another Optuna), every trial of the study, filtered here."""
    backend = rdb_backend(storage)
    get_trials = getattr(backend, "_get_trials", None)
    if get_trials is not None:
        return list(get_trials(study_id, None, set(trial_ids), id_greater_than))
    return [
        t for t in backend.get_all_trials(study_id, deepcopy=False) if trial_id(t) in trial_ids or trial_id(t) > id_greater_than
    ]


# -- the TPE speed-up patch ---------------------------------------------------------------
_patch_lock = threading.Lock()


def tpe_log_ndtr() -> Callable[[Any], Any] | None:
    """TPE's `_truncnorm._log_ndtr` as it is now (stock or patched), None if it moved."""
    try:
        from optuna.samplers._tpe import _truncnorm
    except ImportError:
        return None
    return getattr(_truncnorm, "_log_ndtr", None)


def replace_tpe_log_ndtr(function: Callable[[Any], Any]) -> bool:
    """Make TPE use `function` as its `_log_ndtr`; False (and nothing changed) when this
    Optuna has no such helper, so its stock code keeps running."""
    with _patch_lock:
        try:
            from optuna.samplers._tpe import _truncnorm
        except ImportError:
            return False
        if not hasattr(_truncnorm, "_log_ndtr"):
            return False
        _truncnorm._log_ndtr = function
        return True


__all__ = [
    "PRIVATE_NAMES",
    "attr_writer_without_commit",
    "rdb_backend",
    "rdb_models",
    "replace_tpe_log_ndtr",
    "running_heartbeats",
    "study_id",
    "study_storage",
    "summary_study_id",
    "tell_without_copy",
    "tpe_log_ndtr",
    "trial_id",
]

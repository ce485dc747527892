"""No empty "ghost" study after a failed `tuner tune`.

`run_study` creates the Optuna study and then plans, measures the baseline and runs
trials. When the run fails before anything of value was stored (no trial, no baseline) a
study this run created is only an empty name: it would list in `tuner studies` and the
dashboard as if it existed, and block `--no-resume` reuse of its name. So the study is
deleted again; a study that existed before the run, or holds any result, is never touched.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from tuner.storage.rdb import open_storage
from tuner.study.attrs import StudyAttr
from tuner.study.lifecycle import delete_optuna_study, find_study_id

log = logging.getLogger("tuner.study")


@contextlib.contextmanager
def no_ghost_on_failure(storage_url: str | None, name: str) -> Iterator[None]:
    """Delete study `name` if the block fails, created it, and it holds no result."""
    rdb = open_storage(storage_url)
    existed = find_study_id(rdb, name) is not None
    try:
        yield
    except BaseException:
        if not existed and _empty(rdb, name):
            delete_optuna_study(rdb, name)
            log.warning("study %s: creation failed before any result; the empty study was removed", name)
        raise


def _empty(rdb: object, name: str) -> bool:
    study_id = find_study_id(rdb, name)
    if study_id is None:
        return False
    return not rdb.get_all_trials(study_id, deepcopy=False) and StudyAttr.BASELINE not in rdb.get_study_user_attrs(study_id)  # type: ignore[attr-defined]


__all__ = ["no_ghost_on_failure"]

"""Find trials whose process died and fail them, so a resumed study re-runs them.

A trial is RUNNING in the database from `ask` until `tell`. If the process that asked it
is killed, the row stays RUNNING forever and would count toward n_trials. Each running
trial therefore records its owner (host, pid, process start time) and gets heartbeats;
when a study starts or a worker joins, RUNNING trials are failed when:

- their owner is on this host and that process no longer exists (immediate), or
- their heartbeat is older than the storage's grace period (any host), or
- they have neither owner nor heartbeat and started longer ago than the grace period.

Failed this way, a trial is marked `tuner.kind = abandoned` and does not count toward
n_trials, so the remaining trials of the study still run.
"""

from __future__ import annotations

import datetime
import os
import socket
from functools import cache
from typing import TYPE_CHECKING, Any

from tuner.storage.optuna_private import stale_trial_ids, study_id, study_storage, trial_id
from tuner.storage.rdb import STALE_GRACE_S
from tuner.study.attrs import TrialAttr, TrialKind
from tuner.types import TrialResult

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def _process_start_ticks(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after ')' are fixed.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


@cache
def this_process_owner() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start_ticks(pid)}


def owner_is_alive(owner: dict[str, Any]) -> bool | None:
    """True/False for an owner on this host; None when it is on another host."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start = owner.get("start")
    return start is None or _process_start_ticks(pid) in (None, start)


def _abandon_reason(trial: FrozenTrial, stale_ids: set[int]) -> str | None:
    owner = trial.user_attrs.get(TrialAttr.OWNER)
    if isinstance(owner, dict):
        alive = owner_is_alive(owner)
        if alive is False:
            return (
                f"abandoned: its process (pid {owner.get('pid')} on {owner.get('host')}) died while "
                "running it; the trial will be run again"
            )
        if alive is True:
            return None
    if trial_id(trial) in stale_ids:
        host = owner.get("host") if isinstance(owner, dict) else "an unknown host"
        return f"abandoned: no heartbeat from its process on {host} for over {STALE_GRACE_S} s"
    if owner is None and trial.datetime_start is not None:
        age = (datetime.datetime.now() - trial.datetime_start).total_seconds()
        if age > STALE_GRACE_S:
            return f"abandoned: RUNNING for {age:.0f} s with no owner recorded"
    return None


def fail_abandoned_trials(study: optuna.Study) -> list[int]:
    """Fail every RUNNING trial whose process is gone; return their numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study_storage(study)
    stale_ids = stale_trial_ids(storage, study_id(study)) or set()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _abandon_reason(trial, stale_ids)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial_id(trial), TrialAttr.KIND, TrialKind.ABANDONED)
            storage.set_trial_user_attr(
                trial_id(trial), TrialAttr.RESULT, TrialResult.failed(reason).to_dict()
            )
            storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another process recovered it first
        failed.append(trial.number)
    return failed


def recover_abandoned_trials(storage: Any, name: str) -> int:
    """Fail the RUNNING trials of a study whose runner died, and enqueue each config again.

    Called only by the runner that just claimed the study, when none of its trials can
    still be running anywhere: the old runner's heartbeat expired.
    """
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for trial in stale:
        result = TrialResult.failed("the server running this trial stopped (heartbeat expired); retried as a new trial")
        storage.set_trial_user_attr(trial_id(trial), TrialAttr.RESULT, result.to_dict())
        storage.set_trial_user_attr(trial_id(trial), TrialAttr.KIND, TrialKind.ABANDONED)
        storage.set_trial_system_attr(trial_id(trial), "fail_reason", result.reason)
        storage.set_trial_state_values(trial_id(trial), optuna.trial.TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={TrialAttr.RETRY_OF: trial.number}, skip_if_exists=False)
    return len(stale)

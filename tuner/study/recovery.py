"""Find trials whose process died and fail them, so the study runs their configs again.

A trial is RUNNING in the database from `ask` until `tell`. If the process that asked it
is killed (or its whole host dies), the row stays RUNNING forever and would count toward
n_trials. Each running trial therefore records its owner (host, pid, process start time)
and its process writes a heartbeat every `heartbeat_interval_s(grace)` seconds. Every
live process of the study (the `tuner tune` owner and each `tuner worker`, on any host)
checks the study's RUNNING trials when it starts and then every heartbeat interval while
it runs, and fails those whose:

- owner is on this host and that process no longer exists (immediate), or
- heartbeat is older than the study's `heartbeat_grace_s` (any host: a lost host), or
- have neither owner nor heartbeat and started longer ago than the grace.

Failed this way, a trial is marked `tuner.kind = abandoned`, its result says why (which
host, the last heartbeat, who failed it), it does not count toward n_trials, and its
config is queued once to run again (a retry that is itself lost is not queued again, so
a config that kills its host cannot loop). Heartbeat ages use the database's clock only.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from tuner.storage.optuna_private import running_heartbeats, study_id, study_storage, trial_id
from tuner.study.attrs import TrialAttr, TrialKind
from tuner.study.spec import DEFAULT_HEARTBEAT_GRACE_S
from tuner.types import TrialResult

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

#: Heartbeats per grace period: a trial is failed only after this many beats in a row
#: did not arrive (a busy machine may delay one or two).
BEATS_PER_GRACE = 6


def heartbeat_interval_s(grace_s: float) -> float:
    """Seconds between a running trial's heartbeats (and between checks for lost trials)."""
    return grace_s / BEATS_PER_GRACE


@dataclass(frozen=True)
class Abandoned:
    """A trial failed here because its process was gone."""

    number: int
    reason: str
    retried: bool  # its config was queued to run again


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


def _abandon_reason(
    trial: FrozenTrial, beats: tuple[datetime.datetime, dict[int, datetime.datetime]] | None, grace_s: float
) -> str | None:
    owner = trial.user_attrs.get(TrialAttr.OWNER)
    if isinstance(owner, dict):
        alive = owner_is_alive(owner)
        if alive is False:
            return (
                f"abandoned: its process (pid {owner.get('pid')} on {owner.get('host')}) died while "
                "running it"
            )
        if alive is True:
            return None
    now, last = beats if beats is not None else (None, {})
    beat = last.get(trial_id(trial))
    if now is not None and beat is not None and (now - beat).total_seconds() > grace_s:
        host = owner.get("host") if isinstance(owner, dict) else "an unknown host"
        pid = owner.get("pid") if isinstance(owner, dict) else "?"
        me = this_process_owner()
        return (
            f"abandoned: worker host {host} lost (pid {pid} there sent no heartbeat for "
            f"{(now - beat).total_seconds():.1f} s, over the study's heartbeat_grace_s={grace_s:g}; "
            f"last heartbeat at {beat.isoformat(sep=' ', timespec='seconds')} database time); "
            f"failed by pid {me['pid']} on {me['host']}"
        )
    if owner is None and trial.datetime_start is not None:
        age = (datetime.datetime.now() - trial.datetime_start).total_seconds()
        if age > grace_s:
            return f"abandoned: RUNNING for {age:.0f} s with no owner recorded"
    return None


def fail_abandoned_trials(study: optuna.Study, grace_s: float = DEFAULT_HEARTBEAT_GRACE_S) -> list[Abandoned]:
    """Fail every RUNNING trial whose process is gone, queue its config once more, and
    return what was failed (another process that got to a trial first wins)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    storage = study_storage(study)
    beats = running_heartbeats(storage, study_id(study))
    failed = []
    for trial in running:
        reason = _abandon_reason(trial, beats, grace_s)
        if reason is None:
            continue
        retry = bool(trial.params) and TrialAttr.RETRY_OF not in trial.user_attrs
        if retry:
            reason += "; its config runs again as a new trial"
        elif trial.params:
            reason += f"; not queued again (it retried trial {trial.user_attrs[TrialAttr.RETRY_OF]}, also lost)"
        try:
            storage.set_trial_user_attr(trial_id(trial), TrialAttr.KIND, TrialKind.ABANDONED)
            storage.set_trial_user_attr(
                trial_id(trial), TrialAttr.RESULT, TrialResult.failed(reason).to_dict()
            )
            storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another process recovered it first (or its owner told it after all)
        if retry:
            study.enqueue_trial(dict(trial.params), user_attrs={TrialAttr.RETRY_OF: trial.number}, skip_if_exists=False)
        failed.append(Abandoned(trial.number, reason, retry))
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

"""Ask/tell trials nobody tells: heartbeats, expiry to FAIL, and when a study is done.

A trial handed out by `ask` runs in the user's own job. If that job dies, nobody tells
the trial, and without this module it would stay RUNNING forever: shown as running,
steered around by the constant liar, and keeping the study from ever finishing.

- A trial is alive while it shows signs of life: its ask (`datetime_start`), and every
  report or heartbeat after it, which upsert the trial's row in Optuna's own
  `trial_heartbeats` table in the same transaction as the report (`record_heartbeats`,
  called by the batch committer). So "last seen" is in the database, one row per trial,
  and every API replica reads the same one.
- `expire_stale_trials` fails, in one transaction, the RUNNING trials of a study last seen
  more than `trial_timeout_s` ago. Each UPDATE re-checks, in its own WHERE, that the
  trial is still RUNNING and got no heartbeat since the cut-off, so a tell or report that
  commits first wins, any number of servers may sweep the same study at once, and a
  trial is expired once. The trial keeps a `tuner.result` (status failed, the reason) and
  a `tuner.expired` attr, so a late tell or report is refused with a 409 that says why
  (`expired_conflict`) instead of "finished with another outcome".
- An expired trial counts against `n_trials` like any failed tell (Optuna's meaning of a
  trial), so a study whose n_trials trials are all finished, told or expired, is done
  (`study_done`): the service then marks it completed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, func, insert, select, update

from tuner.errors import ConflictError
from tuner.storage.optuna_private import rdb_models
from tuner.study.attrs import TrialAttr
from tuner.types import TrialResult, TrialStatus

__all__ = ["ExpiredTrial", "expire_stale_trials", "expired_conflict", "record_heartbeats", "study_done"]


@dataclass(frozen=True)
class ExpiredTrial:
    number: int
    last_seen: datetime


def _utcnow() -> datetime:
    # Optuna's RDBStorage stores naive UTC datetimes; the writer stamps asks the same way.
    return datetime.now(UTC).replace(tzinfo=None)


class _Statements:
    """Built once, so SQLAlchemy reuses their compiled forms (see batch_commit)."""

    def __init__(self) -> None:
        from optuna.trial import TrialState
        from sqlalchemy.dialects import postgresql, sqlite

        m = rdb_models()
        trials = m.TrialModel.__table__
        beats = self.beats = m.TrialHeartbeatModel.__table__
        attrs = m.TrialUserAttributeModel.__table__
        last_seen = func.coalesce(beats.c.heartbeat, trials.c.datetime_start)
        running = and_(trials.c.study_id == bindparam("study_id"), trials.c.state == TrialState.RUNNING)
        self.stale = (
            select(trials.c.trial_id, trials.c.number, last_seen)
            .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
            .where(running, last_seen < bindparam("cutoff"))
            .order_by(trials.c.trial_id)  # a fixed lock order: sweeping servers never deadlock
        )
        # The re-check that makes the sweep safe against a tell or heartbeat committed since
        # the SELECT, and against another server sweeping the same trial.
        fresh_beat = exists().where(beats.c.trial_id == bindparam("b_trial_id"), beats.c.heartbeat >= bindparam("cutoff"))
        self.expire = (
            update(trials)
            .where(trials.c.trial_id == bindparam("b_trial_id"), trials.c.state == TrialState.RUNNING, ~fresh_beat)
            .values(state=TrialState.FAIL, datetime_complete=bindparam("b_complete"))
        )
        self.delete_attrs = delete(attrs).where(
            attrs.c.trial_id == bindparam("b_trial_id"), attrs.c.key.in_(bindparam("keys", expanding=True))
        )
        self.insert_attrs = insert(attrs)
        self.count_states = (
            select(trials.c.state, func.count()).where(trials.c.study_id == bindparam("study_id")).group_by(trials.c.state)
        )
        # trials failed without a result are creations whose ask never got its answer
        # (tuner.asktell.batch_commit's in_doubt): nobody was given them, they do not count
        self.count_told = (
            select(func.count())
            .select_from(trials)
            .where(
                trials.c.study_id == bindparam("study_id"),
                trials.c.state.in_([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]),
                exists().where(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == str(TrialAttr.RESULT)),
            )
        )
        self.upsert_beat = {}
        for dialect in (postgresql, sqlite):
            stmt = dialect.insert(beats)
            self.upsert_beat[dialect.dialect.name] = stmt.on_conflict_do_update(
                index_elements=[beats.c.trial_id], set_={"heartbeat": stmt.excluded.heartbeat}
            )


@functools.cache
def _stmts() -> _Statements:
    return _Statements()


def record_heartbeats(conn: Any, trial_ids: Iterable[int]) -> None:
    """Upsert 'seen now' for `trial_ids` in the caller's transaction (their rows are locked
    and checked RUNNING by the caller)."""
    ids = sorted(set(trial_ids))
    if not ids:
        return
    now = _utcnow()
    conn.execute(_stmts().upsert_beat[conn.dialect.name], [{"trial_id": i, "heartbeat": now} for i in ids])


def expire_stale_trials(storage: Any, study_id: int, timeout_s: float, *, now: datetime | None = None) -> list[ExpiredTrial]:
    """FAIL the study's RUNNING trials not seen for `timeout_s`; returns those this call
    expired (none that a tell, heartbeat or another sweep got to first)."""
    st = _stmts()
    now = now or _utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    expired: list[ExpiredTrial] = []
    with storage.engine.begin() as conn:
        for trial_id, number, last_seen in conn.execute(st.stale, {"study_id": study_id, "cutoff": cutoff}).all():
            if conn.execute(st.expire, {"b_trial_id": trial_id, "cutoff": cutoff, "b_complete": now}).rowcount != 1:
                continue
            seen = last_seen if isinstance(last_seen, datetime) else datetime.fromisoformat(str(last_seen))
            attrs = _expired_attrs(timeout_s, seen)
            conn.execute(st.delete_attrs, {"b_trial_id": trial_id, "keys": list(attrs)})
            conn.execute(st.insert_attrs, [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()])
            expired.append(ExpiredTrial(number, seen))
    return expired


def _expired_attrs(timeout_s: float, last_seen: datetime) -> dict[str, Any]:
    reason = f"expired: no report, heartbeat or tell for {timeout_s:g} s (trial_timeout_s)"
    result = TrialResult(status=TrialStatus.FAILED, reason=reason)
    return {
        str(TrialAttr.RESULT): result.to_dict(),
        str(TrialAttr.EXPIRED): {"timeout_s": timeout_s, "last_seen": last_seen.isoformat() + "Z"},
    }


def study_done(storage: Any, study_id: int, n_trials: int | None) -> bool:
    """True when n_trials trials were told or expired and none is still RUNNING."""
    if n_trials is None:
        return False
    st = _stmts()
    with storage.engine.connect() as conn:
        states = {str(state).split(".")[-1]: count for state, count in conn.execute(st.count_states, {"study_id": study_id})}
        if states.get("RUNNING", 0):
            return False
        return int(conn.execute(st.count_told, {"study_id": study_id}).scalar_one()) >= n_trials


def expired_conflict(number: int, user_attrs: Mapping[str, Any]) -> ConflictError | None:
    """The 409 for a report, heartbeat or tell of an expired trial; None if it did not expire."""
    expired = user_attrs.get(TrialAttr.EXPIRED)
    if not isinstance(expired, Mapping):
        return None
    timeout = float(expired.get("timeout_s") or 0)
    return ConflictError(
        "trial_number",
        number,
        f"expired (FAIL): no report, heartbeat or tell for {timeout:g} s (trial_timeout_s), last seen {expired.get('last_seen')}",
        "ask for a new trial; report or POST .../heartbeat more often than trial_timeout_s, "
        "or create the study with a larger trial_timeout_s",
    )

"""Write-behind of ask/tell trials into Optuna's tables, with group commit.

The ask/tell hot path samples from an in-memory copy of the study (see
`api.services.asktell`), then hands the resulting rows to this writer. One thread drains
the queue and applies everything waiting in ONE transaction, so 8 concurrent clients
cost about one commit per round instead of eight. Callers block on their future until
the commit that contains their change is done, so an answer the API gives is always
already durable in the database: the database stays the source of truth, readable by
`optuna.load_study` and optuna-dashboard at any moment.

Rows go into Optuna's tables through Optuna's own table definitions and value encoders
(`optuna.storages._rdb.models`), so the stored representation is exactly Optuna's. That
module is private API, which is why `tests/test_api_asktell.py` reads every written
trial back through `optuna.load_study` and optuna-dashboard and compares it field by field.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update

log = logging.getLogger("tuner.api.writer")

#: Most operations applied in one transaction; bounds the time a batch holds the lock.
MAX_BATCH = 256


@dataclass
class CreateTrial:
    study_id: int
    template: Any  # optuna.trial.FrozenTrial with params, distributions, attrs, state RUNNING


@dataclass
class SetIntermediate:
    trial_id: int
    step: int
    value: float


@dataclass
class FinishTrial:
    trial_id: int
    state: Any  # optuna.trial.TrialState
    values: list[float] | None
    user_attrs: dict[str, Any] = field(default_factory=dict)


Operation = CreateTrial | SetIntermediate | FinishTrial


class TrialWriter:
    """Applies trial operations to an Optuna RDBStorage in batched transactions."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._queue: queue.Queue[tuple[Operation, Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="tuner-trial-writer", daemon=True)
        self._thread.start()
        self.batches = 0
        self.operations = 0
        self.busy_s = 0.0  # time spent applying batches (for the benchmark's report)
        self.commit_s = 0.0

    def submit(self, op: Operation) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((op, future))
        return future

    def apply(self, op: Operation, timeout: float = 60.0) -> Any:
        """Submit `op` and wait until it is committed; returns its result."""
        return self.submit(op).result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[tuple[Operation, Future[Any]]]) -> None:
        try:
            results = self._commit([op for op, _ in batch])
        except Exception:
            if len(batch) == 1:
                op, future = batch[0]
                try:
                    self._commit([op])
                except Exception as exc:
                    future.set_exception(exc)
                return
            # One bad operation must not fail its neighbours: redo them one by one.
            for op, future in batch:
                try:
                    future.set_result(self._commit([op])[0])
                except Exception as exc:
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def _commit(self, ops: list[Operation]) -> list[Any]:
        """Apply `ops` in one transaction with Core statements on Optuna's tables.

        Optuna's ORM helpers issue ~10 queries per trial; here a new trial is one INSERT
        plus one executemany per child table, and trial numbers are counted once per study
        per batch under the same study-row lock Optuna takes.
        """
        t0 = time.perf_counter()
        results: list[Any] = []
        with self._storage.engine.begin() as conn:
            next_number: dict[int, int] = {}
            for op in ops:
                if isinstance(op, CreateTrial):
                    results.append(_create(conn, op, next_number))
                elif isinstance(op, SetIntermediate):
                    _intermediate(conn, op)
                    results.append(None)
                else:
                    _finish(conn, op)
                    results.append(None)
            t_commit = time.perf_counter()
        self.commit_s += time.perf_counter() - t_commit
        self.busy_s += time.perf_counter() - t0
        self.batches += 1
        self.operations += len(ops)
        return results


def _utcnow() -> datetime:
    # Optuna's RDBStorage stores naive UTC datetimes (see optuna.storages._rdb.models).
    return datetime.now(UTC).replace(tzinfo=None)


def _tables() -> Any:
    from optuna.storages._rdb import models

    return models


def _create(conn: Any, op: CreateTrial, next_number: dict[int, int]) -> tuple[int, int]:
    from optuna.distributions import distribution_to_json
    from optuna.trial import TrialState

    m = _tables()
    trials = m.TrialModel.__table__
    if op.study_id not in next_number:
        studies = m.StudyModel.__table__
        conn.execute(select(studies.c.study_id).where(studies.c.study_id == op.study_id).with_for_update())
        next_number[op.study_id] = conn.execute(
            select(func.count()).select_from(trials).where(trials.c.study_id == op.study_id)
        ).scalar_one()
    number = next_number[op.study_id]
    next_number[op.study_id] += 1
    t = op.template
    trial_id = conn.execute(
        insert(trials).values(number=number, study_id=op.study_id, state=TrialState.RUNNING, datetime_start=_utcnow())
    ).inserted_primary_key[0]
    params = [
        {
            "trial_id": trial_id,
            "param_name": name,
            "param_value": t.distributions[name].to_internal_repr(value),
            "distribution_json": distribution_to_json(t.distributions[name]),
        }
        for name, value in t.params.items()
    ]
    if params:
        conn.execute(insert(m.TrialParamModel.__table__), params)
    _attrs(conn, m.TrialUserAttributeModel.__table__, trial_id, t.user_attrs)
    _attrs(conn, m.TrialSystemAttributeModel.__table__, trial_id, t.system_attrs)
    return trial_id, number


def _attrs(conn: Any, table: Any, trial_id: int, attrs: dict[str, Any]) -> None:
    if not attrs:
        return
    conn.execute(delete(table).where(table.c.trial_id == trial_id, table.c.key.in_(list(attrs))))
    conn.execute(insert(table), [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()])


def _running_state(conn: Any, trial_id: int) -> None:
    from optuna.exceptions import UpdateFinishedTrialError

    trials = _tables().TrialModel.__table__
    state = conn.execute(select(trials.c.state).where(trials.c.trial_id == trial_id).with_for_update()).scalar_one_or_none()
    if state is None:
        raise KeyError(f"no trial with id {trial_id}")
    if state.is_finished():
        raise UpdateFinishedTrialError(f"trial {trial_id} is already finished ({state.name})")


def _intermediate(conn: Any, op: SetIntermediate) -> None:
    m = _tables()
    _running_state(conn, op.trial_id)
    table = m.TrialIntermediateValueModel.__table__
    stored, kind = m.TrialIntermediateValueModel.intermediate_value_to_stored_repr(op.value)
    conn.execute(delete(table).where(table.c.trial_id == op.trial_id, table.c.step == op.step))
    conn.execute(
        insert(table).values(trial_id=op.trial_id, step=op.step, intermediate_value=stored, intermediate_value_type=kind)
    )


def _finish(conn: Any, op: FinishTrial) -> None:
    m = _tables()
    _running_state(conn, op.trial_id)
    _attrs(conn, m.TrialUserAttributeModel.__table__, op.trial_id, op.user_attrs)
    if op.values:
        table = m.TrialValueModel.__table__
        rows = []
        for objective, value in enumerate(op.values):
            stored, kind = m.TrialValueModel.value_to_stored_repr(value)
            rows.append({"trial_id": op.trial_id, "objective": objective, "value": stored, "value_type": kind})
        conn.execute(delete(table).where(table.c.trial_id == op.trial_id))
        conn.execute(insert(table), rows)
    trials = m.TrialModel.__table__
    conn.execute(update(trials).where(trials.c.trial_id == op.trial_id).values(state=op.state, datetime_complete=_utcnow()))

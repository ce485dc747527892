"""Write-behind of ask/tell trials into Optuna's tables, with group commit.

The ask/tell hot path samples from an in-memory copy of the study (see
`api.services.asktell`), then hands the resulting rows to this writer. One thread drains
the queue and applies everything waiting in ONE transaction, so 8 concurrent clients
cost about one commit per round instead of eight. Callers block on their future until
the commit that contains their change is done, so an answer the API gives is always
already durable in the database: the database stays the source of truth, readable by
`optuna.load_study` and optuna-dashboard at any moment.

Rows are written with Optuna's own RDBStorage helpers (`_get_prepared_new_trial`, the
`*_without_commit` setters), so the stored representation is exactly Optuna's; they are
private API, which is why `tests/test_api_asktell.py` reads every written trial back through
`optuna.load_study` and compares it field by field.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
        from optuna.storages._rdb import models

        storage = self._storage
        t0 = time.perf_counter()
        session = storage.scoped_session()
        try:
            results: list[Any] = []
            locked: set[int] = set()
            for op in ops:
                if isinstance(op, CreateTrial):
                    if op.study_id not in locked:
                        # Same row lock Optuna takes: trial numbers are counted, not sequenced.
                        models.StudyModel.find_or_raise_by_id(op.study_id, session, for_update=True)
                        locked.add(op.study_id)
                    row = storage._get_prepared_new_trial(op.study_id, op.template, session)
                    session.flush()
                    results.append((row.trial_id, row.number))
                elif isinstance(op, SetIntermediate):
                    storage._set_trial_intermediate_value_without_commit(session, op.trial_id, op.step, op.value)
                    results.append(None)
                else:
                    row = models.TrialModel.find_or_raise_by_id(op.trial_id, session, for_update=True)
                    storage.check_trial_is_updatable(op.trial_id, row.state)
                    for key, value in op.user_attrs.items():
                        storage._set_trial_attr_without_commit(
                            session, models.TrialUserAttributeModel, op.trial_id, key, value
                        )
                    for objective, value in enumerate(op.values or ()):
                        storage._set_trial_value_without_commit(session, row, objective, value)
                    row.state = op.state
                    row.datetime_complete = datetime.now()
                    results.append(None)
            t_flush = time.perf_counter()
            session.commit()
            self.commit_s += time.perf_counter() - t_flush
            self.batches += 1
            self.operations += len(ops)
            self.busy_s += time.perf_counter() - t0
            return results
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()

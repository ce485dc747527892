"""One batch of ask/tell trial operations applied in one transaction.

A batch costs a fixed number of statements, not a number per trial: all new trials in
one multi-row INSERT .. RETURNING, their params and attributes in one executemany each,
all finished trials closed with one executemany UPDATE .. WHERE state = RUNNING and
their result attrs upserted with one INSERT .. ON CONFLICT DO UPDATE. On PostgreSQL the
writer keeps one connection (no per-batch pool checkout and pre-ping). On PostgreSQL each
statement is a network round trip, so this is what keeps a batch of 8 at ~10 statements instead of ~100.

Rows go into Optuna's tables through Optuna's own table definitions and value encoders
(Optuna's private `models` module, reached through `tuner.storage.optuna_private.rdb_models`),
so the stored representation is exactly Optuna's. Private API is why `tests/test_optuna_private.py`
checks the tables and columns written here and `tests/test_api_asktell.py` reads every written
trial back through `optuna.load_study` and optuna-dashboard and compares it field by field.
"""


from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update

from tuner.asktell.expiry import record_heartbeats
from tuner.asktell.operations import CreateTrial, FinishTrial, Heartbeat, Operation, Outcome, SetIntermediate
from tuner.storage.optuna_private import rdb_models


class BatchCommitter:
    """Applies batches of trial operations to the database, each batch in one transaction.

    Owns no thread: `TrialWriter` drives it from a thread of this process,
    `tuner.asktell.writer_process` from a process of its own."""

    def __init__(self, storage: Any, *, synchronous_commit: bool = True) -> None:
        self._storage = storage
        self.synchronous_commit = synchronous_commit
        self._engine = _writer_engine(storage.engine, synchronous_commit)
        # PostgreSQL: the writer keeps one connection instead of checking one out of the
        # pool per batch, whose pre-ping was one more round trip on every batch.
        self._keep_connection = self._engine.dialect.name == "postgresql"
        self._conn: Any = None
        # Trials inserted by a transaction that then failed: rolled back, or committed with
        # the answer lost (the connection died during COMMIT). Either way the ask that made
        # them was answered with an error and nobody knows their numbers, so the next
        # transaction fails those that exist (still RUNNING), instead of leaving them
        # RUNNING until a restart's recovery.
        self.in_doubt: set[int] = set()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._engine is not self._storage.engine:
            self._engine.dispose()

    def run_batch(self, ops: list[Operation]) -> list[Outcome]:
        """Commit `ops` together; if that fails, redo them one by one so that one bad
        operation (a tell of a trial already finished) does not fail its neighbours."""
        try:
            return [(True, result) for result in self.commit(ops)]
        except Exception as exc:
            if len(ops) == 1:
                return [(False, exc)]
        outcomes: list[Outcome] = []
        for op in ops:
            try:
                outcomes.append((True, self.commit([op])[0]))
            except Exception as one_exc:
                outcomes.append((False, one_exc))
        return outcomes

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        if not self._keep_connection:
            with self._engine.begin() as conn:
                yield conn
            return
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self._engine.connect()
        try:
            with self._conn.begin():
                yield self._conn
        except Exception:
            # a broken connection is replaced on the next batch (SQLAlchemy invalidates
            # it on a disconnect error); any other error leaves it usable
            if self._conn.invalidated:
                self._conn.close()
                self._conn = None
            raise

    def commit(self, ops: list[Operation]) -> list[Any]:
        """Apply `ops` in one transaction: creates, then reports, then finishes.

        That order is the order the hot copy accepted them in: a report or tell names a
        trial number the client only learns after its create committed, and the hot copy
        refuses reports after a tell.
        """
        results: dict[int, Any] = {}
        creates = [(i, op) for i, op in enumerate(ops) if isinstance(op, CreateTrial)]
        reports = [op for op in ops if isinstance(op, SetIntermediate)]
        beats = [op for op in ops if isinstance(op, Heartbeat)]
        finishes = [op for op in ops if isinstance(op, FinishTrial)]
        in_doubt = sorted(self.in_doubt)
        created_ids: list[int] = []
        try:
            with self._transaction() as conn:
                if in_doubt:
                    _fail_unclaimed(conn, in_doubt)
                if creates:
                    for (i, _), created in zip(creates, _create_all(conn, [op for _, op in creates]), strict=True):
                        results[i] = created
                        created_ids.append(created[0])
                if reports or beats:
                    alive = {op.trial_id for op in [*reports, *beats]}
                    _check_running(conn, alive)
                    if reports:
                        _intermediates(conn, reports)
                    # a report is a sign of life too: it extends the trial's lease
                    record_heartbeats(conn, alive)
                if finishes:
                    _finish_all(conn, finishes)
        except Exception:
            self.in_doubt.update(created_ids)
            raise
        self.in_doubt.difference_update(in_doubt)
        return [results.get(i) for i in range(len(ops))]


def _writer_engine(shared: Any, synchronous_commit: bool) -> Any:
    """The engine the writer commits through: the storage's own, or on PostgreSQL with
    synchronous_commit off, a one-connection engine whose session has it off (so only the
    writer's commits are asynchronous, never those of the rest of the service)."""
    if synchronous_commit or shared.dialect.name != "postgresql":
        return shared
    from sqlalchemy import create_engine, event

    engine = create_engine(shared.url, pool_size=1, max_overflow=0, pool_pre_ping=True)

    def _async_commit(dbapi_connection: Any, _record: Any) -> None:
        # psycopg opens a transaction for the SET: commit it so the session setting sticks
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO off")
        dbapi_connection.commit()

    event.listen(engine, "connect", _async_commit)
    return engine


def _utcnow() -> datetime:
    # Optuna's RDBStorage stores naive UTC datetimes (see its RDB models).
    return datetime.now(UTC).replace(tzinfo=None)


class _Statements:
    """Every statement the writer runs, built once: SQLAlchemy then reuses each one's cache
    key and compiled form instead of constructing and hashing a new statement per batch
    (that construction was ~40% of the writer's CPU in the profile)."""

    def __init__(self) -> None:
        from optuna.trial import TrialState
        from sqlalchemy.dialects import postgresql, sqlite

        self.m = m = rdb_models()
        trials, studies = m.TrialModel.__table__, m.StudyModel.__table__
        self.params = m.TrialParamModel.__table__
        self.user_attrs = m.TrialUserAttributeModel.__table__
        self.system_attrs = m.TrialSystemAttributeModel.__table__
        values, inter = m.TrialValueModel.__table__, m.TrialIntermediateValueModel.__table__
        ids = bindparam("ids", expanding=True)
        self.lock_study = select(studies.c.study_id).where(studies.c.study_id == bindparam("study_id")).with_for_update()
        self.count_trials = select(func.count()).select_from(trials).where(trials.c.study_id == bindparam("study_id"))
        self.insert_trial = insert(trials)
        self.insert_trials = insert(trials).returning(trials.c.trial_id, sort_by_parameter_order=True)
        self.insert_params = insert(self.params)
        self.insert_user_attrs = insert(self.user_attrs)
        self.insert_system_attrs = insert(self.system_attrs)
        self.lock_trials = select(trials.c.trial_id, trials.c.state).where(trials.c.trial_id.in_(ids)).with_for_update()
        self.delete_user_attrs = delete(self.user_attrs).where(
            self.user_attrs.c.trial_id.in_(ids), self.user_attrs.c.key.in_(bindparam("keys", expanding=True))
        )
        self.upsert_user_attrs = {}  # dialect name -> INSERT .. ON CONFLICT (trial_id, key) DO UPDATE
        for dialect in (postgresql, sqlite):
            upsert = dialect.insert(self.user_attrs)
            self.upsert_user_attrs[dialect.dialect.name] = upsert.on_conflict_do_update(
                index_elements=[self.user_attrs.c.trial_id, self.user_attrs.c.key],
                set_={"value_json": upsert.excluded.value_json},
            )
        self.insert_values = insert(values)
        self.delete_intermediate = delete(inter).where(inter.c.trial_id == bindparam("b_trial_id"), inter.c.step == bindparam("b_step"))
        self.insert_intermediate = insert(inter)
        # Only a RUNNING trial is finished; the row count says whether all of them were.
        self.finish_trial = (
            update(trials)
            .where(trials.c.trial_id == bindparam("b_trial_id"), trials.c.state == TrialState.RUNNING)
            .values(state=bindparam("b_state"), datetime_complete=bindparam("b_complete"))
        )


@functools.cache
def _stmts() -> _Statements:
    return _Statements()


def _create_all(conn: Any, ops: list[CreateTrial]) -> list[tuple[int, int]]:
    """Insert new RUNNING trials; numbers continue each study's count, as Optuna's do."""
    from optuna.distributions import distribution_to_json
    from optuna.trial import TrialState

    st = _stmts()
    next_number: dict[int, int] = {}
    for study_id in sorted({op.study_id for op in ops}):
        # The study-row lock Optuna's own create_new_trial takes: numbers stay unique even
        # when another process (a CLI run) adds trials to the same study.
        # Two statements, not one: in READ COMMITTED a count in the locking statement would
        # be read from the snapshot taken before the lock wait and miss the trials the
        # lock holder just added; the separate count gets a fresh snapshot.
        conn.execute(st.lock_study, {"study_id": study_id})
        next_number[study_id] = conn.execute(st.count_trials, {"study_id": study_id}).scalar_one()
    now = _utcnow()
    rows = []
    for op in ops:
        rows.append(
            {"number": next_number[op.study_id], "study_id": op.study_id, "state": TrialState.RUNNING, "datetime_start": now}
        )
        next_number[op.study_id] += 1
    if len(rows) == 1:
        ids = [conn.execute(st.insert_trial, rows[0]).inserted_primary_key[0]]
    else:  # one multi-row INSERT .. RETURNING, ids in the order of `rows`
        ids = list(conn.execute(st.insert_trials, rows).scalars())
    params, user_attrs, system_attrs = [], [], []
    for op, trial_id in zip(ops, ids, strict=True):
        t = op.template
        params += [
            {
                "trial_id": trial_id,
                "param_name": name,
                "param_value": t.distributions[name].to_internal_repr(value),
                "distribution_json": distribution_to_json(t.distributions[name]),
            }
            for name, value in t.params.items()
        ]
        user_attrs += _attr_rows(trial_id, t.user_attrs)
        system_attrs += _attr_rows(trial_id, t.system_attrs)
    for stmt, table_rows in (
        (st.insert_params, params),
        (st.insert_user_attrs, user_attrs),
        (st.insert_system_attrs, system_attrs),
    ):
        if table_rows:
            conn.execute(stmt, table_rows)
    return [(trial_id, row["number"]) for trial_id, row in zip(ids, rows, strict=True)]


def _attr_rows(trial_id: int, attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]


def _check_running(conn: Any, trial_ids: set[int]) -> None:
    """Lock the trials about to change; refuse the batch if one is missing or finished.

    A refused batch is retried op by op (`BatchCommitter.run_batch`), so only the operation
    on the finished trial fails.
    """
    from optuna.exceptions import UpdateFinishedTrialError

    ids = sorted(trial_ids)  # a fixed lock order: two writers never deadlock on rows
    states = dict(conn.execute(_stmts().lock_trials, {"ids": ids}).all())
    for trial_id in ids:
        state = states.get(trial_id)
        if state is None:
            raise KeyError(f"no trial with id {trial_id}")
        if state.is_finished():
            raise UpdateFinishedTrialError(f"trial {trial_id} is already finished ({state.name})")


def _fail_unclaimed(conn: Any, trial_ids: list[int]) -> None:
    """FAIL those of `trial_ids` that exist and are RUNNING (see `BatchCommitter.in_doubt`)."""
    from optuna.trial import TrialState

    now = _utcnow()
    conn.execute(_stmts().finish_trial, [{"b_trial_id": i, "b_state": TrialState.FAIL, "b_complete": now} for i in trial_ids])


def _intermediates(conn: Any, ops: list[SetIntermediate]) -> None:
    st = _stmts()
    model = st.m.TrialIntermediateValueModel
    latest = {(op.trial_id, op.step): op.value for op in ops}  # the last report of a step wins
    conn.execute(st.delete_intermediate, [{"b_trial_id": t, "b_step": s} for t, s in latest])
    rows = []
    for (trial_id, step), value in latest.items():
        stored, kind = model.intermediate_value_to_stored_repr(value)
        rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind})
    conn.execute(st.insert_intermediate, rows)


def _finish_all(conn: Any, ops: list[FinishTrial]) -> None:
    """Close the trials first (UPDATE .. WHERE state = RUNNING, which also locks their
    rows), then store attrs and values: one round trip less than a SELECT .. FOR UPDATE."""
    from optuna.exceptions import UpdateFinishedTrialError

    st = _stmts()
    ops = sorted(ops, key=lambda op: op.trial_id)  # a fixed lock order: writers never deadlock on rows
    now = _utcnow()
    closed = conn.execute(st.finish_trial, [{"b_trial_id": op.trial_id, "b_state": op.state, "b_complete": now} for op in ops])
    if closed.rowcount != len(ops):
        # the whole batch rolls back and is retried op by op: only the stale one fails
        raise UpdateFinishedTrialError(f"{len(ops) - closed.rowcount} of trials {[op.trial_id for op in ops]} are not running")
    ids = [op.trial_id for op in ops]
    keys = sorted({k for op in ops for k in op.user_attrs})
    if keys:
        rows = [row for op in ops for row in _attr_rows(op.trial_id, op.user_attrs)]
        upsert = st.upsert_user_attrs.get(conn.dialect.name)
        if upsert is not None:  # one round trip instead of DELETE + INSERT
            conn.execute(upsert, rows)
        else:
            conn.execute(st.delete_user_attrs, {"ids": ids, "keys": keys})
            conn.execute(st.insert_user_attrs, rows)
    value_rows = []
    for op in ops:
        for objective, value in enumerate(op.values or []):
            stored, kind = st.m.TrialValueModel.value_to_stored_repr(value)
            value_rows.append({"trial_id": op.trial_id, "objective": objective, "value": stored, "value_type": kind})
    if value_rows:
        # No DELETE first: these trials were RUNNING a statement ago, and Optuna never
        # stores values before a trial finishes, so there is nothing to replace.
        conn.execute(st.insert_values, value_rows)


__all__ = ["BatchCommitter"]

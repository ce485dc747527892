"""Durable-first ask/tell (issue 16): nothing in the hot copy says a trial is finished before
the database does; a retried tell succeeds; the same tell again is answered again, another
outcome is a conflict; and a second hot copy of the same study (another server) serves
reports and tells of trials it did not hand out, and its sampler learns of them."""

from __future__ import annotations

import asyncio

import optuna
import pytest
from sqlalchemy.exc import OperationalError

from tuner.asktell import AskTellService
from tuner.asktell import hot_study as hot_study_module
from tuner.asktell.operations import FinishTrial, SetIntermediate
from tuner.errors import ConflictError, TrialNotFoundError
from tuner.space.search_space import SearchSpace
from tuner.storage.rdb import open_storage
from tuner.study.spec import StudySpec
from tuner.types import TrialConfig

SPACE = {"name": "durable", "params": {"micro_batch_size": {"type": "int", "low": 1, "high": 64}}}


def _spec(name: str, sampler: str = "random") -> StudySpec:
    return StudySpec(name=name, workload="external", space=SearchSpace.from_dict(SPACE), sampler=sampler, seed=3)


def _create(tmp_path, name: str, sampler: str = "random") -> tuple[str, StudySpec]:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'd.db'}"
    spec = _spec(name, sampler)
    optuna.create_study(study_name=name, storage=url, directions=spec.directions)
    return url, spec


def _service(url: str, *, sampler_process: bool = False) -> AskTellService:
    return AskTellService(open_storage(url), writer_process=False, sampler_process=sampler_process, sample_ahead=True)


class _Outage:
    """Makes the in-process writer fail batches holding a given operation type, either
    before committing (the database is down) or after (the commit happened, its answer
    was lost: what a connection dropped during COMMIT looks like to the server)."""

    def __init__(self, service: AskTellService, kind: type, *, after_commit: bool = False) -> None:
        self.writer = service.writer
        self.kind = kind
        self.after_commit = after_commit
        self.failures = 0
        self._apply = self.writer._apply  # type: ignore[attr-defined]
        self.writer._apply = self._failing  # type: ignore[method-assign]

    def _failing(self, ops):  # type: ignore[no-untyped-def]
        if not any(isinstance(op, self.kind) for op in ops):
            return self._apply(ops)
        self.failures += 1
        if self.after_commit:
            self._apply(ops)
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))

    def end(self) -> None:
        self.writer._apply = self._apply  # type: ignore[method-assign]


def _db_state(url: str, name: str, number: int) -> str:
    return optuna.load_study(study_name=name, storage=url).trials[number].state.name


def _memory_state(hot, number: int) -> str:  # type: ignore[no-untyped-def]
    ref = hot._refs[number]
    return hot._memory_storage.get_trial(ref.memory_trial_id).state.name


def test_a_tell_whose_write_fails_leaves_the_trial_running_and_its_retry_succeeds(tmp_path):
    url, spec = _create(tmp_path, "outage")
    service = _service(url)
    try:
        hot = service.hot("outage", spec, TrialConfig(), accepting=True)
        asked = asyncio.run(hot.ask())
        outage = _Outage(service, FinishTrial)
        with pytest.raises(OperationalError):
            asyncio.run(hot.tell(asked.number, [10.0]))
        # durable first: neither the hot copy nor the database says finished
        assert _memory_state(hot, asked.number) == "RUNNING"
        assert _db_state(url, "outage", asked.number) == "RUNNING"
        with pytest.raises(OperationalError):  # still down: the same again
            asyncio.run(hot.tell(asked.number, [10.0]))
        outage.end()
        assert asyncio.run(hot.tell(asked.number, [10.0])) == "COMPLETE"
        assert _memory_state(hot, asked.number) == "COMPLETE"
        assert _db_state(url, "outage", asked.number) == "COMPLETE"
        assert optuna.load_study(study_name="outage", storage=url).trials[asked.number].values == [10.0]
        # a retry after the success: the same answer; other values: a conflict
        assert asyncio.run(hot.tell(asked.number, [10.0])) == "COMPLETE"
        with pytest.raises(ConflictError) as other:
            asyncio.run(hot.tell(asked.number, [11.0]))
        assert other.value.problems[0].field == "trial_number" and "another outcome" in other.value.problems[0].problem
        with pytest.raises(ConflictError):  # same values, other status: another outcome too
            asyncio.run(hot.tell(asked.number, None, status="failed", reason="oom"))
        # the sampler goes on: the next asks are new trials
        assert asyncio.run(hot.ask()).number == asked.number + 1
    finally:
        service.close()


def test_a_tell_committed_whose_answer_was_lost_is_answered_again_on_retry(tmp_path):
    url, spec = _create(tmp_path, "lost")
    service = _service(url)
    try:
        hot = service.hot("lost", spec, TrialConfig(), accepting=True)
        asked = asyncio.run(hot.ask())
        outage = _Outage(service, FinishTrial, after_commit=True)
        with pytest.raises(OperationalError):
            asyncio.run(hot.tell(asked.number, None, status="pruned", reason="slow"))
        outage.end()
        assert outage.failures == 1
        assert _memory_state(hot, asked.number) == "RUNNING"  # the server cannot know it committed
        assert _db_state(url, "lost", asked.number) == "PRUNED"
        # the retry: the database refuses the finish, the row read back carries this outcome
        assert asyncio.run(hot.tell(asked.number, None, status="pruned", reason="slow")) == "PRUNED"
        assert _memory_state(hot, asked.number) == "PRUNED"  # and the hot copy learned it
        with pytest.raises(ConflictError):
            asyncio.run(hot.tell(asked.number, None, status="pruned", reason="other reason"))
    finally:
        service.close()


def test_a_lost_answer_with_other_values_on_retry_is_a_conflict_and_the_copy_keeps_the_stored_one(tmp_path):
    url, spec = _create(tmp_path, "lostother")
    service = _service(url)
    try:
        hot = service.hot("lostother", spec, TrialConfig(), accepting=True)
        asked = asyncio.run(hot.ask())
        outage = _Outage(service, FinishTrial, after_commit=True)
        with pytest.raises(OperationalError):
            asyncio.run(hot.tell(asked.number, [5.0]))
        outage.end()
        with pytest.raises(ConflictError):
            asyncio.run(hot.tell(asked.number, [6.0]))
        assert hot.memory.trials[hot._refs[asked.number].memory_number].values == [5.0]
    finally:
        service.close()


def test_a_report_whose_write_fails_is_not_in_the_hot_copy(tmp_path):
    url, spec = _create(tmp_path, "report")
    service = _service(url)
    try:
        hot = service.hot("report", spec, TrialConfig(), accepting=True)
        asked = asyncio.run(hot.ask())
        outage = _Outage(service, SetIntermediate)
        with pytest.raises(OperationalError):
            asyncio.run(hot.report(asked.number, 1, 3.0))
        assert hot.memory.trials[hot._refs[asked.number].memory_number].intermediate_values == {}
        outage.end()
        assert asyncio.run(hot.report(asked.number, 1, 3.0)) is False
        assert hot.memory.trials[hot._refs[asked.number].memory_number].intermediate_values == {1: 3.0}
        assert optuna.load_study(study_name="report", storage=url).trials[asked.number].intermediate_values == {1: 3.0}
    finally:
        service.close()


@pytest.mark.parametrize("sampler_process", [False, True], ids=["in-server", "sampler-process"])
def test_two_hot_copies_of_one_study_serve_each_others_trials(tmp_path, monkeypatch, sampler_process):
    """Two services on one database = two API replicas: numbers never collide, either
    takes reports and tells of the other's trials, and each sampler sees them."""
    monkeypatch.setattr(hot_study_module, "REFRESH_INTERVAL_S", 0.0)
    sampler = "tpe" if sampler_process else "random"  # TPE samples in the sampler process
    url, spec = _create(tmp_path, "replicas", sampler)
    first, second = _service(url, sampler_process=sampler_process), _service(url, sampler_process=sampler_process)
    try:
        a = first.hot("replicas", spec, TrialConfig(), accepting=True)
        b = second.hot("replicas", spec, TrialConfig(), accepting=True)
        numbers = []
        for i in range(12):
            asker, teller = (a, b) if i % 2 == 0 else (b, a)
            asked = asyncio.run(asker.ask())
            numbers.append(asked.number)
            assert asyncio.run(teller.report(asked.number, 1, float(i))) is False
            assert asyncio.run(teller.tell(asked.number, [float(i)])) == "COMPLETE"
            # the asker's copy still has it RUNNING: the same tell there is answered from
            # the database's row, and the copy takes the stored result
            assert asyncio.run(asker.tell(asked.number, [float(i)])) == "COMPLETE"
            with pytest.raises(ConflictError):
                asyncio.run(asker.tell(asked.number, [float(i) + 0.5]))
            with pytest.raises(ConflictError):
                asyncio.run(asker.report(asked.number, 2, 1.0))
        assert sorted(numbers) == list(range(12)) and len(set(numbers)) == 12
        assert a.shared and b.shared
        # one more ask each refreshes the copy: both see all 12 finished trials (and the
        # sampler replica took the other server's trials at the same numbers: no error)
        for hot in (a, b):
            asyncio.run(hot.ask())
            finished = [t for t in hot.memory.trials if t.state.name == "COMPLETE"]
            assert sorted(t.values[0] for t in finished) == [float(i) for i in range(12)]
        stored = optuna.load_study(study_name="replicas", storage=url).trials
        assert [t.state.name for t in stored[:12]] == ["COMPLETE"] * 12
        assert [t.values for t in stored[:12]] == [[float(i)] for i in range(12)]
        assert [t.intermediate_values for t in stored[:12]] == [{1: float(i)} for i in range(12)]
        with pytest.raises(TrialNotFoundError):  # a number no server handed out is still 404
            asyncio.run(a.tell(99, [1.0]))
    finally:
        first.close()
        second.close()


def test_a_single_copy_never_refreshes(tmp_path, monkeypatch):
    """One server per study pays nothing: no refresh query unless another writer showed up."""
    monkeypatch.setattr(hot_study_module, "REFRESH_INTERVAL_S", 0.0)
    url, spec = _create(tmp_path, "alone")
    service = _service(url)
    calls: list[int] = []
    real = hot_study_module.trials_since
    monkeypatch.setattr(hot_study_module, "trials_since", lambda *a: calls.append(1) or real(*a))
    try:
        hot = service.hot("alone", spec, TrialConfig(), accepting=True)
        for i in range(5):
            asyncio.run(hot.tell(asyncio.run(hot.ask()).number, [float(i)]))
        assert calls == [] and not hot.shared
    finally:
        service.close()


def test_a_copy_finds_the_other_servers_trial_below_its_own_newer_one(tmp_path):
    """A hands out 0, B hands out 1, then B is told 0: B's own newer trial must not hide
    the other server's older one from its refresh."""
    url, spec = _create(tmp_path, "order")
    first, second = _service(url), _service(url)
    try:
        a = first.hot("order", spec, TrialConfig(), accepting=True)
        b = second.hot("order", spec, TrialConfig(), accepting=True)
        zero, one = asyncio.run(a.ask()), asyncio.run(b.ask())
        assert (zero.number, one.number) == (0, 1)
        assert asyncio.run(b.tell(zero.number, [1.0])) == "COMPLETE"
        assert asyncio.run(a.tell(one.number, [2.0])) == "COMPLETE"
        assert [t.state.name for t in optuna.load_study(study_name="order", storage=url).trials] == ["COMPLETE"] * 2
    finally:
        first.close()
        second.close()


def test_a_create_committed_whose_answer_was_lost_is_failed_by_the_next_transaction(tmp_path, monkeypatch):
    """The ask was answered with an error, so nobody can tell the trial: the committer
    fails it with its next transaction instead of leaving it RUNNING."""
    import contextlib

    from tests._api_support import trial_template
    from tuner.asktell.batch_commit import BatchCommitter
    from tuner.asktell.operations import CreateTrial

    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = optuna.create_study(study_name="doubt", storage=url)
    storage = open_storage(url)
    sid = storage.get_study_id_from_name("doubt")
    committer = BatchCommitter(storage)
    real = committer._transaction

    @contextlib.contextmanager
    def commit_then_lose_the_answer():  # type: ignore[no-untyped-def]
        with real() as conn:
            yield conn
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))

    monkeypatch.setattr(committer, "_transaction", commit_then_lose_the_answer)
    with pytest.raises(OperationalError):
        committer.commit([CreateTrial(sid, trial_template(1.0)), CreateTrial(sid, trial_template(2.0))])
    assert [t.state.name for t in study.trials] == ["RUNNING", "RUNNING"] and len(committer.in_doubt) == 2
    monkeypatch.setattr(committer, "_transaction", real)
    (kept_id, kept_number), = committer.commit([CreateTrial(sid, trial_template(3.0))])
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "RUNNING"] and kept_number == 2
    assert all(t.datetime_complete is not None for t in study.trials[:2])  # failed with a time, as Optuna does
    assert committer.in_doubt == set()
    # a transaction that failed before committing leaves nothing to fail: rows rolled back
    with pytest.raises(KeyError, match="no trial with id 10000"):
        committer.commit([CreateTrial(sid, trial_template(4.0)), SetIntermediate(10_000, 1, 1.0)])
    assert len(committer.in_doubt) == 1
    committer.commit([SetIntermediate(kept_id, 1, 1.0)])
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "RUNNING"] and committer.in_doubt == set()
    # a report after the tell is refused by the database too, naming the trial and its state
    committer.commit([FinishTrial(kept_id, optuna.trial.TrialState.COMPLETE, [1.0])])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match=rf"trial {kept_id} is already finished \(COMPLETE\)"):
        committer.commit([SetIntermediate(kept_id, 2, 1.0)])
    committer.close()


def test_the_database_refuses_creates_beyond_n_trials_counting_only_trials_that_count(tmp_path):
    """The budget check every server's creates pass under the study-row lock: trials of
    another kind (abandoned, surplus) and enqueued WAITING ones do not count; a batch that
    would exceed the budget is refused whole before inserting anything, and `run_batch`
    then lets in the creates that still fit."""
    from tests._api_support import trial_template
    from tuner.asktell.batch_commit import BatchCommitter
    from tuner.asktell.operations import CreateTrial, TrialBudgetFull

    url = f"sqlite:///{tmp_path / 'b.db'}"
    study = optuna.create_study(study_name="budget", storage=url)
    study.enqueue_trial({"x": 1.0})  # WAITING: not counted
    storage = open_storage(url)
    sid = storage.get_study_id_from_name("budget")
    committer = BatchCommitter(storage)
    committer.commit([CreateTrial(sid, trial_template(1.0, **{"tuner.kind": "abandoned"}), 2)])  # not counted
    committer.commit([CreateTrial(sid, trial_template(2.0, loss=-1), 2)])  # counted: other attrs do not make it another kind
    with pytest.raises(TrialBudgetFull) as full:
        committer.commit([CreateTrial(sid, trial_template(3.0), 2), CreateTrial(sid, trial_template(4.0), 2)])
    assert full.value.n_trials == 2 and str(full.value) == "the study holds its n_trials=2 trials already"
    assert len(study.trials) == 3 and committer.in_doubt == set()  # nothing inserted
    outcomes = committer.run_batch([CreateTrial(sid, trial_template(5.0), 2), CreateTrial(sid, trial_template(6.0), 2)])
    assert outcomes[0] == (True, outcomes[0][1]) and outcomes[0][1][1] == 3  # numbered after every trial
    assert outcomes[1][0] is False and isinstance(outcomes[1][1], TrialBudgetFull)
    assert [t.params.get("x") for t in study.trials] == [None, 1.0, 2.0, 5.0]  # the WAITING one has no params yet
    committer.commit([CreateTrial(sid, trial_template(7.0))])  # no budget given: not checked
    import pickle

    assert pickle.loads(pickle.dumps(TrialBudgetFull(2))).n_trials == 2  # crosses the writer process's pipe
    # only the kind attr makes a trial another kind: a trial with other attrs fills a budget of 1
    optuna.create_study(study_name="budget-attrs", storage=url)
    other = storage.get_study_id_from_name("budget-attrs")
    committer.commit([CreateTrial(other, trial_template(1.0, loss=-1), 1)])
    with pytest.raises(TrialBudgetFull):
        committer.commit([CreateTrial(other, trial_template(2.0), 1)])
    committer.close()


def test_a_report_replaces_only_its_own_trial_and_step(tmp_path):
    """A re-sent report replaces that one (trial, step) value: the other steps of the trial
    and the same step of other trials are kept (the writer deletes before it inserts)."""
    from tests._api_support import trial_template
    from tuner.asktell.batch_commit import BatchCommitter
    from tuner.asktell.operations import CreateTrial

    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(study_name="reports", storage=url)
    storage = open_storage(url)
    committer = BatchCommitter(storage)
    sid = storage.get_study_id_from_name("reports")
    optuna.create_study(study_name="other", storage=url)  # creates for two studies in one batch, the first without a budget
    first, second = trial_template(1.0), trial_template(2.0)
    first.system_attrs, second.system_attrs = {"fixed_params": {"x": 1.0}}, {"fixed_params": {"x": 2.0}}
    (a, _), (b, _), _ = committer.commit([CreateTrial(sid, first), CreateTrial(sid, second),
                                          CreateTrial(storage.get_study_id_from_name("other"), trial_template(3.0), 5)])
    committer.commit([SetIntermediate(a, 1, 1.0), SetIntermediate(b, 1, 2.0), SetIntermediate(a, 2, 3.0)])
    committer.commit([SetIntermediate(a, 1, 4.0)])  # trial a's step 1 again
    assert [t.intermediate_values for t in study.trials] == [{1: 4.0, 2: 3.0}, {1: 2.0}]
    assert all(t.datetime_start is not None for t in study.trials)  # created with a start time, as Optuna does
    assert [t.system_attrs for t in study.trials] == [{"fixed_params": {"x": 1.0}}, {"fixed_params": {"x": 2.0}}]
    assert [t.params for t in study.trials] == [{"x": 1.0}, {"x": 2.0}]  # every trial of the batch has its params
    committer.close()


@pytest.mark.parametrize("upsert", ["on-conflict", "delete-insert"])
def test_a_batch_of_tells_stores_every_value_attr_and_completion_time(tmp_path, monkeypatch, upsert):
    """Two tells in one batch, given out of trial order: both COMPLETE with their values,
    their metrics replacing the attrs set at the ask, and a completion time. `delete-insert`
    is the path of a database without INSERT .. ON CONFLICT (MySQL), run here on SQLite."""
    from tests._api_support import trial_template
    from tuner.asktell import batch_commit
    from tuner.asktell.batch_commit import BatchCommitter
    from tuner.asktell.operations import CreateTrial

    url = f"sqlite:///{tmp_path / 'f.db'}"
    study = optuna.create_study(study_name="tells", storage=url)
    storage = open_storage(url)
    sid = storage.get_study_id_from_name("tells")
    if upsert == "delete-insert":
        monkeypatch.delitem(batch_commit._stmts().upsert_user_attrs, "sqlite")
    committer = BatchCommitter(storage)
    (a, _), (b, _), (c, _) = committer.commit([CreateTrial(sid, trial_template(x, loss=-1)) for x in (1.0, 2.0, 3.0)])
    complete = optuna.trial.TrialState.COMPLETE
    committer.commit([FinishTrial(b, complete, [0.5], {"loss": 0.5}), FinishTrial(a, complete, [0.25], {"loss": 0.25})])
    first, second, untold = study.trials
    assert [t.number for t in study.trials] == [0, 1, 2]  # one batch of creates, one number each
    assert (first.values, first.user_attrs["loss"], second.values, second.user_attrs["loss"]) == ([0.25], 0.25, [0.5], 0.5)
    assert first.user_attrs["tuner.kind"] == "trial" and first.datetime_complete is not None and second.datetime_complete is not None
    assert untold.user_attrs["loss"] == -1  # a trial outside the batch keeps its attrs
    # a second tell of a finished trial changes nothing, and says which trials were not running
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match=rf"1 of trials \[{a}\] are not running"):
        committer.commit([FinishTrial(a, optuna.trial.TrialState.FAIL, None)])
    assert study.trials[0].state == complete and study.trials[0].values == [0.25]
    # in a batch only the stale tell is counted, and the batch rolls back whole (run_batch redoes it op by op)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match=rf"1 of trials \[{a}, {c}\] are not running"):
        committer.commit([FinishTrial(a, optuna.trial.TrialState.FAIL, None), FinishTrial(c, complete, [1.0], {"loss": 1.0})])
    assert study.trials[2].state == optuna.trial.TrialState.RUNNING and study.trials[2].user_attrs["loss"] == -1
    committer.close()

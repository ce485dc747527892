"""The ask/tell engine used directly, without the service: typed answers and tuner errors."""

from __future__ import annotations

import asyncio
import dataclasses

import optuna
import pytest

from tuner.asktell import AskedTrial, AskTellService, require_ask_tell
from tuner.errors import ConflictError, NotAskTellStudyError, TrialNotFoundError, ValidationError
from tuner.space.search_space import SearchSpace
from tuner.storage.rdb import open_storage
from tuner.study.spec import StudySpec
from tuner.types import TrialConfig, TrialResult, TrialStatus

SPACE = {"name": "engine", "params": {"micro_batch_size": {"type": "int", "low": 1, "high": 16}}}


def _service(tmp_path, name: str, n_trials: int = 5, objectives=("throughput",)):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'e.db'}"
    spec = StudySpec(
        name=name, workload="external", space=SearchSpace.from_dict(SPACE), n_trials=n_trials, sampler="random",
        seed=1, objectives=tuple(objectives),
    )
    optuna.create_study(study_name=name, storage=url, directions=spec.directions)
    service = AskTellService(open_storage(url), writer_process=False, sampler_process=False)
    return url, service, service.hot(name, spec, TrialConfig(), accepting=True)


def test_ask_answers_a_frozen_typed_trial_and_tell_takes_a_trial_result(tmp_path):
    url, service, hot = _service(tmp_path, "typed")
    try:
        asked = asyncio.run(hot.ask())
        assert isinstance(asked, AskedTrial) and isinstance(asked.config, TrialConfig)
        assert asked.number == 0 and asked.config.micro_batch_size == asked.params["micro_batch_size"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            asked.number = 3  # type: ignore[misc]
        state = asyncio.run(hot.tell(asked.number, TrialResult(status=TrialStatus.OK, items_per_s=123.0)))
        assert state == "COMPLETE"
        pruned = asyncio.run(hot.ask())
        assert asyncio.run(hot.tell(pruned.number, TrialResult(status=TrialStatus.PRUNED, reason="slow"))) == "PRUNED"
    finally:
        service.close()
    trials = optuna.load_study(study_name="typed", storage=url).trials
    assert [(t.state.name, t.values) for t in trials] == [("COMPLETE", [123.0]), ("PRUNED", None)]
    assert trials[0].user_attrs["tuner.result"]["items_per_s"] == 123.0
    assert trials[1].user_attrs["tuner.result"]["reason"] == "slow"


def test_a_trial_result_without_the_objective_is_refused(tmp_path):
    _, service, hot = _service(tmp_path, "missing", objectives=("throughput", "val_loss"))
    try:
        asked = asyncio.run(hot.ask())
        with pytest.raises(ValidationError) as caught:
            asyncio.run(hot.tell(asked.number, TrialResult(status=TrialStatus.OK, items_per_s=5.0)))
        assert [p.field for p in caught.value.problems] == ["result.val_loss"]
    finally:
        service.close()


def test_engine_errors_are_tuner_errors_with_field_value_and_fix(tmp_path):
    _, service, hot = _service(tmp_path, "errors", n_trials=1)
    try:
        with pytest.raises(TrialNotFoundError) as missing:
            asyncio.run(hot.tell(7, [1.0]))
        assert (missing.value.problems[0].field, missing.value.problems[0].value) == ("trial_number", 7)
        assert "ask for a trial first" in missing.value.problems[0].fix and not missing.value.retryable
        asked = asyncio.run(hot.ask())
        asyncio.run(hot.tell(asked.number, [1.0]))
        # issue 16: the same tell again is a retry (answered again); other values conflict
        assert asyncio.run(hot.tell(asked.number, [1.0])) == "COMPLETE"
        with pytest.raises(ConflictError) as twice:
            asyncio.run(hot.tell(asked.number, [2.0]))
        assert twice.value.problems[0].field == "trial_number" and not twice.value.retryable
        with pytest.raises(ConflictError) as used_up:
            asyncio.run(hot.ask())
        assert used_up.value.problems[0].field == "n_trials"
    finally:
        service.close()


def test_require_ask_tell_and_the_loaded_hook(tmp_path):
    require_ask_tell("ask_tell", "s")
    with pytest.raises(NotAskTellStudyError) as caught:
        require_ask_tell("run", "s")
    assert isinstance(caught.value, ConflictError) and caught.value.problems[0].field == "study"
    url = f"sqlite:///{tmp_path / 'h.db'}"
    spec = StudySpec(name="h", workload="external", space=SearchSpace.from_dict(SPACE), sampler="random")
    optuna.create_study(study_name="h", storage=url, directions=spec.directions)
    loaded: list[int] = []
    service = AskTellService(
        open_storage(url), writer_process=False, sampler_process=False, on_study_loaded=lambda: loaded.append(1)
    )
    try:
        first = service.hot("h", spec, TrialConfig(), accepting=True)
        assert service.hot("h", spec, TrialConfig(), accepting=True) is first
        assert loaded == [1]  # once per hot copy built, not per use
    finally:
        service.close()

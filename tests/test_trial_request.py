"""One typed `TrialRequest` from the study loop to the workload; params resolved once.

Real workloads, a real worker process and a real SQLite study: the counting workload is
a subclass of the replay workload, not a mock.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import optuna
import pytest

from tests.shared_data import H200_DIR
from tuner.errors import ValidationError
from tuner.executors.inline import InlineExecutor
from tuner.executors.local import LocalExecutor
from tuner.space.search_space import load_space
from tuner.study import run_study
from tuner.study.attrs import StudyAttr
from tuner.study.spec import StudySpec
from tuner.trial_request import NullReporter, Reporter, TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import Workload, WorkloadParam, get_workload, register_workload
from tuner.workloads.replay import ReplayWorkload

TABLE = H200_DIR / "gpt_124m.jsonl"
SPACE = {
    "name": "replay-counted",
    "params": {"micro_batch_size": {"type": "categorical", "choices": [8, 16, 32]}},
}


@register_workload
class EchoRequest(Workload):
    """Sends back, as telemetry, the request exactly as the worker process received it."""

    name = "echo-request"
    params = (WorkloadParam("width", "int", 3, "any param, to see it arrive resolved"),)

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        assert isinstance(request, TrialRequest)  # typed on this side too, not a dict
        return TrialResult(
            status=TrialStatus.OK, items_per_s=1.0, steps_run=1, telemetry={"request": request.to_dict()}
        )


@register_workload
class CountingReplay(ReplayWorkload):
    """The replay workload, counting how often its params are resolved (per class)."""

    name = "replay-counting"
    resolved: ClassVar[int] = 0

    def resolve_params(self, given: Any = None) -> dict[str, Any]:
        type(self).resolved += 1
        return super().resolve_params(given)


def counted_spec(name: str, **changes: Any) -> StudySpec:
    fields: dict[str, Any] = {
        "name": name,
        "workload": CountingReplay.name,
        "space": load_space(SPACE),
        "workload_params": {"table": str(TABLE)},  # raw: "hardware" left to its default
        "n_trials": 3,
        "budget": TrialBudget(max_steps=4, warmup_steps=2),
        "sampler": "grid",
    }
    fields.update(changes)
    return StudySpec(**fields)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def test_a_request_round_trips_to_dict_and_from_dict_through_a_worker_process() -> None:
    request = TrialRequest(
        trial_number=7,
        workload=EchoRequest.name,
        params=EchoRequest().resolve_params({"width": 5}),
        config=TrialConfig(micro_batch_size=4, precision="bf16", gradient_accumulation_steps=2),
        budget=TrialBudget(max_steps=6, warmup_steps=1, max_seconds=2.5, report_every=2),
        seed=11,
        device="cpu",
        peak_flops=1.5e12,
    )
    assert TrialRequest.from_dict(request.to_dict()) == request
    with LocalExecutor(workers=1, device="cpu", trial_timeout_s=30) as executor:
        result = executor.submit(request).result()
    assert result.ok, result.reason
    received = result.telemetry["request"]
    assert TrialRequest.from_dict(received) == request
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 3  # type: ignore[misc]


def test_the_workload_signature_is_the_request_and_a_reporter() -> None:
    workload = get_workload(EchoRequest.name)
    request = TrialRequest(0, EchoRequest.name, {"width": 3}, TrialConfig(), TrialBudget())
    result = workload.run_trial(request, NullReporter())
    assert result.telemetry["request"] == request.to_dict()


def test_a_study_resolves_its_params_once_and_stores_them_resolved(storage: str) -> None:
    CountingReplay.resolved = 0
    with InlineExecutor(1) as executor:  # trials in this process, so every call is counted
        outcome = run_study(counted_spec("counted"), storage=storage, executor=executor, confirm=0)
    assert outcome.n_complete == 3
    # baseline, generator (shape, measured_on), 3 trial requests, runner: one resolution
    assert CountingReplay.resolved == 1
    study = optuna.load_study(study_name="counted", storage=storage)
    stored = study.user_attrs[StudyAttr.SPEC]["workload_params"]
    assert stored == {"table": str(TABLE), "hardware": ""}

    # Resuming resolves the given spec once more, and the stored (resolved) params match it.
    CountingReplay.resolved = 0
    with InlineExecutor(1) as executor:
        run_study(counted_spec("counted", n_trials=4), storage=storage, executor=executor, confirm=0)
    assert CountingReplay.resolved == 1


def test_a_study_stored_with_unresolved_params_still_resumes(storage: str) -> None:
    # A study created before specs were resolved on creation stored the user's params as
    # given ({"table": ...} without "hardware"); resuming it must not be a conflict.
    old = counted_spec("old-study", use_generator=False)
    study = optuna.create_study(study_name="old-study", storage=storage, directions=old.directions)
    study.set_user_attr(StudyAttr.SPEC, old.to_dict())
    assert study.user_attrs[StudyAttr.SPEC]["workload_params"] == {"table": str(TABLE)}

    with InlineExecutor(1) as executor:
        outcome = run_study(old, storage=storage, executor=executor, confirm=0)
    assert outcome.n_complete == 3
    stored = optuna.load_study(study_name="old-study", storage=storage).user_attrs[StudyAttr.SPEC]
    assert stored["workload_params"] == {"table": str(TABLE), "hardware": ""}  # rewritten resolved


def test_resuming_with_really_different_params_is_still_refused(storage: str, tmp_path: Path) -> None:
    old = counted_spec("changed", use_generator=False)
    study = optuna.create_study(study_name="changed", storage=storage, directions=old.directions)
    study.set_user_attr(StudyAttr.SPEC, old.to_dict())  # unresolved, as an older tuner stored it
    other_table = tmp_path / TABLE.name
    other_table.write_text(TABLE.read_text())
    changed = dataclasses.replace(old, workload_params={"table": str(other_table)})
    with pytest.raises(ValidationError, match="workload_params"):
        run_study(changed, storage=storage, executor=InlineExecutor(1), confirm=0)


def test_run_study_loads_the_optuna_study_once(storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_create, real_load = optuna.create_study, optuna.load_study

    def create(*args: Any, **kwargs: Any) -> optuna.Study:
        calls.append("create")
        return real_create(*args, **kwargs)

    def load(*args: Any, **kwargs: Any) -> optuna.Study:
        calls.append("load")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(optuna, "create_study", create)
    monkeypatch.setattr(optuna, "load_study", load)
    with InlineExecutor(1) as executor:
        run_study(counted_spec("once", use_generator=False), storage=storage, executor=executor, confirm=0)
        assert calls == ["create"]
        calls.clear()
        run_study(
            counted_spec("once", use_generator=False, n_trials=4),
            storage=storage,
            executor=executor,
            confirm=0,
        )
        assert calls == ["load"]

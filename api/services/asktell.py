"""Ask/tell for trials that run outside the service, fast enough for many clients.

Plain per-request RDBStorage ask/tell re-reads every trial of the study from SQL for each
sample (~25 pairs/s on SQLite here). Instead each ask/tell study the server touches gets a
`HotStudy`: an Optuna study over `InMemoryStorage`, loaded once from the database, which
the sampler and pruner read. Every change is also written to the database through the
group-committing `TrialWriter`, and the request answers only after that commit, so the
database is always complete and current.

One server process owns a study's hot copy: do not serve the same ask/tell study from
several server processes at once (the hot copies would not see each other's trials).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.problems import ApiProblem, conflict, not_found
from api.services.space_io import suggest_config
from api.trial_writer import CreateTrial, FinishTrial, SetIntermediate, TrialWriter
from tuner.errors import FieldProblem, ValidationError
from tuner.study_results import ATTR_KIND, KIND_TRIAL
from tuner.study_spec import ATTR_TRIAL_CONFIG, ATTR_TRIAL_RESULT, StudySpec
from tuner.types import TrialConfig, TrialResult, TrialStatus


@dataclass
class _TrialRef:
    memory_number: int
    rdb_trial_id: int


class HotStudy:
    """An in-memory Optuna study mirroring one ask/tell study of the database."""

    def __init__(
        self, name: str, spec: StudySpec, storage: Any, writer: TrialWriter, base: TrialConfig, accepting: bool
    ) -> None:
        import optuna

        from tuner.samplers import make_pruner, make_sampler

        self.name = name
        self.spec = spec
        self.base = base  # the workload's default config; knobs outside the space keep it
        self.accepting = accepting  # False while the study is stopped: no new asks
        self._writer = writer
        self._lock = threading.Lock()
        self.study_id: int = storage.get_study_id_from_name(name)
        self.memory = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=make_sampler(spec, spec.space),
            pruner=make_pruner(spec),
            directions=spec.directions,
        )
        self._refs: dict[int, _TrialRef] = {}
        for trial in storage.get_all_trials(self.study_id, deepcopy=False):
            if trial.state.name == "WAITING":
                continue  # enqueued points: the sampler sees them when asked
            self.memory.add_trial(trial)
            self._refs[trial.number] = _TrialRef(len(self._refs), trial._trial_id)

    def _counted(self) -> int:
        return sum(1 for t in self.memory.get_trials(deepcopy=False) if t.user_attrs.get(ATTR_KIND, KIND_TRIAL) == KIND_TRIAL)

    def ask(self) -> tuple[int, dict[str, Any], dict[str, Any]]:
        import optuna

        with self._lock:  # keeps the in-memory and database trial numbers identical
            if self.spec.n_trials is not None and self._counted() >= self.spec.n_trials:
                raise conflict(
                    "n_trials",
                    self.spec.n_trials,
                    "trials have already been asked for",
                    "create a new study, or tell the running trials and read the results",
                )
            trial = self.memory.ask()
            try:
                config = suggest_config(self.spec.space, trial, self.base)
            except ValidationError:
                self.memory.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            user_attrs = {ATTR_TRIAL_CONFIG: config, ATTR_KIND: KIND_TRIAL}
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            frozen = self.memory._storage.get_trial(trial._trial_id)
            template = optuna.trial.FrozenTrial(
                number=0,
                state=optuna.trial.TrialState.RUNNING,
                value=None,
                values=None,
                datetime_start=datetime.now(),
                datetime_complete=None,
                params=frozen.params,
                distributions=frozen.distributions,
                user_attrs=frozen.user_attrs,
                system_attrs=frozen.system_attrs,
                intermediate_values={},
                trial_id=0,
            )
            future = self._writer.submit(CreateTrial(self.study_id, template))
        rdb_trial_id, number = future.result(timeout=60)
        with self._lock:
            self._refs[number] = _TrialRef(trial.number, rdb_trial_id)
        return number, config, dict(frozen.params)

    def _ref(self, number: int) -> _TrialRef:
        with self._lock:
            ref = self._refs.get(number)
        if ref is None:
            raise not_found("trial_number", number, "trial", f"ask for a trial first: POST /api/v1/studies/{self.name}/ask")
        return ref

    def _running(self, number: int) -> tuple[_TrialRef, Any]:
        ref = self._ref(number)
        frozen = self.memory.get_trials(deepcopy=False)[ref.memory_number]
        if frozen.state.name != "RUNNING":
            raise conflict(
                "trial_number", number, f"is already finished ({frozen.state.name})", "ask for a new trial"
            )
        return ref, frozen

    def report(self, number: int, step: int, value: float) -> bool:
        import optuna

        if not math.isfinite(value):
            raise ValidationError(FieldProblem("value", value, "is not a finite number", "report a finite loss or metric"))
        ref, frozen = self._running(number)
        prune = False
        if not self.spec.multi_objective:  # Optuna cannot prune multi-objective trials
            trial = optuna.trial.Trial(self.memory, frozen._trial_id)
            trial.report(value, step)
            prune = trial.should_prune()
        else:
            self.memory._storage.set_trial_intermediate_value(frozen._trial_id, step, value)
        self._writer.apply(SetIntermediate(ref.rdb_trial_id, step, value))
        return prune

    def tell(
        self,
        number: int,
        values: list[float] | dict[str, float] | None,
        status: str,
        metrics: dict[str, float],
        telemetry: dict[str, Any],
        reason: str | None,
    ) -> str:
        import optuna

        ref, frozen = self._running(number)
        ordered = self._ordered_values(values, status)
        tuner_status = TrialStatus(status)
        by_objective = dict(zip(self.spec.objectives, ordered or [], strict=False))
        result = TrialResult(
            status=tuner_status,
            items_per_s=by_objective.get("throughput", metrics.get("items_per_s")),
            val_loss=by_objective.get("val_loss", metrics.get("val_loss")),
            metrics=dict(metrics),
            telemetry=dict(telemetry),
            reason=reason,
        )
        state = {
            TrialStatus.OK: optuna.trial.TrialState.COMPLETE,
            TrialStatus.PRUNED: optuna.trial.TrialState.PRUNED,
        }.get(tuner_status, optuna.trial.TrialState.FAIL)
        user_attrs = {ATTR_TRIAL_RESULT: result.to_dict()}  # the status is read from the result
        with self._lock:
            if self.memory.get_trials(deepcopy=False)[ref.memory_number].state.name != "RUNNING":
                raise conflict("trial_number", number, "was told already", "ask for a new trial")
            for key, value in user_attrs.items():
                self.memory._storage.set_trial_user_attr(frozen._trial_id, key, value)
            self.memory.tell(ref.memory_number, ordered if state.name == "COMPLETE" else None, state=state)
        self._writer.apply(FinishTrial(ref.rdb_trial_id, state, ordered if state.name == "COMPLETE" else None, user_attrs))
        return state.name

    def _ordered_values(self, values: list[float] | dict[str, float] | None, status: str) -> list[float] | None:
        objectives = list(self.spec.objectives)
        if values is None:
            if status == "ok":
                raise ValidationError(
                    FieldProblem("values", None, "are required when status is ok", f"send one value per objective: {objectives}")
                )
            return None
        if isinstance(values, dict):
            problems = [
                FieldProblem(f"values.{k}", v, "is not an objective of this study", f"use {objectives}")
                for k, v in values.items()
                if k not in objectives
            ]
            problems += [
                FieldProblem(f"values.{o}", None, "is missing", "send a value for every objective")
                for o in objectives
                if o not in values
            ]
            if problems:
                raise ValidationError(problems)
            ordered = [float(values[o]) for o in objectives]
        else:
            if len(values) != len(objectives):
                raise ValidationError(
                    FieldProblem("values", values, f"has {len(values)} values for {len(objectives)} objectives", f"send values for {objectives} in that order")
                )
            ordered = [float(v) for v in values]
        bad = [FieldProblem("values", v, "is not a finite number", "send finite numbers") for v in ordered if not math.isfinite(v)]
        if bad:
            raise ValidationError(bad)
        return ordered


class AskTellService:
    """Hands out the hot copy of each ask/tell study, loading it on first use."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.writer = TrialWriter(storage)
        self._studies: dict[str, HotStudy] = {}
        self._lock = threading.Lock()

    def cached(self, name: str) -> HotStudy | None:
        return self._studies.get(name)

    def hot(self, name: str, spec: StudySpec, base: TrialConfig, *, accepting: bool) -> HotStudy:
        with self._lock:
            study = self._studies.get(name)
            if study is None:
                study = HotStudy(name, spec, self._storage, self.writer, base, accepting)
                self._studies[name] = study
            return study

    def forget(self, name: str) -> None:
        with self._lock:
            self._studies.pop(name, None)

    def close(self) -> None:
        self.writer.close()


def require_ask_tell(mode: str, name: str) -> None:
    if mode != "ask_tell":
        raise ApiProblem(
            409,
            "Not an ask/tell study",
            f"study {name!r} runs its trials on the server",
            [FieldProblem("study", name, "runs its trials on the server (run: true)", "create a study with run: false for ask/tell")],
        )


__all__ = ["AskTellService", "HotStudy", "require_ask_tell"]



"""Trials of a study, and its best config / Pareto front rendered as JSON, YAML or torch code."""

from __future__ import annotations

import math
from typing import Any

from api.problems import ApiProblem, not_found
from api.repositories import studies as repo
from api.schemas import ExportFormat, TrialRead, TrialSummary
from api.services.studies import StudyService, metrics_of, summary_of
from tuner.errors import FieldProblem
from tuner.study.profiling import profile_attr_key
from tuner.study.results import best_record, decode_attr, pareto_records, trial_record

#: sort keys that are not metrics
_BUILTIN_SORTS = ("number", "duration_s", "value", "datetime_start")


def trial_read(trial: Any) -> TrialRead:
    record = trial_record(trial)
    result = record.result
    reason = result.reason if result is not None else None
    if reason is None and trial.state.name == "FAIL":
        reason = trial.system_attrs.get("fail_reason")
    return TrialRead(
        number=trial.number,
        state=trial.state.name,
        status=record.status.value if record.status is not None else (result.status.value if result else None),
        values=list(trial.values) if trial.values is not None else None,
        config=record.config.to_dict() if record.config is not None else None,
        params=dict(trial.params),
        metrics=metrics_of(result),
        intermediate_values={int(k): float(v) for k, v in trial.intermediate_values.items()},
        telemetry=dict(result.telemetry) if result is not None else {},
        reason=reason,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        duration_s=record.duration_s,
    )


def _sort_key(sort: str) -> Any:
    def key(t: TrialRead) -> tuple[int, float]:
        if sort == "number":
            value: Any = t.number
        elif sort == "value":
            value = t.values[0] if t.values else None
        elif sort == "datetime_start":
            value = t.datetime_start.timestamp() if t.datetime_start else None
        elif sort == "duration_s":
            value = t.duration_s
        else:
            value = t.metrics.get(sort)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return (1, 0.0)  # trials without the metric go last in either order
        return (0, float(value))

    return key


class ResultService(StudyService):
    def list_trials(
        self, name: str, *, offset: int, limit: int, state: str | None, sort: str, descending: bool
    ) -> tuple[list[TrialRead], int]:
        self.get_row(name)
        states = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")
        if state is not None and state.upper() not in states:
            raise ApiProblem(422, "Invalid input", f"state={state!r}", [FieldProblem("state", state, "is not a trial state", "use one of: " + ", ".join(states))])
        trials = [trial_read(t) for t in self.trials_of(name) if state is None or t.state.name == state.upper()]
        if sort not in _BUILTIN_SORTS and not any(sort in t.metrics for t in trials):
            known = sorted({k for t in trials for k, v in t.metrics.items() if isinstance(v, (int, float))})
            raise ApiProblem(422, "Invalid input", f"sort={sort!r}", [FieldProblem("sort", sort, "is not a metric of any trial of this study", "use one of: " + ", ".join([*_BUILTIN_SORTS, *known]))])
        present = [t for t in trials if _sort_key(sort)(t)[0] == 0]
        missing = [t for t in trials if _sort_key(sort)(t)[0] == 1]
        present.sort(key=_sort_key(sort), reverse=descending)
        ordered = present + missing
        return ordered[offset : offset + limit], len(ordered)

    def get_trial(self, name: str, number: int) -> TrialRead:
        self.get_row(name)
        for trial in self.trials_of(name):
            if trial.number == number:
                read = trial_read(trial)
                profile = self.stored_profile(name, number)
                if profile is not None:
                    read.telemetry["profile"] = profile  # the trial page renders its hotspots
                return read
        raise not_found("number", number, "trial", f"list trials with GET /api/v1/studies/{name}/trials")

    def stored_profile(self, name: str, number: int) -> dict[str, Any] | None:
        """The profile `tuner profile --study` stored for trial `number` (a study attr,
        as Optuna cannot change a finished trial's attrs), or None."""
        storage = self.ctx.storage
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
        profile = decode_attr(attrs.get(profile_attr_key(number)))
        return profile if isinstance(profile, dict) else None

    def best(self, name: str) -> list[TrialSummary]:
        self.get_row(name)  # 404 for an unknown study
        spec = repo.spec_of(self.session, name)
        objectives = spec.objectives if spec is not None else ("throughput",)
        record = best_record([trial_record(t) for t in self.trials_of(name)], objectives)
        if record is None:
            raise ApiProblem(
                404,
                "No result yet",
                f"study {name!r} has no completed trial within its constraints yet",
                [FieldProblem("study", name, "has no completed feasible trial yet", "wait for trials to complete, or resume the study")],
                retryable=True,
            )
        return [summary_of(record, spec)]

    def pareto(self, name: str) -> list[TrialSummary]:
        self.get_row(name)  # 404 for an unknown study
        spec = repo.spec_of(self.session, name)
        objectives = spec.objectives if spec is not None else ("throughput",)
        records = pareto_records([trial_record(t) for t in self.trials_of(name)], objectives)
        return [summary_of(r, spec) for r in records]


def render(study: str, trials: list[TrialSummary], fmt: ExportFormat) -> str:
    """The config(s) as JSON, YAML or a runnable torch script: `tuner.export.render_points`,
    the one rendering `tuner export`, the client and the dashboard share."""
    from tuner.export import ExportPoint, render_points
    from tuner.types import TrialConfig

    if trials and all(t.config and "serving_precision" in t.config for t in trials):
        return _render_serving(study, trials, fmt)
    points = [
        ExportPoint(
            config=TrialConfig.from_dict(t.config) if t.config else TrialConfig(),
            hparams=dict(t.hparams),
            number=t.number,
            values=t.objective_values,
        )
        for t in trials
    ]
    return render_points(points, fmt, study=study)


def _render_serving(study: str, trials: list[TrialSummary], fmt: ExportFormat) -> str:
    """Serving configs (ask/tell of a `kind: inference` space): `tuner export`'s inference
    rendering (`tuner.inference.export`), one document per trial."""
    import json

    from tuner.inference.config import InferenceConfig
    from tuner.inference.export import render_inference

    configs = [(t.number, InferenceConfig.from_dict(dict(t.config or {}))) for t in trials]
    if fmt == "json" and len(configs) > 1:
        return json.dumps([{"trial": n, "kind": "inference", **c.to_dict()} for n, c in configs], indent=2) + "\n"
    return "\n".join(render_inference(c, fmt, {"study": study, "trial": n}) for n, c in configs)

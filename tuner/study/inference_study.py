"""The study of a `kind: inference` space: baseline, ask -> serve -> tell, and the best
config under the SLO.

Trials run one at a time in this process: a latency measurement shares the machine with
nothing of its own (two trials at once would each measure the other's load). The default
config (fp32, batch 1, eager, no batching window) is measured first, so the reported ratio
is to what a user would serve untuned, in the same run. Results that are not `ok`
(inaccurate, over the SLO, refused, infeasible) are told to Optuna as PRUNED, so they can
never be its best trial either.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.inference.config import InferenceConfig
from tuner.inference.objectives import best_index, objective_values, pareto_front
from tuner.inference.request import InferenceRequest, RampBudget
from tuner.inference.result import InferenceResult, InferenceStatus
from tuner.study.attrs import StudyAttr
from tuner.study.inference_spec import DEFAULT_SLO_P99_MS
from tuner.study.spec import StudySpec

CONFIG_ATTR = "tuner.inference.config"
RESULT_ATTR = "tuner.inference.result"
SPEC_ATTR = "tuner.inference.spec"
BASELINE_ATTR = "tuner.inference.baseline"


@dataclass(frozen=True)
class InferenceOutcome:
    study_name: str
    storage: str
    objectives: tuple[str, ...]
    slo_p99_ms: float
    baseline_config: InferenceConfig
    baseline_result: InferenceResult
    trials: tuple[tuple[int, InferenceConfig, InferenceResult], ...]
    best_trial: int | None
    best_config: InferenceConfig | None
    best_result: InferenceResult | None
    #: the best config's p99 when offered the default config's sustainable rate
    best_p99_at_baseline_qps_ms: float | None
    pareto: tuple[int, ...] = ()
    duration_s: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def ratio(self) -> float | None:
        """QPS at the SLO, best / default (None when either has none)."""
        if self.best_result is None or not self.baseline_result.ok or self.baseline_result.qps <= 0:
            return None
        return self.best_result.qps / self.baseline_result.qps

    @property
    def p99_reduction_at_baseline_qps(self) -> float | None:
        base = self.baseline_result.p99_ms
        if base is None or self.best_p99_at_baseline_qps_ms is None or not self.baseline_result.ok:
            return None
        return 1 - self.best_p99_at_baseline_qps_ms / base

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in InferenceStatus}
        for _, _, result in self.trials:
            counts[result.status.value] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        by_number = {n: (c, r) for n, c, r in self.trials}
        return {
            "study": self.study_name,
            "kind": "inference",
            "storage": self.storage,
            "objectives": list(self.objectives),
            "slo_p99_ms": self.slo_p99_ms,
            "ratio": self.ratio,
            "ratio_means": "QPS at p99 <= SLO, best config / default config (fp32, batch 1, eager, no batching), same run",
            "best_trial": self.best_trial,
            "best_config": self.best_config.to_dict() if self.best_config else None,
            "best_result": self.best_result.to_dict() if self.best_result else None,
            "baseline_config": self.baseline_config.to_dict(),
            "baseline_result": self.baseline_result.to_dict(),
            "best_p99_at_baseline_qps_ms": self.best_p99_at_baseline_qps_ms,
            "p99_reduction_at_baseline_qps": self.p99_reduction_at_baseline_qps,
            "pareto": [
                {
                    "trial": n,
                    "config": by_number[n][0].to_dict(),
                    "qps": by_number[n][1].qps,
                    "p99_ms": by_number[n][1].p99_ms,
                }
                for n in self.pareto
            ],
            "trials": [
                {
                    "trial": n,
                    "config": c.to_dict(),
                    "status": r.status.value,
                    "qps": r.qps,
                    "p99_ms": r.p99_ms,
                    "reason": r.reason,
                }
                for n, c, r in self.trials
            ],
            "counts": self.counts(),
            "duration_s": self.duration_s,
            "notes": list(self.notes),
        }


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"tuner: {text}", file=sys.stderr, flush=True)


def _line(config: InferenceConfig, result: InferenceResult) -> str:
    knobs = (
        f"batch {config.max_batch_size}, window {config.batch_window_ms:g} ms, {config.serving_precision}"
        + (f"/{config.int8_backend}" if config.int8 else "")
        + f", {config.instances}x{config.threads_per_instance or 'all'} threads, pad {config.padding}"
        + (", fused" if config.fusion else "")
        + (f", compile {config.compile_mode}" if config.compile_mode != "off" else "")
    )
    if result.ok:
        return f"{knobs}: {result.qps:,.0f} QPS at p99 {result.p99_ms:.1f} ms"
    return f"{knobs}: {result.status.value} ({result.reason})"


def run_inference_study(
    spec: StudySpec,
    *,
    storage: str | None = None,
    progress: bool = True,
    ramp: RampBudget | None = None,
    stop_event: threading.Event | None = None,
) -> InferenceOutcome:
    import warnings

    import optuna

    from tuner.inference.placement import serving_device
    from tuner.inference.refusals import space_device_problems
    from tuner.inference.trial import p99_at_rate, run_inference_trial, serving_setup
    from tuner.storage.rdb import open_storage, resolve_storage_url
    from tuner.study.samplers import make_sampler
    from tuner.workloads import get_workload

    # We ask and tell ourselves (one trial at a time, in this process); the storage's
    # heartbeat is meant for Study.optimize and its warning says nothing to a user here.
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
    started = time.perf_counter()
    workload = get_workload(spec.workload)
    if not workload.serves:
        raise ValidationError(
            FieldProblem(
                "workload",
                spec.workload,
                "has no inference entry point",
                "serve gpt, recsys or convnet, or add serving() (docs/workloads.md)",
            )
        )
    params = workload.resolve_params(spec.workload_params)
    # "auto" serves on the GPU when there is one; "cuda" on a machine without is a field error
    device = str(serving_device(spec.device))
    problems = space_device_problems(spec.space, serving_device(device).type)
    if problems:
        raise ValidationError(problems)
    slo = spec.slo_p99_ms or DEFAULT_SLO_P99_MS
    ramp = ramp or RampBudget()
    url = resolve_storage_url(storage)
    study = optuna.create_study(
        study_name=spec.name,
        storage=open_storage(url),
        directions=spec.directions,
        sampler=make_sampler(spec, spec.space),
        load_if_exists=True,
    )
    study.set_user_attr(SPEC_ATTR, spec_data(spec))
    # the common spec attr too, so `tuner studies` and the service list its workload and objective
    study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
    _say(progress, f"inference study {spec.name}: building the {spec.workload} serving model")
    serving_setup(spec.workload, params)

    def request(
        config: InferenceConfig, seed: int, target: float | None = spec.target_qps
    ) -> InferenceRequest:
        return InferenceRequest(
            workload=spec.workload,
            params=params,
            config=config,
            slo_p99_ms=slo,
            target_qps=target,
            seed=seed,
            device=device,
            ramp=ramp,
            memory_limit_bytes=spec.memory_limit_bytes,
        )

    baseline_config = InferenceConfig()
    baseline = run_inference_trial(request(baseline_config, spec.seed))
    study.set_user_attr(BASELINE_ATTR, {"config": baseline_config.to_dict(), "result": baseline.to_dict()})
    _say(progress, "default config " + _line(baseline_config, baseline))
    trials: list[tuple[int, InferenceConfig, InferenceResult]] = []
    for _ in range(spec.n_trials or 10**9):
        if stop_event is not None and stop_event.is_set():
            break
        if spec.timeout_s is not None and time.perf_counter() - started > spec.timeout_s:
            break
        trial = study.ask()
        values = spec.space.suggest(trial)
        config = InferenceConfig.from_dict({**baseline_config.to_dict(), **values}, source=spec.space.name)
        result = run_inference_trial(request(config, spec.seed + trial.number + 1))
        trial.set_user_attr(CONFIG_ATTR, config.to_dict())
        trial.set_user_attr(RESULT_ATTR, result.to_dict())
        if result.ok:
            study.tell(trial, objective_values(result, spec.objectives))
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        trials.append((trial.number, config, result))
        _say(progress, f"trial #{trial.number} " + _line(config, result))
    results = [r for _, _, r in trials]
    primary = spec.objectives[0]
    index = best_index(results, primary, slo)
    best = trials[index] if index is not None else None
    p99_at_base = None
    notes: list[str] = []
    if best is not None and baseline.ok and baseline.qps > 0:
        # The guide's second claim: latency at the load the default config could carry.
        point = p99_at_rate(request(best[1], spec.seed + 7919), baseline.qps)
        p99_at_base = point.p99_ms if point else None
    if not baseline.ok:
        notes.append(
            f"the default config has no QPS at the SLO ({baseline.status.value}: {baseline.reason}); no ratio"
        )
    front = pareto_front(results, slo) if spec.multi_objective else []
    return InferenceOutcome(
        study_name=spec.name,
        storage=url,
        objectives=spec.objectives,
        slo_p99_ms=slo,
        baseline_config=baseline_config,
        baseline_result=baseline,
        trials=tuple(trials),
        best_trial=best[0] if best else None,
        best_config=best[1] if best else None,
        best_result=best[2] if best else None,
        best_p99_at_baseline_qps_ms=p99_at_base,
        pareto=tuple(trials[i][0] for i in front),
        duration_s=time.perf_counter() - started,
        notes=tuple(notes),
    )


def spec_data(spec: StudySpec) -> dict[str, Any]:
    data = spec.to_dict()
    data["budget"] = spec.budget.to_dict()
    return data


def stored_inference_best(
    storage: str | None, name: str
) -> tuple[str, InferenceConfig, InferenceResult] | None:
    """(workload, best config, its result) of the stored inference study `name`, by the
    same rule as the study (eligible only, first objective); None when `name` is not an
    inference study. Raises ValidationError when it has no eligible trial."""
    import optuna

    from tuner.storage.rdb import open_storage, resolve_storage_url

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(resolve_storage_url(storage)))
    except KeyError:
        return None  # no such study: the training path's lookup says so, with the fix
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        return None
    rows = [
        (
            InferenceConfig.from_dict(t.user_attrs[CONFIG_ATTR]),
            InferenceResult.from_dict(t.user_attrs[RESULT_ATTR]),
        )
        for t in study.trials
        if CONFIG_ATTR in t.user_attrs and RESULT_ATTR in t.user_attrs
    ]
    objective = (stored.get("objectives") or ["qps_at_slo"])[0]
    index = best_index([r for _, r in rows], objective, stored.get("slo_p99_ms") or DEFAULT_SLO_P99_MS)
    if index is None:
        raise ValidationError(
            FieldProblem(
                "study",
                name,
                "has no config that met the SLO accurately",
                "run more trials or relax slo_p99_ms",
            )
        )
    return stored["workload"], rows[index][0], rows[index][1]

"""The study of a `kind: inference` space: baseline, ask -> serve -> tell, and the best
config under the SLO.

Trials run one at a time in this process: a latency measurement shares the machine with
nothing of its own (two trials at once would each measure the other's load). The default
config (fp32, batch 1, eager, no batching window) is measured first, so the reported ratio
is to what a user would serve untuned, in the same run. Results that are not `ok`
(inaccurate, over the SLO, refused, infeasible) are told to Optuna as PRUNED, so they can
never be its best trial either.

The generator (`tuner.inference.starting`) narrows the space and enqueues starting configs
(fp32 and the fastest other precision at the largest SLO-feasible batch, one thread per
instance on a 2-core CPU), so the study always measures what a batch-size sweep finds.

Confirmation: one ramp measures a config in a few seconds, and on a shared machine the
same config can measure 2x apart. The default config (the ratio's denominator) is
measured `1 + confirm_rounds` times and counts at its median. A config whose first
measurement beats the incumbent
best is measured `confirm_rounds` more times before it is told, and its result is the
MEDIAN measurement (by QPS; a measurement over the SLO counts as 0): a lucky single
number cannot become best, and every unconfirmed trial's single measurement is at most
the confirmed best's. The told value, the stored result, `best_index`, the dashboard and
`tuner export` all see the same median result.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.inference.config import InferenceConfig
from tuner.inference.objectives import best_index, eligible, objective_values, pareto_front
from tuner.inference.request import InferenceRequest, RampBudget
from tuner.inference.result import InferenceResult, InferenceStatus
from tuner.study.attrs import StudyAttr
from tuner.study.inference_spec import DEFAULT_SLO_P99_MS
from tuner.study.spec import StudySpec

CONFIG_ATTR = "tuner.inference.config"
#: every QPS measured for a confirmed trial (first the search's), in order
MEASURED_ATTR = "tuner.inference.measured_qps"
PLAN_ATTR = "tuner.inference.plan"
#: re-measurements of a config that would become best, before it is told (0 disables)
DEFAULT_CONFIRM_ROUNDS = 2
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
    #: the generator's starting configs (enqueued first) and why each
    starting: tuple[dict[str, Any], ...] = ()
    starting_reasons: tuple[str, ...] = ()
    #: trial number -> every QPS measured for it (confirmed trials only)
    measured_qps: dict[int, tuple[float, ...]] = field(default_factory=dict)
    #: every QPS measured for the default config (the median counts)
    baseline_measured_qps: tuple[float, ...] = ()
    #: the ok trial with the lowest p99 at the default's sustainable rate (every trial of a
    #: qps_at_slo study without target_qps measures it) and that p99, measured afresh
    latency_trial: int | None = None
    latency_p99_at_baseline_qps_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        """QPS at the SLO, best / default (None when either has none)."""
        if self.best_result is None or not self.baseline_result.ok or self.baseline_result.qps <= 0:
            return None
        return self.best_result.qps / self.baseline_result.qps

    def _reduction_at_baseline_qps(self, p99_ms: float | None) -> float | None:
        """1 - `p99_ms` / the default's p99, both at the default's sustainable rate."""
        base = self.baseline_result.p99_ms
        if base is None or p99_ms is None or not self.baseline_result.ok:
            return None
        return 1 - p99_ms / base

    @property
    def p99_reduction_at_baseline_qps(self) -> float | None:
        return self._reduction_at_baseline_qps(self.best_p99_at_baseline_qps_ms)

    @property
    def latency_p99_reduction_at_baseline_qps(self) -> float | None:
        return self._reduction_at_baseline_qps(self.latency_p99_at_baseline_qps_ms)

    def latency_config(self) -> InferenceConfig | None:
        return next((c for n, c, _ in self.trials if n == self.latency_trial), None)

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
            "lowest_p99_at_baseline_qps": None
            if self.latency_trial is None
            else {
                "trial": self.latency_trial,
                "config": by_number[self.latency_trial][0].to_dict(),
                "qps": by_number[self.latency_trial][1].qps,
                "p99_ms": self.latency_p99_at_baseline_qps_ms,
                "reduction": self.latency_p99_reduction_at_baseline_qps,
            },
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
            "starting_configs": [dict(v) for v in self.starting],
            "starting_reasons": list(self.starting_reasons),
            "confirmed": {str(n): list(q) for n, q in self.measured_qps.items()},
            "baseline_measured_qps": list(self.baseline_measured_qps),
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
    confirm_rounds: int = DEFAULT_CONFIRM_ROUNDS,
    generator: bool = True,
) -> InferenceOutcome:
    """Run the study of `spec` (a `kind: inference` space). `generator=False` (or the grid
    sampler) searches the space as given, with no starting configs; `confirm_rounds`
    re-measurements decide whether a config that measured best once is best (0: not)."""
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
    setup = serving_setup(spec.workload, params)
    space = spec.space
    plan = None
    notes: list[str] = []
    if generator and spec.sampler != "grid" and device != "cpu":
        # The generator times forwards of the CPU reference model: no basis for a GPU's
        # batch cap or precision ranking.
        notes.append(f"no starting configs on {device}: the generator times CPU forwards only")
    if generator and spec.sampler != "grid" and device == "cpu":
        from tuner.inference.starting import plan_inference

        plan = plan_inference(
            space, setup, slo_p99_ms=slo, memory_limit_bytes=spec.memory_limit_bytes, device=device
        )
        space = plan.space
        study.set_user_attr(PLAN_ATTR, plan.to_dict())
        for line in plan.reasoning:
            _say(progress, f"generator: {line}")
        measured = {tuple(sorted(t.params.items())) for t in study.trials}
        for values, why in zip(plan.starting, plan.reasons, strict=True):
            if tuple(sorted(values.items())) not in measured:  # a resumed study measured it already
                study.enqueue_trial(dict(values), skip_if_exists=True)
                _say(progress, f"starting config: {why}")

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
    confirming = confirm_rounds > 0 and spec.objectives == ("qps_at_slo",)
    # The ratio's denominator: as noisy as any measurement, so measured as often as a best.
    baseline_runs = [
        run_inference_trial(request(baseline_config, spec.seed + 7717 * k))
        for k in range(1 + (confirm_rounds if confirming else 0))
    ]
    baseline = median_result(baseline_runs, slo) if len(baseline_runs) > 1 else baseline_runs[0]
    baseline_qps = tuple(r.qps if eligible(r, slo) else 0.0 for r in baseline_runs)
    study.set_user_attr(
        BASELINE_ATTR,
        {
            "config": baseline_config.to_dict(),
            "result": baseline.to_dict(),
            "measured_qps": list(baseline_qps),
        },
    )
    if len(baseline_runs) > 1:
        _say(
            progress,
            "default config measured "
            + ", ".join(f"{q:,.0f}" for q in baseline_qps)
            + " QPS; the median counts",
        )
    _say(progress, "default config " + _line(baseline_config, baseline))
    # At the load the default carries, the max-QPS config is not always the fastest to
    # answer (a batching window waits at low rates; one thread per instance is slower per
    # request): every trial also measures its p99 at that rate (one more load step), so
    # the study names the lowest-latency config for today's load as well.
    at_load = spec.target_qps is None and spec.objectives == ("qps_at_slo",) and baseline.ok and baseline.qps > 0
    trial_target = baseline.qps if at_load else spec.target_qps
    trials: list[tuple[int, InferenceConfig, InferenceResult]] = []
    measured_qps: dict[int, tuple[float, ...]] = {}
    for _ in range(spec.n_trials or 10**9):
        if stop_event is not None and stop_event.is_set():
            break
        if spec.timeout_s is not None and time.perf_counter() - started > spec.timeout_s:
            break
        trial = study.ask()
        values = space.suggest(trial)
        config = InferenceConfig.from_dict({**baseline_config.to_dict(), **values}, source=spec.space.name)
        result = run_inference_trial(request(config, spec.seed + trial.number + 1, trial_target))
        incumbent = best_index([r for _, _, r in trials], spec.objectives[0], slo)
        if (
            confirming
            and eligible(result, slo)
            and (incumbent is None or result.qps > trials[incumbent][2].qps)
        ):
            runs = [result] + [
                run_inference_trial(request(config, spec.seed + trial.number + 1 + 7717 * (k + 1), trial_target))
                for k in range(confirm_rounds)
            ]
            result = median_result(runs, slo)
            measured_qps[trial.number] = tuple(r.qps if eligible(r, slo) else 0.0 for r in runs)
            trial.set_user_attr(MEASURED_ATTR, list(measured_qps[trial.number]))
            _say(
                progress,
                f"trial #{trial.number} measured {len(runs)} times: "
                + ", ".join(f"{q:,.0f}" for q in measured_qps[trial.number])
                + " QPS; the median counts",
            )
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
    if best is not None and baseline.ok and baseline.qps > 0:
        # The guide's second claim: latency at the load the default config could carry.
        point = p99_at_rate(request(best[1], spec.seed + 7919), baseline.qps)
        p99_at_base = point.p99_ms if point else None
    if not baseline.ok:
        notes.append(
            f"the default config has no QPS at the SLO ({baseline.status.value}: {baseline.reason}); no ratio"
        )
    latency_trial, latency_p99 = None, None
    # the lowest p99 at the default's rate: the best a p99_at_qps study would name
    fastest = best_index(results, "p99_at_qps", slo) if at_load else None
    if fastest is not None and math.isfinite(results[fastest].p99_at_target_ms or math.inf):
        pick = trials[fastest]
        latency_trial = pick[0]
        if best is not None and pick[0] == best[0]:
            latency_p99 = p99_at_base
        else:
            # picked as the lowest of noisy numbers, so reported at a fresh measurement
            point = p99_at_rate(request(pick[1], spec.seed + 7927), baseline.qps)
            latency_p99 = point.p99_ms if point else None
        _say(
            progress,
            f"lowest p99 at the default's {baseline.qps:,.0f} QPS: trial #{pick[0]} "
            + (f"{latency_p99:.1f} ms (measured again)" if latency_p99 is not None else "(could not run again)"),
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
        starting=plan.starting if plan else (),
        starting_reasons=plan.reasons if plan else (),
        measured_qps=measured_qps,
        baseline_measured_qps=baseline_qps,
        latency_trial=latency_trial,
        latency_p99_at_baseline_qps_ms=latency_p99,
    )


def median_result(runs: list[InferenceResult], slo_p99_ms: float) -> InferenceResult:
    """The median of several measurements of one config, by QPS at the SLO (a measurement
    that is not eligible counts as 0 QPS); of an even count, the lower middle one. Its
    notes say what the others measured."""
    ranked = sorted(runs, key=lambda r: r.qps if eligible(r, slo_p99_ms) else 0.0)
    chosen = ranked[(len(ranked) - 1) // 2]
    qps = ", ".join(f"{r.qps if eligible(r, slo_p99_ms) else 0.0:,.0f}" for r in runs)
    note = f"median of {len(runs)} measurements of this config (QPS at the SLO: {qps})"
    return dataclasses.replace(chosen, notes=(*chosen.notes, note))


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

"""Tuner-reported vs independent items/s of gpt configs, alternated in one process.

For each repetition and each config, tuner's trial (the gpt workload's `run_trial`, what a
study measures) and the independent loop (`independent.measure`) run back to back, their
order flipped every time, so drift of a shared machine hits both sides alike. The ratio
is median(tuner) / median(independent); per-repetition ratios give its range.

On a shared CPU other processes stretch random steps of either side, so the ratio of the
fastest single steps (`best_step_ratio`) is also given: interference only adds time.
Tuner's per-step times are read by wrapping its `StepTimer.record` in this process
(instrumentation of the benchmark only; the runner is unchanged).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from benchmarks.gpu_check.independent import LoopSpec, measure


def tuner_trial(
    workload: str,
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    device: str,
    steps: int,
    warmup: int,
    peak_flops: float | None = None,
    trial_number: int = 0,
) -> Any:
    """One trial through the workload's own `run_trial` in this process (tuner's measurement)."""
    from tuner.trial_request import NullReporter, TrialRequest
    from tuner.types import TrialBudget, TrialConfig
    from tuner.workloads import get_workload

    work = get_workload(workload)
    request = TrialRequest(
        trial_number=trial_number,
        workload=workload,
        params=work.resolve_params(dict(params)),
        config=TrialConfig.from_dict(dict(config)),
        budget=TrialBudget(max_steps=steps, warmup_steps=warmup, eval_batches=1),
        device=device,
        peak_flops=peak_flops,
    )
    return work.run_trial(request, NullReporter())


@contextlib.contextmanager
def _tuner_step_times() -> Iterator[list[float]]:
    """Collect the seconds of every step tuner's runner records while the block runs."""
    from tuner.trial.timing import StepTimer

    seen: list[float] = []
    original = StepTimer.record

    def record(self: StepTimer, seconds: float) -> None:
        seen.append(seconds)
        original(self, seconds)

    StepTimer.record = record  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        StepTimer.record = original  # type: ignore[method-assign]


def compare(
    configs: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Any],
    *,
    device: str,
    reps: int,
    warmup: int,
    timed: int,
    peak_for: Callable[[str], float | None] = lambda precision: None,
) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {
        name: {
            "config": dict(config),
            "tuner": [],
            "independent": [],
            "mfu": [],
            "independent_mfu": [],
            "errors": [],
            "independent_losses_finite": True,
            "tuner_min_step_s": [],
            "independent_min_step_s": [],
        }
        for name, config in configs.items()
    }
    for rep in range(reps):
        for index, (name, config) in enumerate(configs.items()):
            row = rows[name]
            peak = peak_for(str(config.get("precision", "fp32")))

            def run_tuner(
                row: dict[str, Any] = row, config: Mapping[str, Any] = config, peak: float | None = peak
            ) -> None:
                with _tuner_step_times() as steps:
                    result = tuner_trial(
                        "gpt",
                        params,
                        config,
                        device=device,
                        steps=warmup + timed,
                        warmup=warmup,
                        peak_flops=peak,
                    )
                if result.ok and result.items_per_s:
                    row["tuner"].append(result.items_per_s)
                    row["mfu"].append(result.mfu)
                    if device == "cpu" and steps[warmup:]:
                        row["tuner_min_step_s"].append(min(steps[warmup:]))
                else:
                    row["errors"].append(f"tuner {result.status.value}: {result.reason}")

            def run_independent(
                row: dict[str, Any] = row,
                config: Mapping[str, Any] = config,
                peak: float | None = peak,
                seed: int = rep,
            ) -> None:
                try:
                    got = measure(
                        LoopSpec.from_tuner(params, config),
                        device=device,
                        warmup_steps=warmup,
                        timed_steps=timed,
                        seed=seed,
                        peak_flops=peak,
                    )
                except Exception as exc:  # an independent failure is a finding, not a crash
                    row["errors"].append(f"independent {type(exc).__name__}: {str(exc)[:300]}")
                    return
                row["independent"].append(got["items_per_s"])
                row["independent_mfu"].append(got.get("mfu"))
                row["independent_losses_finite"] &= got["losses_finite"]
                if got.get("min_step_s"):
                    row["independent_min_step_s"].append(got["min_step_s"])

            order = (run_tuner, run_independent) if (rep + index) % 2 == 0 else (run_independent, run_tuner)
            for run in order:
                run()
    for row in rows.values():
        tuner, indep = row["tuner"], row["independent"]
        row["tuner_median"] = statistics.median(tuner) if tuner else None
        row["independent_median"] = statistics.median(indep) if indep else None
        row["ratio"] = row["tuner_median"] / row["independent_median"] if tuner and indep else None
        pairs = [t / i for t, i in zip(tuner, indep, strict=False)]
        row["ratio_per_rep"] = pairs
        row["ratio_range"] = [min(pairs), max(pairs)] if pairs else None
        row["all_ok"] = not row["errors"] and len(tuner) == len(indep) == reps
        fastest_t, fastest_i = row["tuner_min_step_s"], row["independent_min_step_s"]
        # items/s ratio = inverse ratio of step times
        row["best_step_ratio"] = min(fastest_i) / min(fastest_t) if fastest_t and fastest_i else None
    return rows

"""The inference generator's starting configs and the study's confirmation of a would-be
best, on this CPU with a tiny served model (real forwards, real Optuna, no timed ratios)."""

from __future__ import annotations

import warnings

import optuna

from tests.inference_test_workloads import TinyServed
from tuner.cli.tune_inference import summary_text
from tuner.inference.config import InferenceConfig
from tuner.inference.memory import predicted_peak_bytes
from tuner.inference.objectives import best_index, eligible
from tuner.inference.request import RampBudget
from tuner.inference.result import InferenceResult, InferenceStatus
from tuner.inference.starting import plan_inference
from tuner.inference.trial import serving_setup
from tuner.space.search_space import SearchSpace
from tuner.study.inference_study import MEASURED_ATTR, median_result, run_inference_study
from tuner.study.spec import StudySpec
from tuner.workloads import register_workload

warnings.filterwarnings("ignore", category=DeprecationWarning)
register_workload(TinyServed)

QUICK_RAMP = RampBudget(step_s=0.1, max_steps=2, min_requests=20, max_requests=800)
BATCHES = [1, 8, 64]
SPACE = {
    "name": "tiny-serving",
    "kind": "inference",
    "params": {
        "max_batch_size": {"type": "categorical", "choices": BATCHES},
        "batch_window_ms": {"type": "categorical", "choices": [0, 2]},
        "serving_precision": {"type": "categorical", "choices": ["fp32", "int8_dynamic"]},
        "int8_backend": {
            "type": "categorical",
            "choices": ["fbgemm"],
            "when": {"serving_precision": "int8_dynamic"},
        },
        "threads_per_instance": {"type": "categorical", "choices": [0, 1]},
    },
}


def _setup():
    return serving_setup("tiny-served", {"outlier": 0.0})


def test_the_first_starting_config_is_the_largest_batch_the_memory_model_and_the_slo_allow():
    space, setup = SearchSpace.from_dict(SPACE), _setup()
    # A 64 x 32 forward of a two-layer MLP takes microseconds: far under half of 50 ms.
    plan = plan_inference(space, setup, slo_p99_ms=50, cpu_count=2)
    first = plan.starting[0]
    assert first == {
        "max_batch_size": max(BATCHES),
        "batch_window_ms": 0,
        "serving_precision": "fp32",
        "threads_per_instance": 1,  # a 2-core CPU: one intra-op thread per instance
    }
    assert "largest" in plan.reasons[0]
    # a batching window is tried early, at the same batch
    assert any(s["batch_window_ms"] == 2 and s["max_batch_size"] == 64 for s in plan.starting[1:])
    # The memory model caps it: a limit between batch 8's and batch 64's predicted peak.
    peak = {
        b: predicted_peak_bytes(setup.shape, InferenceConfig(max_batch_size=b, threads_per_instance=1))
        for b in (8, 64)
    }
    capped = plan_inference(
        space, setup, slo_p99_ms=50, cpu_count=2, memory_limit_bytes=(peak[8] + peak[64]) // 2
    )
    assert capped.starting[0]["max_batch_size"] == 8
    # An SLO no forward meets: the smallest batch, said so; more cores: torch's default threads.
    tight = plan_inference(space, setup, slo_p99_ms=1e-6, cpu_count=16)
    assert tight.starting[0]["max_batch_size"] == 1 and "smallest" in tight.reasons[0]
    assert tight.starting[0]["threads_per_instance"] == 0


def test_median_result_counts_a_measurement_over_the_slo_as_zero():
    ok = [InferenceResult(InferenceStatus.OK, qps=q, p99_ms=10.0) for q in (100.0, 90.0)]
    over = InferenceResult(InferenceStatus.OVER_SLO, reason="p99 over")
    assert median_result([ok[0], over, ok[1]], 50).qps == 90.0
    assert median_result([ok[0], ok[1]], 50).qps == 90.0  # even count: the lower middle
    assert median_result([ok[0], over, over], 50).status is InferenceStatus.OVER_SLO
    assert "median of 3" in median_result([ok[0], over, ok[1]], 50).notes[-1]


def test_a_tiny_study_measures_its_starting_configs_first_and_its_best_is_confirmed(tmp_path):
    spec = StudySpec(
        name="tiny-start",
        workload="tiny-served",
        workload_params={"outlier": 0.0},
        space=SearchSpace.from_dict(SPACE),
        objectives=("qps_at_slo",),
        n_trials=3,  # its starting configs: the properties are the generator's and the confirmation's
        slo_p99_ms=150,  # generous: this machine is shared
        seed=3,
    )
    outcome = run_inference_study(
        spec, storage=f"sqlite:///{tmp_path / 'start.db'}", progress=False, ramp=QUICK_RAMP
    )
    assert outcome.starting, "the generator proposed no starting config"
    # The starting configs were the first trials measured, in order.
    for (number, config, _), values in zip(outcome.trials, outcome.starting, strict=False):
        assert {k: getattr(config, k) for k in values} == values, (number, values)
    batch_only = outcome.trials[0]  # fp32 at the largest SLO-feasible batch, no window
    assert batch_only[1].max_batch_size == max(BATCHES) and batch_only[1].batch_window_ms == 0
    results = [r for _, _, r in outcome.trials]
    assert outcome.best_result is not None and eligible(outcome.best_result, 150)
    assert results.index(outcome.best_result) == best_index(results, "qps_at_slo", 150)
    # Best by construction: at least its own batch-only starting point, and every
    # unconfirmed trial's single measurement.
    assert outcome.best_result.qps >= batch_only[2].qps
    study = optuna.load_study(study_name=spec.name, storage=outcome.storage)
    by_number = {t.number: t for t in study.trials}
    confirmed = outcome.measured_qps
    assert outcome.best_trial in confirmed and len(confirmed[outcome.best_trial]) == 3
    for number, _, result in outcome.trials:
        if number in confirmed:
            measured = confirmed[number]
            assert result.qps == sorted(measured)[1] or not result.ok  # the median counts
            assert by_number[number].user_attrs[MEASURED_ATTR] == list(measured)
        elif result.ok:
            assert result.qps <= outcome.best_result.qps
    # The default config, the ratio's denominator, counts at its median too.
    base = outcome.baseline_measured_qps
    assert len(base) == 3 and (
        outcome.baseline_result.qps == sorted(base)[1] or not outcome.baseline_result.ok
    )
    # Optuna was told the median, so its best trial is the same.
    assert study.best_trial.number == outcome.best_trial
    assert study.best_trial.value == outcome.best_result.qps
    data = outcome.to_dict()
    assert data["confirmed"][str(outcome.best_trial)] == list(confirmed[outcome.best_trial])
    assert data["starting_configs"] == [dict(v) for v in outcome.starting]
    assert "measured 3 times" in summary_text(data)
    # Every trial also measured its p99 at the default's rate; the lowest among the
    # eligible ones is named, at a fresh measurement (the best's own when it is the best).
    assert outcome.baseline_result.ok
    at_load = [(r.p99_at_target_ms, n) for n, _, r in outcome.trials if eligible(r, 150)]
    assert at_load and all(p is not None for p, _ in at_load)
    assert outcome.latency_trial == min(at_load)[1]
    assert outcome.latency_p99_at_baseline_qps_ms is not None
    low = data["lowest_p99_at_baseline_qps"]
    assert low["trial"] == outcome.latency_trial and low["p99_ms"] == outcome.latency_p99_at_baseline_qps_ms
    assert low["reduction"] == 1 - low["p99_ms"] / outcome.baseline_result.p99_ms
    if outcome.latency_trial == outcome.best_trial:
        assert low["p99_ms"] == outcome.best_p99_at_baseline_qps_ms
    else:
        assert "lowest p99 at the default's QPS: trial #" in summary_text(data)

"""scripts/gpu_check.sh on this CPU (`--device cpu --quick`) and its orchestrator's rules.

The GPU run itself needs a GPU machine (docs/benchmarks.md, "GPU acceptance run"); here
the same script runs with tiny shapes and its summary must be complete and well-formed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check.__main__ import PLAN, run_step, skipped
from benchmarks.gpu_check.common import Context, StepRecord
from benchmarks.gpu_check.report import markdown

REPO = Path(__file__).resolve().parents[1]
STATUSES = {"ok", "failed", "skipped", "timeout"}


@pytest.fixture(scope="module")
def cpu_summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(out), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    summary["_md"] = (out / "summary.md").read_text()
    return summary


@pytest.mark.slow
def test_cpu_quick_run_summary_is_complete(cpu_summary: dict) -> None:
    s = cpu_summary
    assert s["kind"] == "tuner.gpu_check" and s["device"] == "cpu" and s["quick"] is True
    assert s["total_s"] <= 185  # the budget caps each step at what is left of 180 s
    assert set(s["steps"]) == {name for name, *_ in PLAN}
    for name, step in s["steps"].items():
        assert step["status"] in STATUSES, name
        assert isinstance(step["duration_s"], (int, float)) and step["duration_s"] >= 0, name
        assert step["duration_s"] <= step["cap_s"] + 5, name
        for key in ("figures", "checks", "errors", "notes"):
            assert key in step, (name, key)
    for name, _, _, where in PLAN:
        if where != "all":
            assert s["steps"][name]["status"] == "skipped", name
            assert "GPU" in s["steps"][name]["skip_reason"], name


@pytest.mark.slow
def test_cpu_quick_run_steps_pass_and_fidelity_is_measured(cpu_summary: dict) -> None:
    s = cpu_summary
    steps = s["steps"]
    for name in ("env", "probe", "study", "memory_model", "precision_matrix", "profile"):
        assert steps[name]["status"] == "ok", (name, steps[name]["errors"], steps[name]["checks"])
    ratio = s["fidelity_ratio"]
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0
    fidelity = steps["fidelity"]
    assert not fidelity["errors"]
    # Every run of both sides finished; the ratio band itself is noisy on a shared 2-core VM.
    for row in fidelity["figures"]["configs"].values():
        assert row["all_ok"], row["errors"]
        assert all(m is None or m <= 1.0 for m in row["mfu"])
    outcome = steps["study"]["figures"]["outcome"]
    assert outcome["best_items_per_s"] > 0 and outcome["confirmation"]["pairs"]
    best = outcome["best_config"]
    measured = fidelity["figures"]["configs"]["best"]["config"]
    assert measured == ({**best, "compile": False} if best["compile"] else best)
    matrix = steps["precision_matrix"]["figures"]["trials"]
    assert [t["precision"] for t in matrix] == ["fp32", "tf32", "bf16", "fp16", "fp32"]
    assert "fidelity ratio" in s["_md"] and "| study | ok |" in s["_md"]


@pytest.mark.slow
def test_cpu_quick_run_inference_step_is_consistent(cpu_summary: dict) -> None:
    step = cpu_summary["steps"]["inference"]
    assert step["status"] == "ok", (step["errors"], step["checks"])
    f = step["figures"]
    assert f["workload"] == "recsys" and f["device"] == "cpu" and f["ramp"]["max_steps"] <= 2
    rows = f["configs"]
    assert rows[0]["trial"] == "default" and rows[0]["config"]["serving_precision"] == "fp32"
    by_precision = {r["config"]["serving_precision"]: r for r in rows[1:]}
    refused = by_precision["fp16"]  # no fast fp16 kernels on CPU: refused with the reason, not failed
    assert refused["status"] == "refused" and "fp16" in refused["reason"] and refused["qps_at_slo"] == 0
    assert f["counts"]["failed"] == 0 and f["counts"]["refused"] == 1
    for row in rows:
        if row["status"] == "ok":
            assert (
                row["qps_at_slo"] > 0 and row["p99_ms"] <= f["slo_p99_ms"] and row["accuracy_guard"] is True
            )
            assert row["peak_memory_bytes"] > 0 and row["predicted_peak_bytes"] > 0
            assert row["memory_error"] == pytest.approx(
                row["predicted_peak_bytes"] / row["peak_memory_bytes"] - 1
            )
    best = next(r for r in rows if r["trial"] == f["best_trial"])
    # the best is never over the SLO, inaccurate or refused, and has the highest QPS of the ok ones
    assert best["status"] == "ok" and best["within_slo"] and best["accuracy_guard"] is True
    assert best["qps_at_slo"] == max(r["qps_at_slo"] for r in rows[1:] if r["status"] == "ok")
    assert f["best_config"] == best["config"] and f["best_qps"] == best["qps_at_slo"]
    assert f["ratio"] == pytest.approx(best["qps_at_slo"] / rows[0]["qps_at_slo"])
    assert f["served_on"]["bf16"] == {"device": "cpu", "dtype": "bfloat16"}
    assert {m["trial"] for m in f["memory_model"]} == {r["trial"] for r in rows if r["status"] == "ok"}
    assert step["duration_s"] <= 30
    assert (
        "## Inference study (recsys" in cpu_summary["_md"]
        and "| 0 | fp16 | 16 | refused" in cpu_summary["_md"]
    )


def test_a_step_past_its_cap_is_recorded_as_timeout(tmp_path: Path) -> None:
    (tmp_path / "steps").mkdir()
    (tmp_path / "logs").mkdir()
    ctx = Context(out=str(tmp_path), device="cpu", quick=True)
    record = run_step("env", ctx, cap_s=0.05)  # the step imports torch: far longer than 50 ms
    assert record["status"] == "timeout"
    assert "timed out" in record["errors"][0]
    assert record["cap_s"] <= 0.1


def test_step_status_follows_checks_and_errors() -> None:
    record = StepRecord("x")
    assert record.status == "ok"
    record.check("fine", True)
    assert record.status == "ok"
    record.check("broken", False, "why")
    assert record.status == "failed"
    errored = StepRecord("y", errors=["boom"])
    assert errored.to_dict()["status"] == "failed"
    assert StepRecord("z", skip_reason="GPU only").to_dict()["status"] == "skipped"
    assert StepRecord("n", figures={"v": float("nan")}).to_dict()["figures"]["v"] is None


def test_markdown_lists_failed_checks_and_skips() -> None:
    failed = StepRecord("probe")
    failed.check("measured bf16 > tf32 > fp32", False, "bf16 1 tf32 2 fp32 3")
    steps = {
        "probe": {**failed.to_dict(), "duration_s": 1.0, "cap_s": 60.0},
        "nccl": skipped("nccl", "one GPU: needs 2+"),
    }
    summary = {
        "device": "cuda",
        "quick": False,
        "started_at": "t",
        "total_s": 1.0,
        "budget_s": 480.0,
        "gpus": [],
        "fidelity_ratio": None,
        "fidelity": {"default_config_ratio": None},
        "counts": {"failed": 1},
        "step_order": ["probe", "nccl"],
        "steps": steps,
    }
    text = markdown(summary)
    assert "| probe | failed |" in text and "measured bf16 > tf32 > fp32" in text
    assert "| nccl | skipped |" in text and "one GPU" in text


def test_independent_loop_trains_the_same_shape_as_tuner() -> None:
    """The yardstick must count what tuner counts: same parameters, same FLOPs per token."""
    from benchmarks.gpu_check.independent import LoopSpec, _LanguageModel, flops_per_token, parameter_count
    from tuner.workloads.gpt import gpt_flops_per_token, gpt_parameter_count
    from tuner.workloads.gpt_model import GPT

    params = {"layers": 3, "d_model": 96, "heads": 4, "vocab_size": 300}
    spec = LoopSpec.from_tuner(params, {"micro_batch_size": 2, "max_sequence_length": 32})
    ours = sum(p.numel() for p in _LanguageModel(spec).parameters())
    theirs = sum(
        p.numel()
        for p in GPT(layers=3, d_model=96, heads=4, vocab_size=300, max_seq=32, dropout=0.0).parameters()
    )
    counted = gpt_parameter_count(layers=3, d_model=96, vocab_size=300, seq=32)
    assert ours == theirs == counted == parameter_count(spec)
    assert flops_per_token(spec) == gpt_flops_per_token(params=counted, layers=3, d_model=96, seq=32)


def test_independent_loop_measures_and_its_losses_fall() -> None:
    from benchmarks.gpu_check.independent import LoopSpec, measure

    spec = LoopSpec(layers=1, d_model=32, heads=2, vocab_size=256, seq=16, micro_batch_size=4, accumulation=2)
    got = measure(spec, warmup_steps=1, timed_steps=3, peak_flops=1e15)
    assert got["items_per_s"] > 0 and got["tokens_per_step"] == 4 * 2 * 16
    assert got["losses_finite"] and 0 < got["mfu"] < 1
    assert got["min_step_s"] is not None and got["min_step_s"] <= got["step_time_s"] * 3


def test_fidelity_plan_fits_slow_best_configs_into_the_cap() -> None:
    from benchmarks.gpu_check.steps import fidelity_plan

    gpu = Context(out="/tmp", device="cuda", quick=False)
    default = {"micro_batch_size": 8, "max_sequence_length": 128}
    fast = {"micro_batch_size": 16, "max_sequence_length": 1024}
    huge = {"micro_batch_size": 256, "gradient_accumulation_steps": 8, "max_sequence_length": 1024}
    rates = {"best_items_per_s": 3e5, "baseline_items_per_s": 5e4}
    assert fidelity_plan(gpu, fast, default, rates) == (3, 2, 6)
    reps, warmup, timed = fidelity_plan(gpu, huge, default, {**rates, "best_items_per_s": 2e5})
    step_s = 256 * 8 * 1024 / 2e5
    assert 2 * reps * (warmup + timed) * step_s <= 60 and timed >= 1
    assert fidelity_plan(Context(out="/tmp", device="cpu", quick=True), huge, default, None) == (2, 1, 3)


def test_the_oom_batch_is_predicted_far_above_the_gpu() -> None:
    from benchmarks.gpu_check.steps import _oom_batch
    from tuner.generator.memory_model import estimate_peak
    from tuner.types import TrialConfig
    from tuner.workloads.gpt import gpt_parameter_count

    params = {"layers": 12, "d_model": 768, "heads": 12, "vocab_size": 50304}
    fit = {"micro_batch_size": 8, "max_sequence_length": 512, "precision": "bf16"}
    target = 3 * 80 * 1024**3
    batch = _oom_batch(params, fit, target)
    shape = {
        "layers": 12,
        "d": 768,
        "heads": 12,
        "seq": 512,
        "vocab": 50304,
        "params": gpt_parameter_count(layers=12, d_model=768, vocab_size=50304, seq=512),
    }

    def peak(b: int) -> int:
        return estimate_peak(
            shape, TrialConfig(micro_batch_size=b, max_sequence_length=512, precision="bf16"), workload="gpt"
        ).peak_bytes

    assert peak(batch) >= target > peak(batch // 2)

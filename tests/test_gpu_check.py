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

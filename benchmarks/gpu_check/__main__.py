"""Orchestrates the GPU check: plan the steps, run each with its cap, write the summary.

python -m benchmarks.gpu_check [--out DIR] [--device cuda|cpu] [--quick] [--only STEP,...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.gpu_check.common import REPO, Context, child_env, json_safe, nvidia_smi_gpus
from benchmarks.gpu_check.report import write_summary

#: (step, GPU cap s, CPU cap s, where it runs): "all"; "gpu" only; "full" on a GPU and on
#: the CPU without --quick (the CPU variant proves the step's own code, not the GPU path).
#: Order: the cheap checks of the suspected CUDA defects first, then the study and what
#: reads its best config; what the 8-minute budget cannot hold is skipped from the end.
#: Caps bound a step; the total budget bounds them all.
PLAN: tuple[tuple[str, int, int, str], ...] = (
    ("env", 30, 30, "all"),
    ("probe", 60, 30, "all"),
    ("telemetry", 20, 0, "gpu"),
    ("matmul_tf32", 30, 0, "gpu"),
    ("devices", 60, 40, "full"),
    ("oom_cycle", 45, 0, "gpu"),
    ("device_assert", 45, 30, "full"),
    ("cuda_context", 45, 0, "gpu"),
    ("memory_model", 60, 30, "all"),
    ("study", 180, 90, "all"),
    ("fidelity", 75, 45, "all"),
    ("precision_matrix", 100, 45, "all"),
    ("profile", 60, 40, "all"),
    # recsys serving grid under a p99 SLO; on the quick CPU run one config (+ one refused)
    ("inference", 90, 30, "all"),
    ("nccl", 60, 0, "gpu"),
)
#: At most 8 minutes on a GPU, 3 on the CPU (issue 17).
TOTAL_BUDGET_S = {"cuda": 480.0, "cpu": 180.0}
#: A step is not started with less than this left of the total budget.
MIN_STEP_S = 5.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "gpu_check")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="default: cuda when nvidia-smi lists a GPU, else cpu",
    )
    parser.add_argument("--quick", action="store_true", help="the smallest run (CPU: tiny shapes, <= 3 min)")
    parser.add_argument("--only", default=None, help="comma-separated steps to run (the rest are skipped)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="total seconds (default 480 GPU, 180 CPU)"
    )
    return parser.parse_args(argv)


def run_step(name: str, ctx: Context, cap_s: float) -> dict:
    """Run one step in its own process group; kill the group at the cap."""
    out = ctx.out_path
    log_path = out / "logs" / f"{name}.log"
    result_path = out / "steps" / f"{name}.json"
    result_path.unlink(missing_ok=True)
    began = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.gpu_check.steps", name, ctx.to_json()],
            cwd=REPO,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            rc = proc.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            # The step's own process group: its trial workers (own groups) notice that
            # their parent died and exit by themselves.
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    duration = time.perf_counter() - began
    if result_path.exists() and not timed_out:
        record = json.loads(result_path.read_text())
    else:
        tail = log_path.read_text(errors="replace")[-1500:]
        record = {
            "name": name,
            "figures": {},
            "checks": [],
            "notes": [f"log tail: {tail}"],
            "skip_reason": None,
            "status": "timeout" if timed_out else "failed",
            "errors": [
                f"timed out after its cap of {cap_s:.0f} s"
                if timed_out
                else f"step process exited with code {rc} and wrote no result"
            ],
        }
    record["duration_s"] = round(duration, 2)
    record["cap_s"] = round(cap_s, 1)
    return record


def skipped(name: str, reason: str) -> dict:
    return {
        "name": name,
        "status": "skipped",
        "skip_reason": reason,
        "figures": {},
        "checks": [],
        "errors": [],
        "notes": [],
        "duration_s": 0.0,
        "cap_s": 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    smi = nvidia_smi_gpus()
    device = args.device or ("cuda" if smi else "cpu")
    out = args.out.resolve()
    (out / "steps").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    ctx = Context(out=str(out), device=device, quick=args.quick)
    only = set(args.only.split(",")) if args.only else None
    budget = args.budget_s or TOTAL_BUDGET_S[device]
    started_at = datetime.now(UTC)
    began = time.perf_counter()
    deadline = began + budget
    steps: dict[str, dict] = {}
    gpu_count = len(smi or [])
    for name, gpu_cap, cpu_cap, where in PLAN:
        remaining = deadline - time.perf_counter()
        if only is not None and name not in only:
            record = skipped(name, "not selected (--only)")
        elif where == "gpu" and device != "cuda":
            record = skipped(name, "GPU only: this run is --device cpu")
        elif where == "full" and device != "cuda" and args.quick:
            record = skipped(name, "GPU step; its CPU variant runs without --quick")
        elif name == "nccl" and gpu_count < 2:
            record = skipped(name, f"one GPU: the NCCL world_size 2 path needs 2+ GPUs ({gpu_count} found)")
        elif remaining < MIN_STEP_S:
            record = skipped(name, f"total time budget of {budget:.0f} s spent")
        else:
            cap = min(gpu_cap if device == "cuda" else cpu_cap, remaining)
            print(f"[gpu_check] {name} (cap {cap:.0f} s) ...", file=sys.stderr, flush=True)
            record = run_step(name, ctx, cap)
        steps[name] = record
        print(
            f"[gpu_check] {name}: {record['status']} in {record['duration_s']:.1f} s"
            + (f" ({record['skip_reason']})" if record.get("skip_reason") else ""),
            file=sys.stderr,
            flush=True,
        )
    fidelity = steps.get("fidelity", {}).get("figures", {})
    counts: dict[str, int] = {}
    for record in steps.values():
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    summary = json_safe(
        {
            "kind": "tuner.gpu_check",
            "version": 1,
            "device": device,
            "quick": args.quick,
            "started_at": started_at.isoformat(timespec="seconds"),
            "total_s": round(time.perf_counter() - began, 1),
            "budget_s": budget,
            "gpus": smi or [],
            "fidelity_ratio": fidelity.get("fidelity_ratio"),
            "fidelity": {
                "definition": "tuner-reported / independent plain-PyTorch items/s of the study's best config "
                "(medians of alternated runs in one process)",
                "default_config_ratio": ((fidelity.get("configs") or {}).get("default") or {}).get("ratio"),
                "per_repetition": ((fidelity.get("configs") or {}).get("best") or {}).get("ratio_per_rep"),
                # CPU only: fastest tuner step vs fastest independent step (load-robust)
                "best_step_ratio": ((fidelity.get("configs") or {}).get("best") or {}).get("best_step_ratio"),
                "study_reported_over_independent": fidelity.get("study_reported_over_independent"),
            },
            "counts": counts,
            "step_order": [name for name, *_ in PLAN],
            "steps": steps,
        }
    )
    write_summary(out, summary)
    print(
        f"[gpu_check] {counts} in {summary['total_s']} s; fidelity ratio {summary['fidelity_ratio']}; "
        f"summary: {out / 'summary.md'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does tuner report the throughput a plain PyTorch loop gets? (issue 17)

    python benchmarks/fidelity.py [--reps 7] [--warmup 2] [--timed 6] [--device cpu] [--json FILE]

For several GPT shapes and precisions, tuner's trial (the gpt workload's `run_trial`, what a
study measures) and an independent plain-PyTorch loop written apart from the runner
(`benchmarks/gpu_check/independent.py`: its own model code, optimizer, precision handling
and clock) train the same config, alternated in one process (A/B, then B/A, ...). Printed
per config: median tuner / independent items/s and the range of the per-repetition
ratios (goal 0.95-1.05), the ratio of the fastest single steps of each side (on a shared
CPU other processes only ever add time, so this is the load-robust view), and the largest MFU either side reports (must never exceed 1;
peaks as a study gets them, from `tuner probe`). Exit code 1 when an MFU is
above 1 or a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_check.fidelity_core import compare

#: (label, gpt params, config): tiny to small shapes, fp32 and bf16, checkpointing and
#: accumulation; each trains in about a second per run on 2 cores.
CASES: tuple[tuple[str, dict, dict], ...] = (
    (
        "L2 d64 s128 b16 fp32",
        {"layers": 2, "d_model": 64, "heads": 4},
        {"micro_batch_size": 16, "max_sequence_length": 128, "precision": "fp32"},
    ),
    (
        "L2 d64 s128 b16 bf16",
        {"layers": 2, "d_model": 64, "heads": 4},
        {"micro_batch_size": 16, "max_sequence_length": 128, "precision": "bf16"},
    ),
    (
        "L4 d128 s128 b8 fp32",
        {"layers": 4, "d_model": 128, "heads": 4},
        {"micro_batch_size": 8, "max_sequence_length": 128, "precision": "fp32"},
    ),
    (
        "L4 d128 s128 b8 bf16",
        {"layers": 4, "d_model": 128, "heads": 4},
        {"micro_batch_size": 8, "max_sequence_length": 128, "precision": "bf16"},
    ),
    (
        "L4 d128 s128 b8x2 fp32 ckpt",
        {"layers": 4, "d_model": 128, "heads": 4},
        {
            "micro_batch_size": 8,
            "max_sequence_length": 128,
            "precision": "fp32",
            "gradient_accumulation_steps": 2,
            "activation_checkpointing": True,
        },
    ),
    (
        "L4 d256 s256 b4 fp32",
        {"layers": 4, "d_model": 256, "heads": 8},
        {"micro_batch_size": 4, "max_sequence_length": 256, "precision": "fp32"},
    ),
    (
        "L4 d256 s256 b4 bf16",
        {"layers": 4, "d_model": 256, "heads": 8},
        {"micro_batch_size": 4, "max_sequence_length": 256, "precision": "bf16"},
    ),
)
GOAL = (0.95, 1.05)


def peak_function(device: str) -> Callable[[str], float | None]:
    """Peak FLOP/s per precision exactly as a study gets them (`probe_for_mfu`: datasheet
    figures on a GPU, the core-count x clock x FMA-width bound on a CPU; `trial_peak_flops`).

    A measured peak is no upper bound on a shared machine: timed while others load it, it
    comes out low and MFU above 1 (seen here: 0.038 TFLOP/s measured under load, 0.19 idle).
    """
    from tuner.study.hardware_plan import probe_for_mfu, trial_peak_flops
    from tuner.types import TrialConfig

    profile = probe_for_mfu()
    return lambda precision: trial_peak_flops(profile, TrialConfig(precision=precision), device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    began = time.perf_counter()
    peak_for = peak_function(args.device)
    load_before = os.getloadavg()
    print(
        f"fidelity: {len(CASES)} configs x {args.reps} alternated repetitions on {args.device}, "
        f"{args.warmup} warm-up + {args.timed} timed steps; peak TFLOP/s for MFU "
        + ", ".join(f"{p} {(peak_for(p) or 0) / 1e12:.3f}" for p in ("fp32", "bf16"))
    )
    header = f"{'config':<30} {'tuner tok/s':>12} {'indep. tok/s':>12} {'ratio':>6} {'range':>13} {'best-step':>9} {'MFU max t|i':>12}"
    print(header)
    rows = []
    bad = False
    for label, shape, config in CASES:
        params = {"vocab_size": 256, "dropout": 0.0, **shape}
        result = compare(
            {label: {**config, "learning_rate": 1e-3}},
            params,
            device=args.device,
            reps=args.reps,
            warmup=args.warmup,
            timed=args.timed,
            peak_for=peak_for,
        )[label]
        mfu_t = max((m for m in result["mfu"] if m is not None), default=None)
        mfu_i = max((m for m in result["independent_mfu"] if m is not None), default=None)
        over = any(m is not None and m > 1.0 for m in (mfu_t, mfu_i))
        bad |= over or not result["all_ok"]
        low, high = result["ratio_range"] or (float("nan"), float("nan"))
        print(
            f"{label:<30} {result['tuner_median'] or 0:>12,.0f} {result['independent_median'] or 0:>12,.0f} "
            f"{result['ratio'] or float('nan'):>6.3f} {low:>6.3f}-{high:<6.3f} "
            f"{result['best_step_ratio'] or float('nan'):>9.3f} "
            f"{mfu_t if mfu_t is not None else float('nan'):>5.3f}|{mfu_i if mfu_i is not None else float('nan'):<5.3f}"
            + ("  MFU > 1!" if over else "")
            + ("" if result["all_ok"] else f"  errors: {result['errors']}")
        )
        rows.append({"label": label, "params": params, **result})
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    best_steps = [r["best_step_ratio"] for r in rows if r["best_step_ratio"] is not None]
    inside = sum(GOAL[0] <= r <= GOAL[1] for r in ratios)
    print(
        f"median ratio over configs {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); "
        f"{inside}/{len(ratios)} configs inside the {GOAL[0]}-{GOAL[1]} goal; "
        + (
            f"best-step ratio median {statistics.median(best_steps):.3f} "
            f"(range {min(best_steps):.3f}-{max(best_steps):.3f}); "
            if best_steps
            else ""
        )
        + f"MFU above 1: {'yes' if bad else 'never'}; {time.perf_counter() - began:.0f} s; "
        f"1-min load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "started_at": started.isoformat(timespec="seconds"),
                    "peaks_tflops": {p: (peak_for(p) or 0) / 1e12 for p in ("fp32", "bf16")},
                    "args": vars(args) | {"json": str(args.json)},
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: tuned serving config vs the default, at p99 <= SLO, for recsys and gpt.

    python benchmarks/inference.py [--trials 12] [--pairs 3] [--slo 50] [--workloads recsys,gpt] [--compile]

For each workload, in one run on this machine (open loop: Poisson arrivals, latency from
arrival to answer including time queued in the batcher; QPS at the SLO = the highest rate
the config sustains with p99 <= SLO, found by the trial's rate ramp):

1. default:   fp32, batch 1, eager, no batching window, one instance (the untuned server);
2. grid:      a grid over max_batch_size only (window 0, fp32, eager; what a batch-size
              sweep, or Triton Model Analyzer's batch axis alone, would find);
3. tuned:     an inference study (TPE, --trials, the generator's starting configs first,
              a would-be best confirmed by the median of 3 measurements) over batching,
              window, padding, precision (bf16, int8 dynamic via torchao or fbgemm),
              instances and threads, fusion and compile for recsys (compile for gpt with
              --compile: slow to compile per length), accuracy-guarded against the
              fp32 eager reference;
4. plain PyTorch, closed loop (no queueing, the issue's reference method): `model(batch)`
   back to back at batch 1 fp32 and at the tuned config's precision and batch size.

5. back-to-back rounds (`--pairs`, default 3): after the search, the default, the grid's
   best and the tuned best config are measured again, one after the other in a rotating
   order, so each round's three numbers see the same machine load; the ratios reported
   are the MEDIAN of the per-round ratios with their min-max range. A single study number
   and a single grid number come from different moments, and one config measured twice
   on this shared machine can differ 2x.

Prints QPS at the SLO (the search's numbers and the rounds' medians), the ratios
tuned/default and tuned/grid per round (median, range), the p99 at the default's
sustainable rate (vs the default's p99 there) of the tuned config and of the study's
lowest-latency config at that rate (when another), and the machine's load.
Goals (issue 14): >= 4x the default's QPS, >= 1.5x the batch-only grid, p99 at the
default's QPS down >= 60%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "recsys": {"tables": 8, "rows": 100_000, "dim": 64},
    "gpt": {"layers": 4, "d_model": 256, "heads": 4},
}
SPACES = {
    "recsys": {
        "max_batch_size": {"type": "categorical", "choices": [1, 16, 64, 256, 512]},
        "batch_window_ms": {"type": "categorical", "choices": [0, 1, 2, 5]},
        "serving_precision": {"type": "categorical", "choices": ["fp32", "bf16", "int8_dynamic"]},
        "int8_backend": {
            "type": "categorical",
            "choices": ["torchao", "fbgemm"],
            "when": {"serving_precision": "int8_dynamic"},
        },
        "instances": {"type": "int", "low": 1, "high": 2},
        "threads_per_instance": {"type": "categorical", "choices": [0, 1]},
        # the DLRM's fused serving form (one table-batched lookup) and inductor's kernels
        "fusion": {"type": "categorical", "choices": [False, True]},
        "compile_mode": {"type": "categorical", "choices": ["off", "default"]},
    },
    "gpt": {
        "max_batch_size": {"type": "categorical", "choices": [1, 2, 4, 8, 16]},
        "batch_window_ms": {"type": "categorical", "choices": [0, 2, 5, 10]},
        "padding": {"type": "categorical", "choices": ["longest", "buckets", "packed"]},
        "serving_precision": {"type": "categorical", "choices": ["fp32", "bf16", "int8_dynamic"]},
        "int8_backend": {
            "type": "categorical",
            "choices": ["torchao", "fbgemm"],
            "when": {"serving_precision": "int8_dynamic"},
        },
        "instances": {"type": "int", "low": 1, "high": 2},
        "threads_per_instance": {"type": "categorical", "choices": [0, 1]},
    },
}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def closed_loop(workload: str, params: dict, config, seconds: float = 2.0) -> dict:
    """Plain PyTorch: the same batch of requests through the served model, back to back."""
    from tuner.inference.prepare import prepare_model
    from tuner.inference.trial import percentile, serving_setup

    setup = serving_setup(workload, params)
    prepared = prepare_model(setup.model, config)
    requests = setup.make_requests(config.max_batch_size, 77)
    if workload == "gpt":  # the reference: every prompt 128 tokens
        import torch

        requests = [torch.randint(0, 256, (128,)) for _ in requests]
    times = []
    with prepared.running():
        for _ in range(3):
            setup.forward(prepared.module, requests, "longest")
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 20:
            start = time.perf_counter()
            setup.forward(prepared.module, requests, "longest")
            times.append(time.perf_counter() - start)
    return {
        "batch": config.max_batch_size,
        "precision": config.serving_precision
        + (f"/{config.int8_backend}" if config.int8 else "")
        + (", fused" if config.fusion else "")
        + (f", compiled ({config.compile_mode})" if config.compile_mode != "off" else ""),
        "qps": config.max_batch_size / statistics.fmean(times),
        "p99_ms": percentile([t * 1000 for t in times], 99),
    }


def back_to_back(measure, p99_at, configs: dict, count: int, workload: str, latency=None) -> list[dict]:
    """`count` rounds measuring every config of `configs` once, in an order rotated each
    round (so no config is always first after a quiet pause); QPS at the SLO, 0 when a
    measurement met the SLO at no rate. Right after the default's measurement, the tuned
    config is offered the rate the default just sustained: its p99 there vs the default's; so
    is `latency`, the study's lowest-p99 config at the default's rate, when it differs."""
    names = list(configs)
    rounds = []
    for index in range(count):
        order = names[index % len(names) :] + names[: index % len(names)]
        row: dict = {"order": order, "load": os.getloadavg()[0]}
        for name in order:
            result = measure(configs[name], 5000 + 31 * index + names.index(name))
            row[name] = result.qps if result.ok else 0.0
            if name == "default" and result.ok:
                row["default_p99_ms"] = result.p99_ms
                for other, config in (("tuned", configs["tuned"]), ("latency", latency)):
                    if config is not None:
                        point = p99_at(config, result.qps, 6000 + index)
                        row[f"{other}_p99_at_default_qps_ms"] = point.p99_ms if point else None
        rounds.append(row)
        p99 = (
            f"; p99 at the default's {row['default']:,.0f} QPS: default {row['default_p99_ms']:.1f} ms, "
            + ", ".join(
                f"{other} {row[f'{other}_p99_at_default_qps_ms']:.1f} ms"
                for other in ("tuned", "latency")
                if row.get(f"{other}_p99_at_default_qps_ms") is not None
            )
            if row.get("tuned_p99_at_default_qps_ms") is not None
            else ""
        )
        print(
            f"[{workload}] round {index + 1}: "
            + ", ".join(f"{n} {row[n]:,.0f}" for n in names)
            + f" QPS{p99} (load {row['load']:.1f})",
            file=sys.stderr,
            flush=True,
        )
    return rounds


def p99_reduction_summary(rounds: list[dict], config: str = "tuned") -> dict | None:
    """1 - `config`'s p99 / default p99 at the default's rate, per round: median, min, max."""
    key = f"{config}_p99_at_default_qps_ms"
    cuts = [
        1 - r[key] / r["default_p99_ms"] for r in rounds if r.get(key) is not None and r.get("default_p99_ms")
    ]
    if not cuts:
        return None
    return {"median": statistics.median(cuts), "min": min(cuts), "max": max(cuts), "pairs": len(cuts)}


def ratio_summary(rounds: list[dict], against: str) -> dict | None:
    """tuned / `against` per round: median, min, max (rounds where `against` had no rate
    at the SLO are left out and counted)."""
    ratios = [r["tuned"] / r[against] for r in rounds if r[against] > 0]
    if not ratios:
        return None
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "pairs": len(ratios),
        "left_out": len(rounds) - len(ratios),
    }


def bench(workload: str, args: argparse.Namespace) -> dict:
    from tuner.inference.config import InferenceConfig
    from tuner.inference.request import InferenceRequest
    from tuner.inference.trial import p99_at_rate, run_inference_trial, serving_setup
    from tuner.space.search_space import SearchSpace
    from tuner.study.inference_study import run_inference_study
    from tuner.study.spec import StudySpec
    from tuner.workloads import get_workload

    params = get_workload(workload).resolve_params(SHAPES[workload])
    serving_setup(workload, params)
    print(f"[{workload}] load {load()}", file=sys.stderr, flush=True)

    def measure(config: InferenceConfig, seed: int):
        return run_inference_trial(InferenceRequest(workload, params, config, slo_p99_ms=args.slo, seed=seed))

    def p99_at(config: InferenceConfig, rate: float, seed: int):
        return p99_at_rate(InferenceRequest(workload, params, config, slo_p99_ms=args.slo, seed=seed), rate)

    grid = []
    for size in SPACES[workload]["max_batch_size"]["choices"]:
        result = measure(InferenceConfig(max_batch_size=size), 100 + size)
        grid.append((size, result))
        print(
            f"[{workload}] grid batch {size}: {result.status.value} {result.qps:,.0f} QPS p99 {result.p99_ms}",
            file=sys.stderr,
            flush=True,
        )
    space_params = dict(SPACES[workload])
    if args.compile and "compile_mode" not in space_params:
        space_params["compile_mode"] = {"type": "categorical", "choices": ["off", "default"]}
    spec = StudySpec(
        name=f"bench-{workload}-{int(time.time())}",
        workload=workload,
        workload_params=params,
        space=SearchSpace.from_dict(
            {"name": f"{workload}-bench", "kind": "inference", "params": space_params}
        ),
        objectives=("qps_at_slo",),
        n_trials=args.trials,
        slo_p99_ms=args.slo,
        seed=args.seed,
    )
    outcome = run_inference_study(spec, storage=f"sqlite:///{args.db}", progress=True)
    default = outcome.baseline_result
    best_grid = max((r.qps for _, r in grid if r.ok), default=0.0)
    grid_best_size = max(((s, r) for s, r in grid if r.ok), key=lambda sr: sr[1].qps, default=(None, None))[0]
    tuned = outcome.best_result
    latency = outcome.latency_config()
    rounds = []
    if outcome.best_config is not None and grid_best_size is not None:
        rounds = back_to_back(
            measure,
            p99_at,
            {
                "default": InferenceConfig(),
                "grid": InferenceConfig(max_batch_size=grid_best_size),
                "tuned": outcome.best_config,
            },
            args.pairs,
            workload,
            latency=latency if latency != outcome.best_config else None,
        )
    peers = [closed_loop(workload, params, InferenceConfig())]
    if outcome.best_config is not None:
        peers.append(closed_loop(workload, params, outcome.best_config.replace(instances=1)))
    return {
        "workload": workload,
        "shape": SHAPES[workload],
        "slo_p99_ms": args.slo,
        "default": {"qps": default.qps, "p99_ms": default.p99_ms, "status": default.status.value},
        "grid": {str(s): {"qps": r.qps, "p99_ms": r.p99_ms, "status": r.status.value} for s, r in grid},
        "grid_best_qps": best_grid,
        "tuned": None
        if tuned is None
        else {
            "config": outcome.best_config.to_dict(),
            "qps": tuned.qps,
            "p99_ms": tuned.p99_ms,
            "accuracy": tuned.accuracy,
            "notes": list(tuned.notes),
        },
        "ratio_vs_default": outcome.ratio,
        "ratio_vs_grid": (tuned.qps / best_grid) if tuned and best_grid else None,
        "grid_best_batch": grid_best_size,
        "rounds": rounds,
        "rounds_vs_default": ratio_summary(rounds, "default"),
        "rounds_vs_grid": ratio_summary(rounds, "grid"),
        "rounds_p99_reduction_at_default_qps": p99_reduction_summary(rounds),
        "latency_config": latency.to_dict() if latency is not None else None,
        "rounds_latency_p99_reduction_at_default_qps": p99_reduction_summary(rounds, "latency"),
        "rounds_median_qps": {
            name: statistics.median([r[name] for r in rounds]) for name in ("default", "grid", "tuned")
        }
        if rounds
        else None,
        "tuned_p99_at_default_qps_ms": outcome.best_p99_at_baseline_qps_ms,
        "p99_reduction_at_default_qps": outcome.p99_reduction_at_baseline_qps,
        "closed_loop_plain_pytorch": peers,
        "trials": outcome.counts(),
        "duration_s": outcome.duration_s,
        "load_after": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument(
        "--pairs", type=int, default=3, help="back-to-back rounds of default, grid best and tuned best"
    )
    parser.add_argument("--slo", type=float, default=50.0)
    parser.add_argument("--workloads", default="recsys,gpt")
    parser.add_argument(
        "--compile", action="store_true", help="gpt: also search compile_mode off/default (slow to compile; recsys always does)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", default="/tmp/tuner-inference-bench.db")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    from tuner.study import quiet_optuna_logging

    quiet_optuna_logging()
    rows = [bench(w.strip(), args) for w in args.workloads.split(",") if w.strip()]
    print(
        f"\ninference at p99 <= {args.slo:g} ms, open loop (Poisson arrivals, queueing included); load {load()}"
    )
    print(
        f"{'workload':<8} {'default QPS':>12} {'grid best':>10} {'tuned QPS':>10} {'x default':>9} {'x grid':>7} {'p99@default QPS':>22}"
    )
    for row in rows:
        tuned = row["tuned"] or {"qps": 0.0}
        red = row["p99_reduction_at_default_qps"]
        p99 = (
            f"{row['default']['p99_ms']:.1f}->{row['tuned_p99_at_default_qps_ms']:.1f} ms ({'down' if red >= 0 else 'UP'} {abs(red):.0%})"
            if red is not None
            else "n/a"
        )
        fmt = lambda v: f"x{v:.2f}" if v is not None else "n/a"  # noqa: E731
        print(
            f"{row['workload']:<8} {row['default']['qps']:>12,.0f} {row['grid_best_qps']:>10,.0f} {tuned['qps']:>10,.0f} "
            f"{fmt(row['ratio_vs_default']):>9} {fmt(row['ratio_vs_grid']):>7} {p99:>22}"
        )
        if row["tuned"]:
            print(f"  tuned config: {row['tuned']['config']}  accuracy {row['tuned']['accuracy']}")
        if row["rounds"]:
            med = row["rounds_median_qps"]
            print(
                f"  back to back, {len(row['rounds'])} rounds (medians): default {med['default']:,.0f}, "
                f"grid (batch {row['grid_best_batch']}) {med['grid']:,.0f}, tuned {med['tuned']:,.0f} QPS; loads "
                + ", ".join(f"{r['load']:.1f}" for r in row["rounds"])
            )
            for label, key in (
                ("tuned", "rounds_p99_reduction_at_default_qps"),
                ("the study's lowest-p99 config at that rate", "rounds_latency_p99_reduction_at_default_qps"),
            ):
                cut = row[key]
                if cut:
                    print(
                        f"  p99 at the default's rate, {label} vs default per round: median reduction {cut['median']:.0%} "
                        f"(range {cut['min']:.0%} to {cut['max']:.0%}; negative: higher; {cut['pairs']} rounds)"
                    )
            if row["latency_config"] and row["rounds_latency_p99_reduction_at_default_qps"]:
                print(f"  lowest-p99 config at the default's rate: {row['latency_config']}")
            for name in ("default", "grid"):
                summary = row[f"rounds_vs_{name}"]
                if summary:
                    print(
                        f"  tuned / {name} per round: median x{summary['median']:.2f} "
                        f"(range x{summary['min']:.2f}-x{summary['max']:.2f}, {summary['pairs']} rounds"
                        + (
                            f", {summary['left_out']} left out: {name} had no rate at the SLO"
                            if summary["left_out"]
                            else ""
                        )
                        + ")"
                    )
        for peer in row["closed_loop_plain_pytorch"]:
            print(
                f"  plain PyTorch closed loop, batch {peer['batch']} {peer['precision']}: {peer['qps']:,.0f} QPS, p99 {peer['p99_ms']:.2f} ms"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

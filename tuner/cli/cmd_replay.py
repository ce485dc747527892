"""`tuner replay`: run a search strategy against a measured table, trial by trial."""

from __future__ import annotations

import argparse
import json
from typing import Any

STRATEGY_CHOICES = ("tuner", "tpe", "random", "grid")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="compare search strategies on a measured table (no training)",
        description=(
            "Answer each trial of a strategy from a measured table (format: shared/data/h200/README.md) "
            "and report how many trials it needed to reach 95% of the table's best throughput. "
            "tpe/random/grid are plain Optuna; tuner adds the config generator and memory model, "
            "which need --hardware (the profile of the machine that measured the table)."
        ),
    )
    parser.add_argument("table", help="the measured table (.jsonl)")
    parser.add_argument("--strategy", choices=STRATEGY_CHOICES, default="tuner")
    parser.add_argument("--trials", type=int, default=20, help="counted trials (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hardware", metavar="FILE", help="hardware profile or raw NVML readings (needed by tuner)")
    parser.add_argument("--json", action="store_true", help="one JSON record per trial, then a summary record")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        metavar="S",
        help="learning-curve tables: simulated search seconds per strategy (default: 20 x the default config's curve)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tuner.hardware.profile import load_profile
    from tuner.replay.curves import is_curve_table
    from tuner.replay.strategies import ReplayRecord, run_strategy
    from tuner.replay.table import load_table

    if is_curve_table(args.table):
        return run_curves(args)
    table = load_table(args.table)
    hardware = load_profile(args.hardware) if args.hardware else None

    def show(record: ReplayRecord) -> None:
        if args.json:
            print(json.dumps(record.to_dict()), flush=True)
            return
        number = f"{record.trial:>3}" if record.trial is not None else "  -"
        speed = f"{record.items_per_s:,.0f} {table.item_unit}/s" if record.items_per_s else ""
        predicted = f" predicted {record.predicted_bytes / 1024**3:.1f} GiB" if record.predicted_bytes else ""
        why = f" ({record.reason})" if record.reason and not record.items_per_s else ""
        print(f"{number} {record.status:<10} {record.config} {speed}{predicted}{why}")

    _, summary = run_strategy(
        table, args.strategy, trials=args.trials, seed=args.seed, hardware=hardware, on_record=show
    )
    if args.json:
        print(json.dumps(summary.to_dict()))
        return 0
    reached = summary.trials_to_95pct if summary.trials_to_95pct is not None else "never"
    print(
        f"{summary.strategy} seed {summary.seed}: {summary.trials} trials, 95% of the table's best "
        f"({summary.table_best_items_per_s:,.0f} {table.item_unit}/s) at trial {reached}, "
        f"{summary.oom_trials} out-of-memory trials, {summary.infeasible_skipped} predicted infeasible (not run)"
    )
    return 0


def run_curves(args: argparse.Namespace) -> int:
    """A learning-curve table: strategies for time_to_target, compared in simulated seconds."""
    from tuner.replay.curve_strategies import CURVE_STRATEGIES, CurveRecord, run_curve_strategy
    from tuner.replay.curves import load_curve_table

    table = load_curve_table(args.table)
    strategy = args.strategy if args.strategy in CURVE_STRATEGIES else "tuner"
    budget = args.budget_seconds
    if budget is None:
        default = table.default_row
        longest = max(r.curve[-1][1] for r in table.rows if r.ok)
        budget = 20 * (default.curve[-1][1] if default is not None and default.ok else longest)

    def show(record: CurveRecord) -> None:
        if args.json:
            print(json.dumps(record.to_dict()), flush=True)
            return
        value = "" if record.value is None else f" time to target {record.value:,.2f} s"
        print(f"{record.trial:>3} {record.state:<9} {record.config} {record.checkpoints_run} checkpoints, "
              f"{record.seconds:.2f} s{value} (search clock {record.clock_s:.1f} s)")

    _, summary = run_curve_strategy(table, strategy, budget_s=budget, seed=args.seed, on_record=show)
    if args.json:
        print(json.dumps(summary.to_dict()))
        return 0

    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f} s"

    print(
        f"{summary.strategy} seed {summary.seed}: {summary.trials} trials ({summary.pruned} pruned) in "
        f"{summary.budget_s:.1f} simulated s; target val loss {summary.target_val_loss:.4f} first reached after "
        f"{seconds(summary.search_s_to_target)} of search; best time to target {seconds(summary.best_time_to_target_s)} "
        f"(table best {seconds(summary.table_best_time_to_target_s)}, default {seconds(summary.default_time_to_target_s)})"
    )
    return 0

"""Strategy benchmark on measured tables: tuner vs plain Optuna TPE / random / grid.

    python benchmarks/replay_strategies.py [--seeds 20] [--trials 20] [--hardware PROBE] [TABLE ...]

For each table and strategy, runs every seed and prints the median number of trials to
reach 95% of the table's best throughput (a seed that never reaches it counts as
infinite), the total out-of-memory trials, and the ratio of each baseline's median to the
tuner's. Results: docs/benchmarks-replay.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from tuner.hardware.profile import load_profile
from tuner.replay.strategies import STRATEGIES, median, run_strategy
from tuner.replay.table import load_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "h200"
DEFAULT_TABLES = [DATA / "gpt_124m.jsonl", DATA / "dlrm_8x1m.jsonl"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="*", type=Path, default=DEFAULT_TABLES)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--hardware", type=Path, default=DATA / "probe.json")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per table and strategy")
    args = parser.parse_args(argv)
    hardware = load_profile(args.hardware)
    print(f"{'table':<14} {'strategy':<8} {'median trials to 95%':>21} {'seeds reaching':>15} {'OOM trials':>11} {'x vs tuner':>11}")
    for path in args.tables:
        table = load_table(path)
        medians: dict[str, float] = {}
        for strategy in STRATEGIES:
            started = time.perf_counter()
            runs = [run_strategy(table, strategy, trials=args.trials, seed=s, hardware=hardware)[1] for s in range(args.seeds)]
            reached = [r.trials_to_95pct for r in runs]
            medians[strategy] = median(reached)
            ooms = sum(r.oom_trials for r in runs)
            ratio = medians[strategy] / medians["tuner"] if medians.get("tuner") else math.nan
            hits = sum(r is not None for r in reached)
            print(
                f"{table.workload:<14} {strategy:<8} {medians[strategy]:>21g} {hits:>9}/{args.seeds:<5} {ooms:>11} {ratio:>10.1f}x"
            )
            if args.json:
                print(
                    json.dumps(
                        {
                            "table": str(path),
                            "strategy": strategy,
                            "seeds": args.seeds,
                            "trials": args.trials,
                            "median_trials_to_95pct": medians[strategy],
                            "trials_to_95pct": reached,
                            "oom_trials": ooms,
                            "infeasible_skipped": sum(r.infeasible_skipped for r in runs),
                            "seconds": round(time.perf_counter() - started, 2),
                        }
                    )
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

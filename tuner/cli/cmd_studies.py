"""`tuner studies`: list the studies in a storage with their progress and best value."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "studies",
        help="list studies (name, workload, trials done/N, best value, status)",
        description="List the tuning studies stored in --storage.",
    )
    parser.add_argument("--storage", metavar="URL", help="database URL (default: sqlite:///tuner.db here)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def _best_text(summary: Any) -> str:
    if summary.best_value is not None:
        objective = summary.objectives[0] if summary.objectives else ""
        return f"{summary.best_value:,.0f}/s" if objective == "throughput" else f"{summary.best_value:.4f}"
    if summary.n_pareto:
        return f"{summary.n_pareto} on Pareto front"
    return "-"


def run(args: argparse.Namespace) -> int:
    from tuner.study.results import list_studies

    summaries = list_studies(args.storage)
    if args.json:
        print(json.dumps([{**s.__dict__, "objectives": list(s.objectives)} for s in summaries], indent=2))
        return 0
    if not summaries:
        print("no studies yet; start one with `tuner tune SPACE`")
        return 0
    rows = [("NAME", "WORKLOAD", "OBJECTIVE", "TRIALS", "BEST", "STATUS")]
    for s in summaries:
        target = s.n_trials_target if s.n_trials_target is not None else "-"
        running = f" (+{s.n_running} running)" if s.n_running else ""
        rows.append(
            (
                s.name,
                s.workload or "?",
                "+".join(s.objectives) or "?",
                f"{s.n_done}/{target}{running}",
                _best_text(s),
                s.status,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0

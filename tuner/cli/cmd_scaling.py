"""`tuner scaling --study NAME`: one config of a study at world sizes 1, 2, 4...; speedup
and efficiency per size, stored with the study (`tuner.study.scaling`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tuner.cli.cmd_tune import add_executor_args, executor_choice
from tuner.errors import FieldProblem, ValidationError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "scaling",
        help="measure a study's config at world sizes 1, 2, 4... (speedup, efficiency)",
        description=(
            "Run the study's best trial (or --trial N) again with world_size = each of --world-sizes, "
            "one after the other, and report throughput, speedup over world size 1 and efficiency "
            "(speedup / world size). Stored with the study as the attr tuner.scaling. With --executor ray "
            "the ranks may span the cluster's nodes."
        ),
    )
    parser.add_argument("--study", required=True, metavar="NAME")
    parser.add_argument("--storage", metavar="URL", help="database URL (default: sqlite:///tuner.db here)")
    parser.add_argument("--trial", type=int, metavar="N", help="the trial whose config to scale (default: best)")
    parser.add_argument("--world-sizes", default="1,2,4", metavar="LIST", help="comma-separated, must include 1 (default 1,2,4)")
    parser.add_argument("--steps", type=int, metavar="N", help="optimizer steps per run (default: the study's budget)")
    parser.add_argument("--device", default=None, metavar="DEV", help="default: the study's device")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_executor_args(parser)
    parser.set_defaults(handler=run)


def parse_world_sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValidationError(
            FieldProblem("--world-sizes", text, "is not a comma-separated list of integers", "e.g. 1,2,4")
        ) from None


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tuner.executors.choice import make_executor
    from tuner.study import quiet_optuna_logging
    from tuner.study.results import load_optuna_study, study_spec
    from tuner.study.scaling import check_world_sizes, measure_scaling, scaling_table

    quiet_optuna_logging()
    sizes = check_world_sizes(parse_world_sizes(args.world_sizes))
    spec = study_spec(load_optuna_study(args.storage, args.study))
    budget = None
    if spec is not None and args.steps is not None:
        budget = dataclasses.replace(spec.budget, max_steps=args.steps, warmup_steps=min(spec.budget.warmup_steps, args.steps - 1))
    device = args.device or (spec.device if spec is not None else "auto")
    # One run at a time: concurrent runs would share the devices they measure.
    executor = make_executor(
        executor_choice(args), workers=1, device=device, preload_workloads=(spec.workload,) if spec else ()
    )
    try:
        report = measure_scaling(
            args.storage, args.study, executor, world_sizes=sizes, trial_number=args.trial, budget=budget, device=device
        )
    finally:
        executor.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else scaling_table(report))
    return 0 if all(p.status == "ok" for p in report.points) else 1

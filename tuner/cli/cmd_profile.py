"""`tuner profile`: where a training step's time goes, per operator and category.

torch loads inside `run` only, so `tuner --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tuner.errors import FieldProblem, ValidationError, WorkloadError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="profile a few training steps of one config (top operators, time per category)",
        description=(
            "Run a few real training steps of one config under torch.profiler and show the top "
            "operators by self time (CPU and GPU) and the share of time in matmul, attention, "
            "optimizer, communication, data movement and other."
        ),
    )
    parser.add_argument("--workload", required=True, help="registered workload name, e.g. gpt")
    parser.add_argument(
        "--config",
        default="{}",
        help="knob values as JSON (or a JSON file), e.g. '{\"micro_batch_size\": 4}'; "
        "unset knobs take the workload's default config",
    )
    parser.add_argument("--params", default="{}", help="workload parameters as JSON (or a JSON file)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="unprofiled steps first (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=15, help="operators listed per timeline (default 15)")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    parser.add_argument("--output", metavar="FILE", help="also save the profile as JSON to FILE")
    parser.set_defaults(handler=run)


def _json_object(option: str, text: str) -> dict[str, Any]:
    """Parse `text` (JSON, or the path of a JSON file) as an object for `option`."""
    source = text
    path = Path(text)
    if not text.lstrip().startswith("{") and path.is_file():
        source = path.read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            FieldProblem(
                option, text, f"is not JSON ({exc.msg})", f"pass e.g. {option} '{{\"micro_batch_size\": 4}}'"
            )
        ) from None
    if not isinstance(value, dict):
        raise ValidationError(FieldProblem(option, text, "is not a JSON object", 'pass {"key": value, ...}'))
    return value


def run(args: argparse.Namespace) -> int:
    from tuner.types import TrialConfig
    from tuner.workloads import TrainableWorkload, get_workload

    config_values = _json_object("--config", args.config)
    params_values = _json_object("--params", args.params)
    workload = get_workload(args.workload)
    if not isinstance(workload, TrainableWorkload):
        raise WorkloadError(
            FieldProblem(
                "workload",
                args.workload,
                "does not train a model here (nothing to profile)",
                "profile a trainable workload such as gpt or recsys",
            )
        )
    params = workload.resolve_params(params_values)
    base = workload.default_config(params).to_dict()
    config = TrialConfig.from_dict({**base, **config_values}, source="--config")

    from tuner.trial.profiler import format_profile, profile_config

    report = profile_config(
        workload,
        config,
        params,
        steps=args.steps,
        device=args.device,
        seed=args.seed,
        warmup_steps=args.warmup_steps,
        top_k=args.top,
    )
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_profile(report))
        if args.output:
            print(f"saved to {args.output}", file=sys.stderr)
    return 0 if report["status"] == "ok" else 1

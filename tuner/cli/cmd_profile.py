"""`tuner profile`: where a training step's time goes, per operator and category.

Profiles either one config of a workload (`--workload`) or a trial of a study
(`--study`, its best trial unless `--trial N`); a study trial's profile is stored with
the study, so the REST API and the dashboard show its hotspots on the trial's page.

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
            "optimizer, communication, data movement and other. With --study, profile a trial "
            "of a study (its best by default) and store the profile with the study."
        ),
    )
    parser.add_argument("--workload", help="registered workload name, e.g. gpt (or use --study)")
    parser.add_argument(
        "--study", metavar="NAME", help="profile a trial of this study instead (its best trial by default)"
    )
    parser.add_argument(
        "--storage", metavar="URL", help="with --study: database URL (default: sqlite:///tuner.db)"
    )
    parser.add_argument(
        "--trial", type=int, metavar="N", help="with --study: the trial number to profile (default: the best)"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="knob values as JSON (or a JSON file), e.g. '{\"micro_batch_size\": 4}'; "
        "unset knobs take the workload's default config",
    )
    parser.add_argument("--params", default=None, help="workload parameters as JSON (or a JSON file)")
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


def _check_target(args: argparse.Namespace) -> None:
    """Exactly one of --workload / --study; the options of the other mode are refused."""
    if (args.workload is None) == (args.study is None):
        given = "both" if args.workload is not None else "neither"
        raise ValidationError(
            FieldProblem(
                "--workload/--study",
                given,
                "exactly one is needed",
                "pass --workload NAME [--config JSON] to profile a config, or --study NAME [--trial N] "
                "to profile a study's trial",
            )
        )
    if args.study is not None:
        for option, value in (("--config", args.config), ("--params", args.params)):
            if value is not None:
                raise ValidationError(
                    FieldProblem(
                        option,
                        value,
                        "does not apply with --study (the trial's stored config is used)",
                        f"drop {option}, or use --workload instead of --study",
                    )
                )
    else:
        for option, value in (("--storage", args.storage), ("--trial", args.trial)):
            if value is not None:
                raise ValidationError(
                    FieldProblem(
                        option, value, "applies only with --study", f"add --study NAME or drop {option}"
                    )
                )


def _print_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from tuner.trial.profiler import format_profile

    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_profile(report))
        if args.output:
            print(f"saved to {args.output}", file=sys.stderr)


def _profile_options(args: argparse.Namespace) -> dict[str, object]:
    """The profiler settings both forms of `tuner profile` share."""
    return {
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "device": args.device,
        "seed": args.seed,
        "top_k": args.top,
    }


def _run_study_trial(args: argparse.Namespace) -> int:
    from tuner.storage.rdb import resolve_storage_url
    from tuner.study.profiling import profile_attr_key, profile_trial

    number, report = profile_trial(args.storage, args.study, args.trial, **_profile_options(args))
    _print_report(args, report)
    # stderr, so `--json` output stays one parseable document
    print(
        f"stored the profile of trial #{number} of study {args.study!r} as study attr "
        f"{profile_attr_key(number)!r} in {resolve_storage_url(args.storage)}",
        file=sys.stderr,
    )
    return 0 if report["status"] == "ok" else 1


def run(args: argparse.Namespace) -> int:
    _check_target(args)
    if args.study is not None:
        return _run_study_trial(args)

    from tuner.types import TrialConfig
    from tuner.workloads import TrainableWorkload, get_workload

    config_values = _json_object("--config", args.config or "{}")
    params_values = _json_object("--params", args.params or "{}")
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

    from tuner.trial.profiler import profile_config

    report = profile_config(workload, config, params, **_profile_options(args))
    _print_report(args, report)
    return 0 if report["status"] == "ok" else 1

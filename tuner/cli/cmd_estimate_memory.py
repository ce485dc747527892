"""`tuner estimate-memory`: predict the peak memory of one config before running it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.replay.table import MEASUREMENT_FIELDS

#: Keys of a measured table row that are not knobs (its measurement fields); accepted in
#: --config and ignored, so a row can be pasted as it is.
IGNORED_ROW_KEYS = MEASUREMENT_FIELDS


def json_object(option: str, text: str | None) -> dict[str, Any] | None:
    """A JSON object given inline or as `@FILE`; a clear error naming the option otherwise."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text()
        except OSError as exc:
            raise ValidationError(FieldProblem(option, text, f"cannot be read ({exc.strerror})", "give an existing file after @")) from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            FieldProblem(option, text, f"is not JSON ({exc.msg})", f"""quote it for the shell: {option} '{{"key": 1}}'""")
        ) from None
    if not isinstance(value, dict):
        raise ValidationError(FieldProblem(option, value, "must be a JSON object", f"""write {option} '{{"key": 1}}'"""))
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "estimate-memory",
        help="predict a config's peak memory (and whether it fits) before running it",
        description=(
            "Predict the peak allocated memory of one training step of a config: model states by "
            "sharding stage, activations, logits, autocast caches, workspaces. With --hardware, also "
            "whether it fits. --shape takes a measured table's meta object as it is; --config takes "
            "knob values (a table row's measurement fields are ignored)."
        ),
    )
    parser.add_argument("--workload", required=True, help="gpt (language models) or recsys (DLRM-style)")
    parser.add_argument("--shape", required=True, metavar="JSON", help="workload shape, e.g. a table's meta (or @file)")
    parser.add_argument("--config", default="{}", metavar="JSON", help="knob values, e.g. a table row (or @file)")
    parser.add_argument("--hardware", metavar="FILE", help="hardware profile (tuner probe --json) or raw NVML readings")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def parse_config(values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(TrialConfig, ignored measurement keys) from --config; unknown keys are an error."""
    from tuner.types import TrialConfig

    ignored = {k: v for k, v in values.items() if k in IGNORED_ROW_KEYS}
    knobs = {k: v for k, v in values.items() if k not in IGNORED_ROW_KEYS}
    return TrialConfig.from_dict(knobs, source="--config"), ignored


def run(args: argparse.Namespace) -> int:
    from tuner.generator.memory_model import GIB, estimate_peak
    from tuner.hardware.profile import load_profile

    shape = json_object("--shape", args.shape) or {}
    raw_config = json_object("--config", args.config) or {}
    config, ignored = parse_config(raw_config)
    if "max_sequence_length" in raw_config:
        shape = {**shape, "seq": config.max_sequence_length}  # the config's sequence length wins
    hardware = load_profile(args.hardware) if args.hardware else None
    if not args.workload:
        raise ValidationError(FieldProblem("--workload", args.workload, "is empty", "use gpt or recsys"))
    estimate = estimate_peak(shape, config, workload=args.workload, hardware=hardware)
    if args.json:
        data = estimate.to_dict()
        data["workload"] = args.workload
        data["config"] = {k: v for k, v in raw_config.items() if k not in ignored}
        print(json.dumps(data, indent=2))
        return 0
    print(f"peak memory: {estimate.peak_bytes / GIB:.2f} GiB ({estimate.peak_bytes} bytes), set by {estimate.phase}")
    for name, value in sorted(estimate.parts.items(), key=lambda kv: -kv[1]):
        if value:
            print(f"  {name:<24} {value / GIB:9.2f} GiB")
    if estimate.fits is not None:
        verdict = "fits" if estimate.fits else "does NOT fit"
        print(f"{verdict}: {estimate.limit_bytes / GIB:.1f} GiB usable on {args.hardware}")
    print("assumptions:")
    for line in estimate.assumptions:
        print(f"  - {line}")
    return 0

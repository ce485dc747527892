"""`tuner recommend`: the config generator's starting configs, with its reasoning."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tuner.cli.cmd_estimate_memory import json_object


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "recommend",
        help="recommend starting configs for a workload on this hardware, with the reasoning",
        description=(
            "Run the config generator: narrow a search space for the hardware (precisions it runs "
            "fast, micro batches predicted to fit, no sharding on one process) and print 1-3 "
            "starting configs with why."
        ),
    )
    parser.add_argument("--workload", required=True, help="a workload name (see `tuner workloads`)")
    parser.add_argument("--hardware", required=True, metavar="FILE", help="hardware profile or raw NVML readings")
    parser.add_argument("--shape", metavar="JSON", help="workload shape (e.g. a table's meta); default: the workload's own")
    parser.add_argument("--params", metavar="JSON", help="workload parameters (e.g. layers, d_model)")
    parser.add_argument(
        "--space",
        metavar="PRESET_OR_FILE",
        help="search space (preset name or .yaml/.json); default: micro batch, precision, checkpointing",
    )
    parser.add_argument("--safety-margin", type=float, default=0.9, help="share of usable memory a config may use")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def default_space(micro_batches: list[int]) -> Any:
    from tuner.space.search_space import SearchSpace

    return SearchSpace.from_dict(
        {
            "name": "recommend-default",
            "params": {
                "micro_batch_size": {"type": "categorical", "choices": micro_batches},
                "precision": {"type": "categorical", "choices": ["fp32", "tf32", "fp16", "bf16"]},
                "activation_checkpointing": {"type": "bool"},
            },
        }
    )


def run(args: argparse.Namespace) -> int:
    from tuner.generator.memory_model import GIB
    from tuner.generator.planner import plan
    from tuner.hardware.profile import load_profile
    from tuner.space.search_space import load_space
    from tuner.workloads import get_workload

    hardware = load_profile(args.hardware)
    workload = get_workload(args.workload)
    params = workload.resolve_params(json_object("--params", args.params) or {})
    given_shape = json_object("--shape", args.shape)
    shape = given_shape or workload.shape(params)
    base = workload.default_config(params)
    if given_shape and isinstance(given_shape.get("seq"), int):
        base = base.replace(max_sequence_length=given_shape["seq"])  # the shape's sequence is the one to plan for
    if args.space:
        space = load_space(args.space)
    elif args.workload == "replay":
        from tuner.workloads.replay import replay_space

        space = replay_space(workload.table(params))
    else:
        big = "tables" in shape  # recommenders train on batches of thousands of samples
        space = default_space([2**i for i in (range(9, 18) if big else range(0, 11))])
    generated = plan(hardware, shape, space, workload=args.workload, base_config=base, safety_margin=args.safety_margin)
    starting = []
    for values, why in zip(generated.starting_configs, generated.starting_reasons(), strict=True):
        estimate = generated.constraint(values)
        starting.append({"config": values, "why": why, "predicted_peak_bytes": estimate.peak_bytes})
    if args.json:
        print(
            json.dumps(
                {
                    "workload": args.workload,
                    "starting_configs": starting,
                    "reasoning": generated.reasoning,
                    "space": generated.space.to_dict(),
                    "limit_bytes": generated.limit_bytes,
                    "backend": generated.backend,
                },
                indent=2,
            )
        )
        return 0
    print("reasoning:")
    for line in generated.reasoning:
        print(f"  - {line}")
    print("starting configs (run in this order):")
    if not starting:
        print("  (none is predicted to fit)")
    for i, item in enumerate(starting, 1):
        print(f"  {i}. {item['config']}  ~{item['predicted_peak_bytes'] / GIB:.1f} GiB")
        print(f"     {item['why']}")
    return 0

"""`tuner workloads`: the workload registry and each workload's parameters."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "workloads",
        help="list the workloads you can tune and their parameters",
        description="List built-in, registered and entry-point workloads with their parameters.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def describe_all() -> list[dict[str, Any]]:
    from tuner.errors import TunerError
    from tuner.workloads import get_workload, list_workload_names

    described = []
    for name in list_workload_names():
        try:
            described.append(get_workload(name).describe())
        except (ImportError, TunerError) as exc:  # e.g. a built-in still being written
            described.append(
                {"name": name, "description": f"(unavailable: {exc})", "item_unit": "?", "params": []}
            )
    return described


def run(args: argparse.Namespace) -> int:
    workloads = describe_all()
    if args.json:
        print(json.dumps(workloads, indent=2))
        return 0
    for w in workloads:
        print(f"{w['name']}: {w['description']} (throughput in {w['item_unit']}/s)")
        for p in w["params"]:
            bounds = ""
            if p.get("choices"):
                bounds = " one of " + ", ".join(map(str, p["choices"]))
            elif p.get("low") is not None or p.get("high") is not None:
                low = "" if p.get("low") is None else f"{p['low']:g}"
                high = "" if p.get("high") is None else f"{p['high']:g}"
                bounds = f" in [{low}, {high}]"
            tunable = ""
            if p.get("tunable"):  # a space may search it under hparams (docs/workloads.md)
                tunable = " [tunable under hparams" + (", changes the model's shape]" if p.get("changes_shape") else "]")
            print(f"  {p['name']} ({p['kind']}, default {p['default']!r}{bounds}){tunable}: {p['help']}")
    return 0

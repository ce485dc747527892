"""`tuner tune` of a `kind: inference` space: run the inference study, print the QPS ratio
to the default config at the SLO, and write the best serving config."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable
from typing import Any


def run_inference_tune(
    args: argparse.Namespace, spec: Any, install_stop_handler: Callable[[threading.Event], Any]
) -> int:
    """`install_stop_handler` is cmd_tune's (Ctrl-C once: finish the running trial), passed
    in so this module does not import cmd_tune back."""
    from tuner.export import format_for_path
    from tuner.study.inference_study import run_inference_study

    format_for_path(args.output)
    stop_event = threading.Event()
    previous = install_stop_handler(stop_event)
    try:
        outcome = run_inference_study(
            spec,
            storage=args.storage,
            progress=True,
            stop_event=stop_event,
            generator=not getattr(args, "no_generator", False),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    data = outcome.to_dict()
    if outcome.best_config is not None:
        from tuner.inference.export import write_inference_config

        write_inference_config(args.output, outcome.best_config, spec.workload, outcome.best_result)
        data["output"] = args.output
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(summary_text(data))
    return 0 if outcome.best_config is not None else 1


def summary_text(data: dict[str, Any]) -> str:
    base = data["baseline_result"]
    lines = [
        f"inference study {data['study']}: SLO p99 <= {data['slo_p99_ms']:g} ms, counts {data['counts']}"
    ]
    lines.append(
        f"default config: {base['qps']:,.0f} QPS at p99 {base['p99_ms'] or float('nan'):.1f} ms ({base['status']})"
    )
    best = data["best_result"]
    if best is None:
        lines.append("no config met the SLO accurately; nothing written")
        return "\n".join(lines)
    lines.append(f"best config (trial #{data['best_trial']}): {data['best_config']}")
    lines.append(f"  {best['qps']:,.0f} QPS at p99 {best['p99_ms']:.1f} ms; accuracy {best['accuracy']}")
    measured = (data.get("confirmed") or {}).get(str(data["best_trial"]))
    if measured:
        lines.append(
            f"  measured {len(measured)} times: "
            + ", ".join(f"{q:,.0f}" for q in measured)
            + " QPS (the median counts)"
        )
    if data["ratio"] is not None:
        lines.append(f"QPS at the SLO: x{data['ratio']:.2f} the default config's")
    if data["p99_reduction_at_baseline_qps"] is not None:
        lines.append(
            f"p99 at the default's QPS: {data['best_p99_at_baseline_qps_ms']:.1f} ms "
            f"({data['p99_reduction_at_baseline_qps']:.0%} lower than the default's {base['p99_ms']:.1f} ms)"
        )
    low = data.get("lowest_p99_at_baseline_qps")
    if low and low["p99_ms"] is not None and low["trial"] != data["best_trial"]:
        cut = f" ({low['reduction']:.0%} lower than the default's)" if low["reduction"] is not None else ""
        lines.append(
            f"lowest p99 at the default's QPS: trial #{low['trial']} {low['config']}: "
            f"{low['p99_ms']:.1f} ms{cut}; {low['qps']:,.0f} QPS at the SLO"
        )
    for note in data["notes"]:
        lines.append(f"note: {note}")
    if data.get("output"):
        lines.append(f"wrote {data['output']}")
    return "\n".join(lines)

"""`tuner export` of an inference study: the best serving config as JSON/YAML, or a torch
snippet that builds the served model (fused, quantized, compiled) with its batcher settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export_inference(args: argparse.Namespace) -> bool:
    """Write the export and return True when `args.study` is an inference study."""
    from tuner.inference.export import render_inference
    from tuner.study.inference_study import stored_inference_best

    found = stored_inference_best(args.storage, args.study)
    if found is None:
        return False
    workload, config, result = found
    meta = {
        "study": args.study,
        "workload": workload,
        "measured": f"{result.qps:,.0f} QPS at p99 {result.p99_ms:.1f} ms (SLO {result.slo_p99_ms:g} ms)",
    }
    text = render_inference(config, args.format, meta)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return True


def inference_best_document(storage: str | None, study: str) -> dict | None:
    """`tuner best` of an inference study: its best serving config and what it measured;
    None when `study` is not an inference study."""
    from tuner.study.inference_study import stored_inference_best

    found = stored_inference_best(storage, study)
    if found is None:
        return None
    workload, config, result = found
    return {
        "study": study,
        "kind": "inference",
        "workload": workload,
        "config": config.to_dict(),
        "result": {k: v for k, v in result.to_dict().items() if k != "ramp"},
    }

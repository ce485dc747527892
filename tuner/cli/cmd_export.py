"""`tuner export STUDY --format json|yaml|torch`: the best config as a file or a script."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tuner.export import FORMATS


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a study's best config (json, yaml, or a runnable torch snippet)",
        description=(
            "Write the best config of STUDY as a config file (json/yaml, readable by "
            "TrialConfig.from_dict) or as a short runnable PyTorch script applying it (torch)."
        ),
    )
    parser.add_argument("study", metavar="STUDY")
    parser.add_argument("--format", choices=FORMATS, default="yaml")
    parser.add_argument("--storage", metavar="URL", help="database URL (default: sqlite:///tuner.db here)")
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tuner.export import render
    from tuner.study_results import load_best

    config, result = load_best(args.storage, args.study)
    speed = f"{result.items_per_s:,.0f} {result.item_unit}/s" if result.items_per_s else None
    meta = {"study": args.study, "measured": speed, "val_loss": result.val_loss}
    text = render(config, args.format, meta)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0

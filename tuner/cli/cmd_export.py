"""`tuner export STUDY --format json|yaml|torch`: the recommended config as a file or a script:
the best trial's, or the default config when it beat the best back to back (as `tune --output`)."""

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
    from tuner.cli.cmd_best import best_document
    from tuner.cli.export_inference import export_inference
    from tuner.export import ExportPoint, render_points
    from tuner.study.confirm import Confirmation
    from tuner.types import TrialConfig

    if export_inference(args):  # a kind: inference study: its serving config
        return 0
    document = best_document(args.storage, args.study)
    config = TrialConfig.from_dict(document["recommended_config"])
    unit = document["result"]["item_unit"]
    # The same rendering as REST /best, the client and the dashboard (tuner.export).
    point = ExportPoint(config, document["hparams"], document["trial"], document["objective_values"])
    note: dict[str, Any] = {}
    if document["recommendation"] == "default":
        # As `tune --output`: no trial beat the default config back to back.
        measured = (document["baseline"] or {}).get("items_per_s")
        point = ExportPoint(config, document["hparams"])
        note = {
            "config": Confirmation.KEEP_DEFAULT_NOTE,
            "measured": f"{measured:,.0f} {unit}/s" if measured else None,
            "best trial": f"#{document['trial']}, gain over the default config: {document['gain']}",
        }
    text = render_points([point], args.format, study=args.study, note=note)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0

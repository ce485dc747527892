"""`tuner best STUDY`: the best config of a study and what it measured."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "best",
        help="print a study's best config and its measurements (JSON or YAML)",
        description="Print the best feasible trial of STUDY: its config, its result and the ratio to the baseline.",
    )
    parser.add_argument("study", metavar="STUDY")
    parser.add_argument("--storage", metavar="URL", help="database URL (default: sqlite:///tuner.db here)")
    parser.add_argument("--format", choices=("json", "yaml"), default="yaml")
    parser.set_defaults(handler=run)


def best_document(storage: str | None, name: str) -> dict[str, Any]:
    from tuner.study.objectives import objective_name
    from tuner.study.results import (
        baseline_of,
        best_record,
        improvement_ratio,
        load_optuna_study,
        records_of,
        study_spec,
    )

    study = load_optuna_study(storage, name)
    spec = study_spec(study)
    objectives = spec.objectives if spec is not None else ("throughput",)
    best = best_record(records_of(study), objectives)
    if best is None or best.config is None or best.result is None:
        from tuner.study.results import load_best

        load_best(storage, name)  # raises the explanatory error
        raise AssertionError("unreachable")
    from tuner.study.confirm import load_confirmation
    from tuner.study.outcome import result_gain

    baseline_config, baseline = baseline_of(study)
    result = best.result
    search_ratio = improvement_ratio(result, baseline, objectives[0])
    # The back-to-back re-measurement (`tune --confirm`) is what `tune` reports: one noisy
    # search-time baseline can be off by several times on a shared machine.
    confirmation = load_confirmation(study, best.number) if objectives == ("throughput",) else None
    # As `tune --output`: when the default config won back to back, it is the recommendation.
    default_wins = confirmation is not None and confirmation.default_wins and baseline_config is not None
    # The same figure and wording as `tuner tune` and the dashboard (tuner.study.gain).
    gain = result_gain(objectives[0], confirmation, result, baseline)
    return {
        "study": name,
        "trial": best.number,
        "objectives": list(objectives),
        "recommendation": "default" if default_wins else "best_trial",
        "gain": gain.text,
        "gain_report": gain.to_dict(),
        "ratio_to_default": confirmation.ratio_median if confirmation else search_ratio,
        "ratio_source": "confirmation" if confirmation else "search",
        "search_ratio_to_default": search_ratio,
        "confirmation": None
        if confirmation is None
        else {
            "pairs": len(confirmation.pairs),
            "ratio_median": confirmation.ratio_median,
            "ratio_min": confirmation.ratio_min,
            "ratio_max": confirmation.ratio_max,
        },
        "config": best.config.to_dict(),
        # The user's own hyperparameters (the space's hparams:, fixed ones included), types
        # kept, and each objective's value by name (val_acc: 0.93).
        "hparams": spec.space.hparams_of(best.params) if spec is not None else best.hparams,
        "objective_values": dict(zip([objective_name(o) for o in objectives], best.values, strict=False))
        if best.values is not None
        else None,
        # What to use (`tune --output` wrote it): the default config when it won back to back.
        "recommended_config": (baseline_config if default_wins else best.config).to_dict(),
        "result": {
            "items_per_s": result.items_per_s,
            "item_unit": result.item_unit,
            "step_time_s": result.step_time_s,
            "peak_memory_bytes": result.peak_memory_bytes,
            "val_loss": result.val_loss,
            "mfu": result.mfu,
            "timed_steps": result.timed_steps,
        },
        "baseline": None
        if baseline is None
        else {
            "status": baseline.status.value,
            "items_per_s": baseline.items_per_s,
            "val_loss": baseline.val_loss,
        },
    }


def run(args: argparse.Namespace) -> int:
    from tuner.cli.export_inference import inference_best_document

    document = inference_best_document(args.storage, args.study) or best_document(args.storage, args.study)
    if args.format == "json":
        print(json.dumps(document, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(document, sort_keys=False), end="")
    return 0

"""Memory-model accuracy on measured tables.

    python benchmarks/memory_accuracy.py [--hardware PROBE] [TABLE ...]

Prints, per table: the analytic model's median and max absolute error on ok rows'
`peak_alloc_bytes`; the calibrated error after measuring the two smallest micro batches of
each (precision, checkpointing) group (evaluated on the group's other ok rows); and how
often `fits` agrees with ok/oom, analytic and calibrated. Results: docs/benchmarks-replay.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tuner.generator.calibration import MemoryModel
from tuner.generator.memory_model import estimate_peak
from tuner.hardware.profile import load_profile
from tuner.replay.table import ReplayTable, load_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "h200"
DEFAULT_TABLES = [DATA / "gpt_124m.jsonl", DATA / "dlrm_8x1m.jsonl"]


def _workload(table: ReplayTable) -> str:
    return "gpt" if table.model_family == "lm" else "recsys"


def accuracy(table: ReplayTable, hardware) -> dict[str, float]:
    workload = _workload(table)
    analytic_errors = []
    analytic_right = []
    for row in table.rows:
        if row.status not in ("ok", "oom"):
            continue
        estimate = estimate_peak(table.meta, row.knobs, workload=workload, hardware=hardware)
        analytic_right.append(estimate.fits == row.ok)
        if row.ok:
            analytic_errors.append(abs(estimate.peak_bytes - row.peak_alloc_bytes) / row.peak_alloc_bytes)
    calibrated_errors = []
    calibrated_right = []
    groups: dict[tuple, list] = {}
    for row in table.rows:
        key = (row.knobs.get("precision"), row.knobs.get("activation_checkpointing", False))
        groups.setdefault(key, []).append(row)
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: r.knobs["micro_batch_size"])
        measured = [r for r in rows if r.ok][:2]  # the two cheapest configs
        model = MemoryModel(table.meta, workload=workload, hardware=hardware)
        for row in measured:
            model.observe(row.knobs, row.peak_alloc_bytes, "ok")
        for row in rows:
            if row in measured or row.status not in ("ok", "oom"):
                continue
            estimate = model.estimate(row.knobs)
            calibrated_right.append(estimate.fits == row.ok)
            if row.ok:
                calibrated_errors.append(abs(estimate.peak_bytes - row.peak_alloc_bytes) / row.peak_alloc_bytes)
    return {
        "ok_rows": len(analytic_errors),
        "analytic_median_error": statistics.median(analytic_errors),
        "analytic_max_error": max(analytic_errors),
        "calibrated_median_error": statistics.median(calibrated_errors) if calibrated_errors else float("nan"),
        "calibrated_max_error": max(calibrated_errors) if calibrated_errors else float("nan"),
        "calibrated_rows": len(calibrated_errors),
        "analytic_fits_accuracy": sum(analytic_right) / len(analytic_right),
        "calibrated_fits_accuracy": sum(calibrated_right) / len(calibrated_right) if calibrated_right else float("nan"),
        "configs_classified": len(analytic_right),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="*", type=Path, default=DEFAULT_TABLES)
    parser.add_argument("--hardware", type=Path, default=DATA / "probe.json")
    args = parser.parse_args(argv)
    hardware = load_profile(args.hardware)
    print(
        f"{'table':<12} {'ok rows':>7} {'analytic median|max':>20} {'calibrated median|max (rows)':>29} "
        f"{'fits right analytic|calibrated (configs)':>41}"
    )
    for path in args.tables:
        table = load_table(path)
        a = accuracy(table, hardware)
        print(
            f"{table.workload:<12} {a['ok_rows']:>7} "
            f"{a['analytic_median_error']:>10.1%} | {a['analytic_max_error']:<6.1%} "
            f"{a['calibrated_median_error']:>12.1%} | {a['calibrated_max_error']:.1%} ({a['calibrated_rows']:>2})    "
            f"{a['analytic_fits_accuracy']:>14.0%} | {a['calibrated_fits_accuracy']:.0%} ({a['configs_classified']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

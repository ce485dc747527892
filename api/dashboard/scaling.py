"""The study page's scaling table: `tuner scaling`'s stored report (study attr
`tuner.scaling`, `tuner.study.scaling.ScalingReport.to_dict`) as display rows.

The attr is plain JSON anyone with the database could have written, so every field is
checked and a malformed report shows as absent rather than failing the study page.
"""

from __future__ import annotations

import math
from typing import Any


def scaling_summary(report: Any) -> dict[str, Any] | None:
    """{trial_number, item_unit, rows: [{world_size, status, items_per_s, speedup,
    efficiency, nodes, reason}]} sorted by world size, or None without a usable report."""
    if not isinstance(report, dict) or not isinstance(report.get("points"), list):
        return None
    rows = [row for point in report["points"] if (row := _row(point)) is not None]
    if not rows:
        return None
    trial = report.get("trial_number")
    return {
        "trial_number": trial if isinstance(trial, int) and not isinstance(trial, bool) else None,
        "item_unit": str(report.get("item_unit") or "items"),
        "rows": sorted(rows, key=lambda r: r["world_size"]),
    }


def _row(point: Any) -> dict[str, Any] | None:
    if not isinstance(point, dict):
        return None
    size = point.get("world_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return None
    nodes = point.get("nodes")
    reason = point.get("reason")
    return {
        "world_size": size,
        "status": str(point.get("status") or "unknown"),
        "items_per_s": _number(point.get("items_per_s")),
        "speedup": _number(point.get("speedup")),
        "efficiency": _number(point.get("efficiency")),
        "nodes": [str(n) for n in nodes] if isinstance(nodes, list) else [],
        "reason": str(reason)[:500] if reason else None,
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)

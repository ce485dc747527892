"""Learning-curve tables: configs and their validation loss at fixed checkpoints.

The quality counterpart of the throughput tables (`tuner.replay.table`): with a table of
learning curves, strategies for `time_to_target` are compared in seconds, without
training (`tuner.replay.curve_strategies`, `tuner replay TABLE`).

Format (JSONL): line 1 is `{"meta": {"kind": "curves", ...}}` with optional
`workload`, `item_unit` and `target_val_loss`; every other line is one config: its knob
values, `status` (ok | failed) and, for ok rows, `curve`: a list of
`[items, seconds, val_loss]` checkpoints (items trained, cumulative training seconds,
validation loss there), items and seconds increasing. One row may carry
`"default": true`: the workload's default config, whose final loss is the target when
the meta gives none. `benchmarks/time_to_quality.py --write-curves FILE` writes such a
table from real trials.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.knobs import KNOBS, closest_knob
from tuner.replay.table import config_key, line_problem
from tuner.types import TrialConfig

__all__ = ["CURVES_KIND", "CurveRow", "CurveTable", "is_curve_table", "load_curve_table", "parse_curve_table"]

CURVES_KIND = "curves"
_ROW_FIELDS = ("status", "curve", "default", "reason")


class CurveTableError(ValidationError):
    """A learning-curve table cannot be read."""


@dataclass(frozen=True)
class CurveRow:
    line: int
    knobs: dict[str, Any]
    status: str  # ok | failed
    curve: tuple[tuple[float, float, float], ...] = ()
    default: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.curve)


@dataclass(frozen=True)
class CurveTable:
    path: str
    meta: dict[str, Any]
    rows: tuple[CurveRow, ...]
    knob_names: tuple[str, ...]
    _index: dict[tuple[Any, ...], CurveRow] = field(default_factory=dict, repr=False, compare=False)

    @property
    def item_unit(self) -> str:
        return str(self.meta.get("item_unit", "items"))

    @property
    def default_row(self) -> CurveRow | None:
        return next((r for r in self.rows if r.default), None)

    @property
    def target(self) -> float:
        """The validation loss to reach: the meta's, or the default row's final loss."""
        given = self.meta.get("target_val_loss")
        if given is not None:
            return float(given)
        default = self.default_row
        assert default is not None and default.ok  # parse_curve_table checked it
        return default.curve[-1][2]

    def knob_values(self, name: str) -> list[Any]:
        return sorted({row.knobs[name] for row in self.rows if name in row.knobs}, key=lambda v: (str(type(v)), v))

    key_of = staticmethod(config_key)

    def find(self, config: TrialConfig | Mapping[str, Any]) -> CurveRow | None:
        return self._index.get(self.key_of(config))


def is_curve_table(path: str | Path) -> bool:
    """Whether the file's first line declares a learning-curve table."""
    try:
        with Path(path).open() as handle:
            first = json.loads(handle.readline() or "{}")
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(first, dict) and isinstance(first.get("meta"), dict) and first["meta"].get("kind") == CURVES_KIND


def _curve(path: str, line: int, value: Any, problems: list[FieldProblem]) -> tuple[tuple[float, float, float], ...]:
    fix = "write curve as [[items, seconds, val_loss], ...] with items and seconds increasing"
    if not isinstance(value, list) or not value:
        problems.append(line_problem(path, line, "curve", value, "must be a non-empty list of checkpoints", fix))
        return ()
    points: list[tuple[float, float, float]] = []
    for point in value:
        if (
            not isinstance(point, list)
            or len(point) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)
        ):
            problems.append(line_problem(path, line, "curve", point, "is not a checkpoint [items, seconds, val_loss] of finite numbers", fix))
            return ()
        items, seconds, loss = (float(v) for v in point)
        if (points and (items <= points[-1][0] or seconds < points[-1][1])) or items <= 0 or seconds < 0:
            problems.append(line_problem(path, line, "curve", point, "does not increase from the checkpoint before it", fix))
            return ()
        points.append((items, seconds, loss))
    return tuple(points)


def parse_curve_table(text: str, path: str = "<curves>") -> CurveTable:
    """Validate the JSONL text of a learning-curve table; raise with every problem found."""
    problems: list[FieldProblem] = []
    lines = [(i + 1, raw) for i, raw in enumerate(text.splitlines()) if raw.strip()]
    records: list[tuple[int, Any]] = []
    for number, raw in lines:
        try:
            records.append((number, json.loads(raw)))
        except json.JSONDecodeError as exc:
            problems.append(line_problem(path, number, "line", raw[:60], f"is not JSON ({exc.msg})", "write one JSON object per line"))
    if problems:
        raise CurveTableError(problems)
    meta = records[0][1].get("meta") if records and isinstance(records[0][1], dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != CURVES_KIND:
        raise CurveTableError(
            line_problem(path, 1, "meta", meta, 'line 1 must be {"meta": {"kind": "curves", ...}}', "start the table with its meta line")
        )
    target = meta.get("target_val_loss")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target)):
        problems.append(line_problem(path, 1, "meta.target_val_loss", target, "must be a finite number", "give the loss to reach, or omit it"))
    rows: list[CurveRow] = []
    names: list[str] = []
    index: dict[tuple[Any, ...], CurveRow] = {}
    for number, record in records[1:]:
        if not isinstance(record, dict):
            problems.append(line_problem(path, number, "line", record, "is not a JSON object", "write {knob: value, status, curve}"))
            continue
        row_problems: list[FieldProblem] = []
        knobs = {}
        for key, value in record.items():
            if key in _ROW_FIELDS:
                continue
            if key not in KNOBS:
                guess = closest_knob(key)
                row_problems.append(
                    line_problem(path, number, key, value, "is neither a knob nor a row field",
                             f"did you mean {guess!r}?" if guess else "use a knob or one of: " + ", ".join(_ROW_FIELDS))
                )
                continue
            knobs[key] = value
            if key not in names:
                names.append(key)
        status = record.get("status")
        if status not in ("ok", "failed"):
            row_problems.append(line_problem(path, number, "status", status, "is not a curve row status", "use ok or failed"))
        curve = _curve(path, number, record.get("curve"), row_problems) if status == "ok" else ()
        try:
            key = CurveTable.key_of(knobs)
        except ValidationError as exc:
            row_problems += [line_problem(path, number, p.field, p.value, p.problem, p.fix) for p in exc.problems]
            key = None
        if key is not None and key in index:
            row_problems.append(line_problem(path, number, "config", knobs, f"repeats the config of line {index[key].line}", "keep one curve per config"))
        problems += row_problems
        if row_problems:
            continue
        row = CurveRow(number, knobs, status, curve, bool(record.get("default", False)))
        rows.append(row)
        index[key] = row  # type: ignore[index]
    if not problems:
        defaults = [r for r in rows if r.default]
        if len(defaults) > 1:
            problems.append(line_problem(path, defaults[1].line, "default", True, "marks a second default row", "mark one row default"))
        if target is None and not (defaults and defaults[0].ok):
            problems.append(
                line_problem(path, 1, "meta.target_val_loss", None, "is missing and no ok row is marked default",
                         'give meta.target_val_loss or mark the default config\'s row "default": true')
            )
        if not any(r.ok for r in rows):
            problems.append(line_problem(path, 1, "rows", len(rows), "no row has status ok and a curve", "add a measured curve"))
    if problems:
        raise CurveTableError(problems)
    return CurveTable(path, dict(meta), tuple(rows), tuple(names), index)


def load_curve_table(path: str | Path) -> CurveTable:
    p = Path(path)
    if not p.is_file():
        raise CurveTableError(FieldProblem("table", str(path), "is not a file", "pass the path of a .jsonl learning-curve table"))
    return parse_curve_table(p.read_text(), str(p))

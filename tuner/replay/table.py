"""Measured tables: one workload shape, many configs, what each one did on real hardware.

The format (JSONL) is the one of the shared H200 data (`shared/data/h200/README.md`):
line 1 is `{"meta": {...}}` with the workload's shape and name; every other line is one
measured config: its knob values, `status` (ok | oom | error | skipped_deadline) and, for
ok rows, `step_s`, `items_per_s`, …; for ok and oom rows `peak_alloc_bytes`.

`load_table` checks everything and reports every problem with its line, field, value and
fix. Knobs a table does not vary were measured at their `TrialConfig` default, so a
config matches a row only when it agrees on every knob.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.knobs import KNOBS, closest_knob
from tuner.types import TrialConfig

STATUSES: tuple[str, ...] = ("ok", "oom", "error", "skipped_deadline")
#: Measurement fields a row may carry, beside its knobs.
MEASUREMENT_FIELDS: tuple[str, ...] = (
    "status",
    "step_s",
    "items_per_s",
    "tflops",
    "warmup_s",
    "steps_timed",
    "peak_alloc_bytes",
    "peak_reserved_bytes",
    "error",
    "reason",
)
REQUIRED_OK = ("items_per_s", "step_s", "peak_alloc_bytes")
#: Warm-up steps the shared tables' harness ran before timing (README: "2 warm-up steps").
TABLE_WARMUP_STEPS = 2


class TableError(ValidationError):
    """A measured table cannot be read."""


def config_key(config: TrialConfig | Mapping[str, Any]) -> tuple[Any, ...]:
    """A config's identity in a measured table (every knob, defaults filled), so a row and a
    trial's config compare equal exactly when they train the same thing."""
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))
    return tuple(sorted(cfg.to_dict().items()))


@dataclass(frozen=True)
class TableRow:
    """One measured config of a table."""

    line: int
    knobs: dict[str, Any]  # the knobs the table varies, as measured
    status: str
    items_per_s: float | None = None
    step_s: float | None = None
    peak_alloc_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    tflops: float | None = None
    warmup_s: float | None = None
    steps_timed: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class ReplayTable:
    """A validated measured table."""

    path: str
    meta: dict[str, Any]
    rows: tuple[TableRow, ...]
    knob_names: tuple[str, ...]  # knobs varied by the table, in first-seen order
    _index: dict[tuple[Any, ...], TableRow] = field(default_factory=dict, repr=False, compare=False)

    @property
    def workload(self) -> str:
        return str(self.meta.get("workload", Path(self.path).stem))

    @property
    def item_unit(self) -> str:
        """What items_per_s counts: tokens for language models, samples otherwise."""
        return "tokens" if "seq" in self.meta or "vocab" in self.meta else "samples"

    @property
    def model_family(self) -> str:
        return "lm" if self.item_unit == "tokens" else "dlrm"

    @property
    def shape(self) -> dict[str, Any]:
        return dict(self.meta)

    def knob_values(self, name: str) -> list[Any]:
        """The distinct values the table has for knob `name`, sorted."""
        values = {row.knobs[name] for row in self.rows}
        return sorted(values, key=lambda v: (str(type(v)), v))

    def best_ok(self) -> TableRow:
        return max((r for r in self.rows if r.ok), key=lambda r: r.items_per_s or 0.0)

    def config_of(self, row: TableRow) -> TrialConfig:
        return TrialConfig.from_dict(row.knobs, source=f"{self.path}:{row.line}")

    key_of = staticmethod(config_key)

    def find(self, config: TrialConfig | Mapping[str, Any]) -> TableRow | None:
        """The row measured for exactly this config (every knob equal), or None."""
        return self._index.get(self.key_of(config))


def line_problem(path: str, line: int, field_name: str, value: Any, problem: str, fix: str) -> FieldProblem:
    """A problem of one line of a table file, its source `path:line`."""
    return FieldProblem(field_name, value, problem, fix, source=f"{path}:{line}")


def _check_number(
    path: str, line: int, row: Mapping[str, Any], name: str, problems: list[FieldProblem], *, positive: bool
) -> None:
    if name not in row or row[name] is None:
        return
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(line_problem(path, line, name, value, "must be a finite number", f"write {name} as a number"))
    elif positive and value <= 0:
        problems.append(line_problem(path, line, name, value, "must be > 0", f"re-measure or drop the row's {name}"))


def parse_table(text: str, path: str = "<table>") -> ReplayTable:
    """Validate the JSONL text of a table; raise TableError with every problem found."""
    problems: list[FieldProblem] = []
    lines = [(i + 1, raw) for i, raw in enumerate(text.splitlines()) if raw.strip()]
    if not lines:
        raise TableError(line_problem(path, 1, "meta", None, "the table is empty", 'start with a line {"meta": {...}}'))
    records: list[tuple[int, Any]] = []
    for number, raw in lines:
        try:
            records.append((number, json.loads(raw)))
        except json.JSONDecodeError as exc:
            problems.append(line_problem(path, number, "line", raw[:60], f"is not JSON ({exc.msg})", "write one JSON object per line"))
    if problems:
        raise TableError(problems)
    first_line, first = records[0]
    meta = first.get("meta") if isinstance(first, dict) else None
    if not isinstance(meta, dict) or len(first) != 1:
        raise TableError(
            line_problem(path, first_line, "meta", first, "line 1 must be exactly {\"meta\": {...}}", "put the workload's shape first")
        )
    lm = all(k in meta for k in ("layers", "d", "heads", "seq", "vocab"))
    dlrm = all(k in meta for k in ("tables", "rows", "dim"))
    if not (lm or dlrm):
        problems.append(
            line_problem(
                path,
                first_line,
                "meta",
                meta,
                "has neither a language model's shape (layers, d, heads, seq, vocab) nor a recommender's (tables, rows, dim)",
                "add the shape keys of the measured model",
            )
        )
    for key in ("layers", "d", "heads", "seq", "vocab", "tables", "rows", "dim", "params"):
        _check_number(path, first_line, meta, key, problems, positive=True)
    if "params" not in meta:
        problems.append(line_problem(path, first_line, "meta.params", None, "is missing", "add the model's parameter count"))

    rows: list[TableRow] = []
    knob_names: list[str] = []
    for number, record in records[1:]:
        if not isinstance(record, dict):
            problems.append(line_problem(path, number, "line", record, "is not a JSON object", "write {knob: value, status: ...}"))
            continue
        row_problems: list[FieldProblem] = []
        knobs: dict[str, Any] = {}
        for key, value in record.items():
            if key in MEASUREMENT_FIELDS:
                continue
            if key not in KNOBS:
                guess = closest_knob(key)
                fix = f"did you mean {guess!r}?" if guess else "use a knob name or one of: " + ", ".join(MEASUREMENT_FIELDS)
                row_problems.append(line_problem(path, number, key, value, "is neither a knob nor a measurement field", fix))
                continue
            why = KNOBS[key].check(value)
            if why:
                row_problems.append(line_problem(path, number, key, value, why, f"use {KNOBS[key].legal_range_text()}"))
                continue
            knobs[key] = value
            if key not in knob_names:
                knob_names.append(key)
        status = record.get("status")
        if status not in STATUSES:
            row_problems.append(line_problem(path, number, "status", status, "is not a table status", "use one of: " + ", ".join(STATUSES)))
        for name in ("step_s", "items_per_s", "tflops", "warmup_s", "peak_alloc_bytes", "peak_reserved_bytes", "steps_timed"):
            _check_number(path, number, record, name, row_problems, positive=name not in ("warmup_s", "tflops"))
        if status == "ok":
            for name in REQUIRED_OK:
                if record.get(name) is None:
                    row_problems.append(line_problem(path, number, name, None, "is missing on an ok row", f"add the measured {name}"))
        if status == "oom" and record.get("peak_alloc_bytes") is None:
            row_problems.append(
                line_problem(path, number, "peak_alloc_bytes", None, "is missing on an oom row", "add the peak reached before the failure")
            )
        if not knobs:
            row_problems.append(line_problem(path, number, "knobs", None, "the row names no knob", "add e.g. micro_batch_size"))
        problems += row_problems
        if row_problems:
            continue
        rows.append(
            TableRow(
                line=number,
                knobs=knobs,
                status=status,
                items_per_s=record.get("items_per_s"),
                step_s=record.get("step_s"),
                peak_alloc_bytes=record.get("peak_alloc_bytes"),
                peak_reserved_bytes=record.get("peak_reserved_bytes"),
                tflops=record.get("tflops"),
                warmup_s=record.get("warmup_s"),
                steps_timed=record.get("steps_timed"),
            )
        )
    if not problems and not any(r.ok for r in rows):
        problems.append(line_problem(path, first_line, "rows", len(rows), "no row has status ok", "add at least one measured config"))
    index: dict[tuple[Any, ...], TableRow] = {}
    table = ReplayTable(path=path, meta=dict(meta), rows=tuple(rows), knob_names=tuple(knob_names), _index=index)
    for row in rows:
        try:
            key = table.key_of(row.knobs)
        except ValidationError as exc:  # e.g. sharding_stage > 0 with world_size 1
            problems += [line_problem(path, row.line, p.field, p.value, p.problem, p.fix) for p in exc.problems]
            continue
        if key in index:
            problems.append(
                line_problem(path, row.line, "config", row.knobs, f"repeats the config of line {index[key].line}", "keep one measurement per config")
            )
        index[key] = row
    if problems:
        raise TableError(problems)
    return table


@lru_cache(maxsize=32)
def _load_cached(path: str, mtime_ns: int, size: int) -> ReplayTable:
    return parse_table(Path(path).read_text(), path)


def load_table(path: str | Path) -> ReplayTable:
    """Read and validate a table file (cached by path and modification time)."""
    p = Path(path)
    try:
        stat = p.stat()
    except FileNotFoundError:
        raise TableError(
            FieldProblem("table", str(path), "file not found", "pass the path of a .jsonl table (e.g. shared/data/h200/gpt_124m.jsonl)")
        ) from None
    if p.is_dir():
        raise TableError(FieldProblem("table", str(path), "is a directory", "pass the path of a .jsonl table file"))
    return _load_cached(str(p), stat.st_mtime_ns, stat.st_size)

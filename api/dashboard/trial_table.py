"""The trial table: sorted, filtered and paged on the server, columnar with numpy.

Every page must come back in well under 100 ms at 10,000 trials, including the first page
of a sort or filter nobody asked for yet. Sorting 10,000 `TrialView`s in Python (a key
function per trial, tuples, dict lookups) costs tens of milliseconds and, on a busy server,
hundreds. So each revision of a study gets one `TableIndex`: per column, built the first
time a request needs it, a few numpy arrays over the trials in number order; a sort order
is then a stable `argsort` of one array (microseconds), a filter is a boolean mask, and
only the page's 25 rows are turned back into dicts.

Semantics (the API's contract, kept from the first, pure-Python version):
- trials without the sort value go last in both orders, in trial-number order;
- ties keep trial-number order in both directions;
- a column mixing text and numbers (a categorical of ints and strings) sorts as text;
- a filter clause is NAME OP VALUE; numbers compare as numbers, anything else (text,
  booleans) only with = and != and case-insensitively; a trial without the value never
  matches.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.dashboard.store import StudyView, TrialView
from api.dashboard.views import GIB, finite_float, objective_value, to_gib
from tuner.errors import FieldProblem, ValidationError

#: statuses the table filter accepts (tuner's, plus the unfinished Optuna states)
STATUSES = ("ok", "oom", "failed", "pruned", "infeasible", "running", "waiting")
#: distinct status/filter combinations whose masks a TableIndex keeps (least recently used go)
MAX_CACHED_MASKS = 32


#: metric columns that are a finite number stored in the result (key -> (field, scale)): read
#: in bulk for a whole column, without the per-trial getter
_RESULT_METRICS = {
    "throughput": ("items_per_s", 1.0),
    "peak_memory_gib": ("peak_memory_bytes", 1.0 / GIB),
    "step_time_s": ("step_time_s", 1.0),
    "val_loss": ("val_loss", 1.0),
    "mfu": ("mfu", 1.0),
}

#: table columns: key -> (label, getter). Parameters are added per study as `param.<name>`.
METRIC_COLUMNS: dict[str, tuple[str, Callable[[TrialView], Any]]] = {
    "number": ("#", lambda t: t.number),
    "status": ("status", lambda t: t.status),
    "throughput": ("throughput", lambda t: t.throughput),
    "peak_memory_gib": ("peak memory (GiB)", lambda t: to_gib(t.peak_memory_bytes)),
    "step_time_s": ("step time (s)", lambda t: finite_float(t.result.get("step_time_s"))),
    "val_loss": ("val loss", lambda t: finite_float(t.result.get("val_loss"))),
    "mfu": ("MFU", lambda t: finite_float(t.result.get("mfu"))),
    "duration_s": ("duration (s)", lambda t: t.duration_s),
}


def columns(view: StudyView) -> list[dict[str, str]]:
    """The table's columns for this study: number, status, objective(s), metrics, knobs."""
    cols = [{"key": "number", "label": "#"}, {"key": "status", "label": "status"}]
    # An objective that is a known metric (throughput, val_loss) is keyed by that name.
    for i, objective in enumerate(view.objectives):
        key = objective if objective in METRIC_COLUMNS else (f"value{i}" if i else "value")
        cols.append({"key": key, "label": objective})
    trials = view.ordered()
    for key in ("throughput", "peak_memory_gib", "step_time_s", "duration_s"):
        get = METRIC_COLUMNS[key][1]
        # a column no trial has a value for is left out (an ask/tell study's jobs tell
        # their objectives, rarely throughput or memory); it appears with its first value
        if key not in view.objectives and any(get(t) is not None for t in trials):
            cols.append({"key": key, "label": METRIC_COLUMNS[key][0]})
    cols += [{"key": f"param.{name}", "label": name} for name in sorted(view.distributions)]
    return cols


def getter(view: StudyView, key: str, field: str = "sort") -> Callable[[TrialView], Any]:
    """How to read column `key` (a metric, `value`/`valueN`, `param.<knob>` or a bare knob
    name) from a trial; unknown keys are a 422 naming `field`."""
    if key in METRIC_COLUMNS:
        return METRIC_COLUMNS[key][1]
    if key == "value":
        return lambda t: objective_value(t, 0)
    if key.startswith("value") and key[5:].isdigit():
        index = int(key[5:])
        return lambda t: objective_value(t, index)
    name = key[6:] if key.startswith("param.") else key
    if name in view.distributions:
        return lambda t: t.params.get(name)
    known = [*METRIC_COLUMNS, "value", *[f"value{i}" for i in range(1, len(view.directions))], *(f"param.{n}" for n in sorted(view.distributions))]
    raise ValidationError(FieldProblem(field, key, "is not a column of this study's trials", "use one of: " + ", ".join(known)))


# -- one column as arrays ------------------------------------------------------------------
MISSING, BOOL, NUMBER, TEXT = 0, 1, 2, 3


@dataclass
class Column:
    """One column over the trials in number order.

    kind:   MISSING / BOOL / NUMBER / TEXT per trial (NaN counts as missing)
    number: the value as float64 for BOOL and NUMBER trials, NaN otherwise
    values: the Python values, for the text forms built only when a request needs them
    """

    kind: np.ndarray
    number: np.ndarray
    values: Sequence[Any]
    _lowered: np.ndarray | None = None

    @classmethod
    def of(cls, values: Sequence[Any]) -> Column:
        types = set(map(type, values))
        if types <= {int, float, type(None)} or types <= {bool, type(None)}:
            # The common case (metrics, numeric knobs, booleans): numpy converts in C, None -> NaN.
            number = np.array(values, dtype=np.float64)
            present_kind = BOOL if bool in types else NUMBER
            kind = np.where(np.isnan(number), MISSING, present_kind).astype(np.int8)
            return cls(kind=kind, number=number, values=values)
        if types <= {str, type(None)}:
            kind = np.array([v is not None for v in values], dtype=np.int8) * TEXT
            return cls(kind=kind, number=np.full(len(values), np.nan), values=values)
        kinds: list[int] = []
        numbers: list[float] = []
        for v in values:
            if isinstance(v, bool):
                kinds.append(BOOL)
                numbers.append(float(v))
            elif isinstance(v, (int, float)) and v == v:  # NaN counts as missing
                kinds.append(NUMBER)
                numbers.append(float(v))
            else:
                kinds.append(MISSING if v is None or isinstance(v, (int, float)) else TEXT)
                numbers.append(math.nan)
        return cls(kind=np.array(kinds, dtype=np.int8), number=np.array(numbers, dtype=np.float64), values=values)

    def lowered(self) -> np.ndarray:
        """str(value).lower() per present trial ("" where missing): what text = and != compare."""
        if self._lowered is None:
            self._lowered = np.array([str(v).lower() if k else "" for v, k in zip(self.values, self.kind.tolist(), strict=True)])
        return self._lowered

    def sort_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions of the trials that have the value, their sort keys: float64 or ranks)."""
        present = np.flatnonzero(self.kind != MISSING)
        kinds = self.kind[present]
        has_text = bool((kinds == TEXT).any())
        if not has_text:
            return present, self.number[present]
        # Text, or text mixed with numbers: compare str(value), ranked by Python's own string
        # order so that the ranks, being numbers, negate for the descending order.
        texts = [str(self.values[i]) for i in present.tolist()]
        rank = {text: r for r, text in enumerate(sorted(set(texts)))}
        return present, np.array([rank[text] for text in texts], dtype=np.float64)


class TableIndex:
    """The trial table of one study revision: columns, sort orders and filter masks,
    each computed the first time a request needs it."""

    def __init__(self, view: StudyView) -> None:
        self.view = view
        self.trials: list[TrialView] = view.ordered()
        self.columns = columns(view)
        self._columns: dict[str, Column] = {}
        self._orders: dict[tuple[str, bool], np.ndarray] = {}
        self._masks: OrderedDict[tuple[tuple[str, ...], str], np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()  # guards the LRU's reordering only; builds run unlocked

    def column(self, key: str, field: str = "sort") -> Column:
        column = self._columns.get(key)
        if column is None:
            get = getter(self.view, key, field)
            column = self._result_metric(key) if key in _RESULT_METRICS else None
            if column is None:
                column = Column.of([get(t) for t in self.trials])
            column = self._columns.setdefault(key, column)
        return column

    def _result_metric(self, key: str) -> Column | None:
        """A metric column straight from the stored results: what the getter gives (a finite
        number, else missing), in C for the common case; None when a value is not a number."""
        name, scale = _RESULT_METRICS[key]
        raw = [t.result.get(name) for t in self.trials]
        if not set(map(type, raw)) <= {int, float, type(None)}:
            return None
        number = np.array(raw, dtype=np.float64)
        finite = np.isfinite(number)
        number = np.where(finite, number * scale, np.nan)
        values = [float(x) if ok else None for x, ok in zip(number.tolist(), finite.tolist(), strict=True)]
        return Column(kind=np.where(finite, NUMBER, MISSING).astype(np.int8), number=number, values=values)

    def order(self, key: str, descending: bool) -> np.ndarray:
        """Positions (into `trials`) in table order: by value, ties and missing by number."""
        order = self._orders.get((key, descending))
        if order is None:
            column = self.column(key)
            present, keys = column.sort_keys()
            # Stable sort of positions that are already in number order keeps ties by number;
            # negating the key sorts descending without reversing the ties.
            ranked = present[np.argsort(-keys if descending else keys, kind="stable")]
            order = np.concatenate([ranked, np.flatnonzero(column.kind == MISSING)])
            self._orders[(key, descending)] = order
        return order

    def mask(self, statuses: tuple[str, ...], query: str) -> np.ndarray | None:
        """Which trials pass the status filter and every clause of `query` (None: all)."""
        key = (statuses, query)
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = self._build_mask(statuses, query)
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > MAX_CACHED_MASKS:
                self._masks.popitem(last=False)
        return mask

    def _build_mask(self, statuses: tuple[str, ...], query: str) -> np.ndarray | None:
        clauses = parse_filter(self.view, query)
        if not statuses and not clauses:
            return None
        mask = np.ones(len(self.trials), dtype=bool)
        if statuses:
            mask &= np.isin(np.array([t.status for t in self.trials]), list(statuses))
        for name, op, raw in clauses:
            mask &= _clause_mask(self.column(name, "q"), op, raw)
        return mask

    def page(self, *, offset: int, limit: int, sort: str, descending: bool, statuses: tuple[str, ...], query: str) -> dict[str, Any]:
        getter(self.view, sort)  # a bad sort key is a 422 even when no trial is there
        order = self.order(sort, descending)
        mask = self.mask(statuses, query)
        chosen = order if mask is None else order[mask[order]]
        getters = {c["key"]: getter(self.view, c["key"]) for c in self.columns}
        rows = [{key: get(self.trials[i]) for key, get in getters.items()} for i in chosen[offset : offset + limit].tolist()]
        return {
            "revision": self.view.revision,
            "columns": self.columns,
            "rows": rows,
            "total": int(chosen.size),
            "study_total": len(self.trials),
            "offset": offset,
            "limit": limit,
        }


# -- filters ---------------------------------------------------------------------------------
_FILTER_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|!=|==|=|<|>)\s*(.+?)\s*$")
_TRUTHY = ("true", "1", "yes", "on")


def parse_filter(view: StudyView, expression: str) -> list[tuple[str, str, str]]:
    """`precision=bf16, micro_batch_size>=64, throughput>3e5` -> [(column key, op, value)],
    all of which must hold. Unknown names and malformed clauses are a 422 on `q`."""
    clauses: list[tuple[str, str, str]] = []
    for clause in (c for c in re.split(r"[,;]| and ", expression) if c.strip()):
        match = _FILTER_RE.match(clause)
        if match is None:
            raise ValidationError(FieldProblem("q", clause.strip(), "is not a filter", "write NAME OP VALUE, e.g. precision=bf16, micro_batch_size>=64"))
        name, op, raw = match.groups()
        getter(view, name, "q")
        clauses.append((name, op, raw))
    return clauses


def _clause_mask(column: Column, op: str, raw: str) -> np.ndarray:
    text = raw.strip().strip("'\"")
    lowered = text.lower()
    try:
        number: float | None = float(text)
    except ValueError:
        number = None
    kind = column.kind
    out = np.zeros(kind.size, dtype=bool)
    # NUMBER trials compare as numbers when the value reads as one (and is not true/false).
    numeric = kind == NUMBER
    if number is not None and lowered not in ("true", "false"):
        with np.errstate(invalid="ignore"):
            compared = {
                "=": column.number == number, "==": column.number == number, "!=": column.number != number,
                "<": column.number < number, "<=": column.number <= number,
                ">": column.number > number, ">=": column.number >= number,
            }[op]
        out |= numeric & compared
        as_text = (kind == TEXT) | (kind == BOOL)
    else:
        as_text = kind != MISSING
    if op not in ("=", "==", "!=") or not as_text.any():
        return out  # text and booleans have no order
    # Booleans compare as true/false ("1", "yes", "on" mean true); text against the value as
    # written, or, when it reads as a number, as Python prints that number ("16" -> "16.0").
    booleans = kind == BOOL
    equal = booleans & (column.number == (1.0 if lowered in _TRUTHY else 0.0))
    texts = as_text & ~booleans
    if texts.any():
        text_wanted = lowered if number is None or lowered in ("true", "false") else str(number).lower()
        equal |= texts & (column.lowered() == text_wanted)
    out |= as_text & (equal if op != "!=" else ~equal)
    return out


def table_page(
    view: StudyView, *, offset: int, limit: int, sort: str, descending: bool, statuses: tuple[str, ...], query: str
) -> dict[str, Any]:
    """One page of the trial table (see the module docstring for the order and filters)."""
    for status in statuses:
        if status not in STATUSES:
            raise ValidationError(FieldProblem("status", status, "is not a trial status", "use one of: " + ", ".join(STATUSES)))
    index: TableIndex = view.memo("table", lambda: TableIndex(view))
    return index.page(offset=offset, limit=limit, sort=sort, descending=descending, statuses=statuses, query=query.strip())

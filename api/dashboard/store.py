"""A per-study, in-memory columnar view of Optuna's tables, refreshed incrementally.

The dashboard must stay fast at 10,000 trials. Optuna's `get_all_trials` rebuilds every
FrozenTrial with every attribute on each call (seconds at 10k), so the dashboard reads
Optuna's tables with plain SQL instead, keeps one `StudyView` per study and, on each
request, asks the database only for a cheap fingerprint. Finished trials never change in
Optuna (it refuses updates to them), so a refresh reloads only trials that are new or were
still running/waiting last time; a study that did not change costs one aggregate query.

The first read of a study is a handful of set-based queries (trials, trial_values,
trial_params, the result/kind/constraint user attrs), never per-trial work. On SQLite the
result attr is cut down to the listed fields by `json_extract` in the database, so Python
decodes a short array instead of the whole stored TrialResult (loss curve, telemetry, ...).
Each trial's config, intermediate values and full result are read only when a page needs
them (`configs`, `trial_detail`, `curves`).
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, text

from tuner.study.attrs import StudyAttr, TrialAttr, TrialKind
from tuner.study.results import spec_from_attr
from tuner.study.spec import StudySpec

#: the small per-trial attrs read with every trial (the result is read apart, cut down to _RESULT_FIELDS)
_SMALL_ATTR_KEYS = (TrialAttr.LEGACY_STATUS, TrialAttr.KIND, TrialAttr.CONSTRAINT)
_STUDY_ATTR_KEYS = (StudyAttr.SPEC, StudyAttr.BASELINE, StudyAttr.BASELINE_CONFIG, StudyAttr.HARDWARE, StudyAttr.CONFIRMATION,
    # an inference study's SLO/objectives and its default config's result (api.dashboard.inference)
    "tuner.inference.spec", "tuner.inference.baseline",
)
#: the fields of a TrialResult the dashboard shows in lists and charts (the rest is read per trial)
_RESULT_FIELDS = (
    "status", "items_per_s", "item_unit", "step_time_s", "peak_memory_bytes", "predicted_peak_bytes",
    "memory_kind", "mfu", "val_loss", "duration_s", "reason", "timed_steps",
)
_UNFINISHED = ("RUNNING", "WAITING")
#: seconds during which a just-checked study is served from memory without asking the database:
#: several browser tabs polling every 2 s then cost one fingerprint query, not one each
MIN_CHECK_INTERVAL_S = 0.3
#: above this many trials to (re)load, one query per table over the whole study beats IN lists
_BULK_THRESHOLD = 2000
_IN_CHUNK = 900  # SQLite's historic limit on bound variables is 999
#: SQLite: the result attr cut down to _RESULT_FIELDS as one JSON array (json_extract with
#: several paths), else (not an object: a legacy double-encoded string, or NaN/Infinity,
#: which Python writes and SQLite's JSON parser refuses) the raw text for Python to decode.
#: CASE evaluates lazily, so json_type never sees malformed JSON.
_SQLITE_RESULT_COLUMNS = (
    "CASE WHEN json_valid(x.value_json) THEN CASE WHEN json_type(x.value_json) = 'object' THEN json_extract(x.value_json, "
    + ", ".join(f"'$.{name}'" for name in _RESULT_FIELDS)
    + ") END END, "
    "CASE WHEN json_valid(x.value_json) THEN CASE WHEN json_type(x.value_json) = 'object' THEN NULL ELSE x.value_json END "
    "ELSE x.value_json END"
)


@contextmanager
def _collector_paused(pause: bool) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a whole study is read.

    The read allocates a few hundred thousand objects (rows, dicts, TrialViews), none of
    them in reference cycles; each allocation burst would trigger collections that walk
    the server's whole heap again and again — a quarter to a third of the read's time.
    Refcounting still frees everything; collection resumes (if it was on) right after.
    """
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _state_name(raw: Any) -> str:
    return str(raw).split(".")[-1]


def decode_json_attr(raw: str | None) -> Any:
    """A user attr as Optuna stores it (JSON); values written as JSON strings are decoded too."""
    if raw is None:
        return None
    value = json.loads(raw)
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(slots=True)
class TrialView:
    """One trial as the dashboard lists and plots it (its config is read on demand:
    `DashboardStore.configs`)."""

    trial_id: int
    number: int
    state: str  # Optuna: COMPLETE, FAIL, PRUNED, RUNNING, WAITING
    status: str  # tuner: ok, oom, failed, pruned, infeasible, running, waiting
    kind: str  # trial | abandoned | surplus
    values: tuple[float | None, ...] | None
    params: dict[str, Any]
    result: dict[str, Any]  # the _RESULT_FIELDS of the stored TrialResult (but status)
    feasible: bool
    datetime_start: datetime | None
    datetime_complete: datetime | None

    @property
    def finished(self) -> bool:
        return self.state not in _UNFINISHED

    @property
    def duration_s(self) -> float | None:
        if self.datetime_start and self.datetime_complete:
            return (self.datetime_complete - self.datetime_start).total_seconds()
        return None

    @property
    def counts_toward_target(self) -> bool:
        """Same rule as tuner.study.results.TrialRecord.counts_toward_target."""
        return self.state != "WAITING" and self.kind == TrialKind.TRIAL and self.status != "infeasible"

    @property
    def throughput(self) -> float | None:
        return _finite(self.result.get("items_per_s"))

    @property
    def peak_memory_bytes(self) -> float | None:
        return _finite(self.result.get("peak_memory_bytes"))


@dataclass
class StudyView:
    """Everything the dashboard needs about one study, refreshed in place.

    A refresh never mutates what a concurrent request may be reading: it swaps in a new
    `trials` dict, then a new `derived` memo, then bumps `revision`.
    """

    study_id: int
    name: str
    directions: list[str]
    attrs: dict[str, Any]
    trials: dict[int, TrialView] = field(default_factory=dict)  # by trial_id
    distributions: dict[str, str] = field(default_factory=dict)  # param name -> distribution_json
    fingerprint: tuple[Any, ...] = ()
    revision: int = 0  # bumped whenever anything the dashboard shows changed
    checked_at: float = 0.0
    derived: dict[Any, Any] = field(default_factory=dict)  # per-revision memo (charts, table index)
    #: configs of finished trials by trial_id, read on demand (a finished trial never changes)
    configs: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def spec(self) -> StudySpec | None:
        """The study's spec (None when tuner did not create it), parsed once per revision."""
        return self.memo("spec", lambda: spec_from_attr(self.attrs.get(StudyAttr.SPEC)))

    @property
    def objectives(self) -> list[str]:
        if self.spec is not None:
            return list(self.spec.objectives)
        return [f"objective {i}" for i in range(len(self.directions))] or ["value"]

    def ordered(self) -> list[TrialView]:
        """Trials by number (memoized per revision)."""
        return self.memo("ordered", lambda: sorted(self.trials.values(), key=lambda t: t.number))

    def memo(self, key: Any, build: Any) -> Any:
        """A value derived from this revision of the study, computed once.

        The memo dict is read once: a refresh during `build` swaps in a new one, and what
        was built lands in the old one, never in the new revision's."""
        derived = self.derived
        try:
            return derived[key]
        except KeyError:
            pass
        value = build()
        if len(derived) > 64:  # a bound, not a policy: the keys are a handful per revision
            derived.clear()
        derived[key] = value
        return value

    def _changed(self, trials: dict[int, TrialView]) -> None:
        self.trials = trials
        self.derived = {}
        self.revision += 1


class StudyNotInStorage(LookupError):
    """No Optuna study of that name in the database."""


class DashboardStore:
    """The StudyViews of one database, shared by all dashboard requests."""

    def __init__(self, engine: Engine, *, extract_in_sql: bool = True) -> None:
        self.engine = engine
        #: cut the result attr down in the database where it can (SQLite); False reads the
        #: whole attr and decodes it in Python, as on every other database
        self.extract_in_sql = extract_in_sql
        self._views: dict[str, StudyView] = {}
        self._lock = threading.Lock()

    def view(self, name: str) -> StudyView:
        """The study's view, brought up to date (cheaply when nothing changed)."""
        with self._lock:
            view = self._views.get(name)
        if view is None:
            view = self._open(name)
            with self._lock:
                view = self._views.setdefault(name, view)
        with view.lock:
            if time.monotonic() - view.checked_at >= MIN_CHECK_INTERVAL_S:
                self._refresh(view)
        return view

    def forget(self, name: str) -> None:
        with self._lock:
            self._views.pop(name, None)

    # -- opening ------------------------------------------------------------------------
    def _open(self, name: str) -> StudyView:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": name}).first()
            if row is None:
                raise StudyNotInStorage(name)
            study_id = int(row[0])
            directions = [
                _state_name(d)
                for (d,) in conn.execute(
                    text("SELECT direction FROM study_directions WHERE study_id = :s ORDER BY objective"), {"s": study_id}
                )
            ]
        return StudyView(study_id=study_id, name=name, directions=[d.lower() for d in directions], attrs={})

    def _study_attrs(self, conn: Any, study_id: int) -> dict[str, Any]:
        rows = conn.execute(
            text("SELECT key, value_json FROM study_user_attributes WHERE study_id = :s AND key IN :keys").bindparams(
                bindparam("keys", expanding=True)
            ),
            {"s": study_id, "keys": list(_STUDY_ATTR_KEYS)},
        )
        return {key: decode_json_attr(value) for key, value in rows}

    # -- refreshing ---------------------------------------------------------------------
    def _refresh(self, view: StudyView) -> None:
        with self.engine.connect() as conn:
            fingerprint = tuple(
                conn.execute(
                    text(
                        "SELECT COUNT(*), MAX(trial_id), MAX(datetime_complete), "
                        "SUM(CASE WHEN state IN ('RUNNING', 'WAITING') THEN 1 ELSE 0 END) "
                        "FROM trials WHERE study_id = :s"
                    ),
                    {"s": view.study_id},
                ).one()
            )
            n_attrs = conn.execute(
                text("SELECT COUNT(*) FROM study_user_attributes WHERE study_id = :s"), {"s": view.study_id}
            ).scalar_one()
            fingerprint = (*fingerprint, n_attrs)
            unfinished = [t.trial_id for t in view.trials.values() if not t.finished]
            view.checked_at = time.monotonic()
            # A finished trial never changes, so an equal fingerprint with nothing running
            # means nothing changed. Running trials may gain attrs without changing the
            # fingerprint (the loop writes the config after ask): those few are re-read.
            if fingerprint == view.fingerprint and not unfinished:
                return
            changed = False
            if fingerprint != view.fingerprint:
                attrs = self._study_attrs(conn, view.study_id)
                if attrs != view.attrs:
                    view.attrs = attrs
                    changed = True
            heads = conn.execute(
                text("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials WHERE study_id = :s"),
                {"s": view.study_id},
            ).all()
            trials = view.trials
            stale = [h for h in heads if (t := trials.get(h[0])) is None or not t.finished]
            if stale:
                with _collector_paused(len(stale) > _BULK_THRESHOLD):
                    loaded = [t for t in self._load(conn, view, stale) if trials.get(t.trial_id) != t]
                if loaded:
                    trials = dict(trials)  # copy-on-write: requests may be reading the old dict
                    for trial in loaded:
                        trials[trial.trial_id] = trial
                        view.configs.pop(trial.trial_id, None)  # a trial_id SQLite handed out again
                    changed = True
            if len(trials) != len(heads):  # trials deleted (study recreated under the same id)
                alive = {h[0] for h in heads}
                trials = {k: v for k, v in trials.items() if k in alive}
                changed = True
            view.fingerprint = fingerprint
            if changed:
                view._changed(trials)

    def _load(self, conn: Any, view: StudyView, heads: Sequence[Any]) -> list[TrialView]:
        ids = [int(h[0]) for h in heads]
        values: dict[int, dict[int, float | None]] = {}
        params: dict[int, dict[str, Any]] = {}
        attrs: dict[int, dict[str, Any]] = {}
        results: dict[int, dict[str, Any]] = {}
        for trial_id, objective, value, value_type in self._rows(
            conn, view.study_id, ids, "trial_values", "x.objective, x.value, x.value_type"
        ):
            values.setdefault(trial_id, {})[int(objective)] = _trial_value(value, value_type)
        for trial_id, name, internal, dist_json in self._rows(
            conn, view.study_id, ids, "trial_params", "x.param_name, x.param_value, x.distribution_json"
        ):
            params.setdefault(trial_id, {})[name] = _external(internal, dist_json)
            view.distributions.setdefault(name, dist_json)
        for trial_id, key, value_json in self._rows(
            conn, view.study_id, ids, "trial_user_attributes", "x.key, x.value_json", keys=_SMALL_ATTR_KEYS
        ):
            attrs.setdefault(trial_id, {})[key] = decode_json_attr(value_json)
        sqlite = conn.dialect.name == "sqlite" and self.extract_in_sql
        columns = _SQLITE_RESULT_COLUMNS if sqlite else "NULL, x.value_json"
        for trial_id, fields, raw in self._rows(
            conn, view.study_id, ids, "trial_user_attributes", columns, keys=(TrialAttr.RESULT,)
        ):
            if fields is not None:
                results[trial_id] = dict(zip(_RESULT_FIELDS, json.loads(fields), strict=True))
            elif isinstance(data := decode_json_attr(raw), dict):
                results[trial_id] = {k: data.get(k) for k in _RESULT_FIELDS}
        return [_trial_view(h, values.get(i), params.get(i, {}), attrs.get(i, {}), results.get(i)) for i, h in zip(ids, heads, strict=True)]

    def _rows(
        self, conn: Any, study_id: int, ids: list[int], table: str, columns: str, keys: Iterable[str] | None = None
    ) -> Iterable[Any]:
        key_filter = " AND x.key IN :keys" if keys is not None else ""
        extra: dict[str, Any] = {"keys": list(keys)} if keys is not None else {}
        if len(ids) > _BULK_THRESHOLD:
            sql = text(
                f"SELECT x.trial_id, {columns} FROM {table} x JOIN trials t ON t.trial_id = x.trial_id "
                f"WHERE t.study_id = :s{key_filter}"
            )
            if keys is not None:
                sql = sql.bindparams(bindparam("keys", expanding=True))
            wanted = set(ids)
            # .all() fetches in one DBAPI call; iterating the result would fetch row by row.
            for row in conn.execute(sql, {"s": study_id, **extra}).all():
                if row[0] in wanted:
                    yield row
            return
        sql = text(f"SELECT x.trial_id, {columns} FROM {table} x WHERE x.trial_id IN :ids{key_filter}")
        sql = sql.bindparams(bindparam("ids", expanding=True))
        if keys is not None:
            sql = sql.bindparams(bindparam("keys", expanding=True))
        for start in range(0, len(ids), _IN_CHUNK):
            yield from conn.execute(sql, {"ids": ids[start : start + _IN_CHUNK], **extra}).all()

    def configs(self, view: StudyView, trials: Iterable[TrialView]) -> dict[int, dict[str, Any] | None]:
        """The stored TrialConfig dict of each trial, by trial number (None where none was
        stored). Read on demand — only the best/Pareto trials and opened trials need one —
        and kept for finished trials, so a polled summary reads nothing once it has them."""
        wanted = list(trials)
        cached = view.configs
        missing = [t.trial_id for t in wanted if t.trial_id not in cached or not t.finished]
        fetched: dict[int, dict[str, Any] | None] = {}
        if missing:
            sql = text(
                "SELECT trial_id, value_json FROM trial_user_attributes WHERE trial_id IN :ids AND key = :k"
            ).bindparams(bindparam("ids", expanding=True))
            with self.engine.connect() as conn:
                for start in range(0, len(missing), _IN_CHUNK):
                    for trial_id, value_json in conn.execute(sql, {"ids": missing[start : start + _IN_CHUNK], "k": TrialAttr.CONFIG}):
                        config = decode_json_attr(value_json)
                        fetched[int(trial_id)] = config if isinstance(config, dict) else None
        out: dict[int, dict[str, Any] | None] = {}
        for t in wanted:
            if t.trial_id in fetched or t.trial_id not in cached:
                config = fetched.get(t.trial_id)
                if t.finished:
                    cached[t.trial_id] = config
            else:
                config = cached[t.trial_id]
            out[t.number] = config
        return out

    # -- per-trial reads (the trial page, learning curves) --------------------------------
    def trial_detail(self, view: StudyView, number: int) -> tuple[TrialView, dict[str, Any], dict[int, float], dict[str, Any]]:
        """The trial, its full stored result, its intermediate values and its system attrs
        (its config: `configs`)."""
        trial = next((t for t in view.trials.values() if t.number == number), None)
        if trial is None:
            raise KeyError(number)
        with self.engine.connect() as conn:
            result = conn.execute(
                text("SELECT value_json FROM trial_user_attributes WHERE trial_id = :t AND key = :k"),
                {"t": trial.trial_id, "k": TrialAttr.RESULT},
            ).scalar()
            steps = conn.execute(
                text("SELECT step, intermediate_value FROM trial_intermediate_values WHERE trial_id = :t ORDER BY step"),
                {"t": trial.trial_id},
            ).all()
            system = conn.execute(
                text("SELECT key, value_json FROM trial_system_attributes WHERE trial_id = :t"), {"t": trial.trial_id}
            ).all()
        full = decode_json_attr(result)
        return (
            trial,
            full if isinstance(full, dict) else {},
            {int(s): float(v) for s, v in steps if v is not None},
            {k: decode_json_attr(v) for k, v in system},
        )

    def trial_profile(self, view: StudyView, number: int) -> dict[str, Any] | None:
        """The performance profile stored for trial `number` (study attr
        `tuner.profile.<number>`, written by `tuner profile --study`), or None."""
        with self.engine.connect() as conn:
            raw = conn.execute(
                text("SELECT value_json FROM study_user_attributes WHERE study_id = :s AND key = :k"),
                {"s": view.study_id, "k": f"{StudyAttr.PROFILE_PREFIX}{number}"},
            ).scalar()
        profile = decode_json_attr(raw)
        return profile if isinstance(profile, dict) else None

    def scaling(self, view: StudyView) -> Any:
        """The study's scaling report (study attr `tuner.scaling`, written by `tuner scaling`),
        read fresh: a rerun overwrites the attr without changing the view's fingerprint."""
        with self.engine.connect() as conn:
            raw = conn.execute(
                text("SELECT value_json FROM study_user_attributes WHERE study_id = :s AND key = :k"),
                {"s": view.study_id, "k": StudyAttr.SCALING},
            ).scalar()
        return decode_json_attr(raw)

    def curves(self, trials: list[TrialView]) -> dict[int, dict[str, Any]]:
        """Per trial number: intermediate values (what the pruner saw), else the training loss curve."""
        ids = {t.trial_id: t.number for t in trials}
        if not ids:
            return {}
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT trial_id, step, intermediate_value FROM trial_intermediate_values "
                    "WHERE trial_id IN :ids ORDER BY trial_id, step"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": list(ids)},
            ).all()
            for trial_id, step, value in rows:
                if _finite(value) is None:
                    continue
                curve = out.setdefault(ids[trial_id], {"step": [], "value": [], "source": "intermediate"})
                curve["step"].append(int(step))
                curve["value"].append(float(value))
            missing = [tid for tid, number in ids.items() if number not in out]
            if not missing:
                return out
            results = conn.execute(
                text("SELECT trial_id, value_json FROM trial_user_attributes WHERE trial_id IN :ids AND key = :k").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": missing, "k": TrialAttr.RESULT},
            ).all()
        for trial_id, value_json in results:
            result = decode_json_attr(value_json)
            losses = result.get("loss_curve") if isinstance(result, dict) else None
            points = [(i, float(v)) for i, v in enumerate(losses or ()) if _finite(v) is not None]
            if points:
                out[ids[trial_id]] = {"step": [i for i, _ in points], "value": [v for _, v in points], "source": "loss_curve"}
        return out


def _trial_value(value: float | None, value_type: Any) -> float | None:
    kind = _state_name(value_type)
    if kind == "INF_POS":
        return math.inf
    if kind == "INF_NEG":
        return -math.inf
    return float(value) if value is not None else None


_DISTRIBUTIONS: dict[str, Any] = {}


def _external(internal: float, dist_json: str) -> Any:
    """Optuna stores a categorical choice as its index; the dashboard shows the choice."""
    dist = _DISTRIBUTIONS.get(dist_json)
    if dist is None:
        from tuner.study.distributions import distribution_from_json

        dist = _DISTRIBUTIONS.setdefault(dist_json, distribution_from_json(dist_json))
    try:
        return dist.to_external_repr(internal)
    except (IndexError, ValueError, TypeError):
        return internal


def _trial_view(
    head: Any,
    values: dict[int, float | None] | None,
    params: dict[str, Any],
    attrs: dict[str, Any],
    result: dict[str, Any] | None,
) -> TrialView:
    trial_id, number, state, start, complete = head
    state = _state_name(state)
    result = dict(result) if result else {}
    status = result.pop("status", None) or attrs.get(TrialAttr.LEGACY_STATUS)
    if not status:
        status = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}.get(state, state.lower())
    if state in _UNFINISHED:
        status = state.lower()  # a re-queued trial may carry an old status: show what it is now
    constraint = attrs.get(TrialAttr.CONSTRAINT)
    feasible = not (isinstance(constraint, list) and any(isinstance(c, (int, float)) and c > 0 for c in constraint))
    return TrialView(
        trial_id=int(trial_id),
        number=int(number),
        state=state,
        status=str(status),
        kind=str(attrs.get(TrialAttr.KIND) or TrialKind.TRIAL),
        values=tuple(values[i] for i in sorted(values)) if values else None,
        params=params,
        result=result,
        feasible=feasible,
        datetime_start=_as_datetime(start),
        datetime_complete=_as_datetime(complete),
    )


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))  # SQLite through text() returns strings

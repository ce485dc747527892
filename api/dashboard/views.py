"""Chart-ready and aggregated data computed from a `StudyView` (no SQL here; the trial
table is `api.dashboard.trial_table`).

Every function returns plain JSON-able dicts. Results that depend only on the study's
revision are memoized on the view, so polling tabs reuse them until a trial changes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from api.dashboard.store import StudyView, TrialView
from tuner.study.attrs import StudyAttr

if TYPE_CHECKING:
    from tuner.study.confirm import Confirmation
    from tuner.study.gain import Gain

GIB = 2**30
#: The most points each chart gets. Plotly draws scatter plots as SVG here (WebGL falls back to
#: a slow software rasterizer in browsers without a GPU), so a few thousand points is the
#: budget that keeps each chart well under a second; what is dropped is said on the page.
MAX_HISTORY_POINTS = 2000
MAX_SCATTER_POINTS = 2500
MAX_PARCOORDS_LINES = 1000


def finite_float(value: Any) -> float | None:
    """`value` as a float if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def to_gib(value: float | None) -> float | None:
    return value / GIB if value is not None else None


def objective_value(trial: TrialView, index: int = 0) -> float | None:
    if trial.values is None or len(trial.values) <= index:
        return None
    return finite_float(trial.values[index])


def eligible(view: StudyView) -> list[TrialView]:
    """Trials that may be 'best': complete, measured, within the memory limit (tuner's rule)."""
    return view.memo(
        "eligible",
        lambda: [
            t for t in view.ordered()
            if t.state == "COMPLETE" and t.feasible and t.values and all(finite_float(v) is not None for v in t.values)
        ],
    )


def _sign(view: StudyView, index: int) -> float:
    direction = view.directions[index] if index < len(view.directions) else "maximize"
    return 1.0 if direction == "maximize" else -1.0


def pareto(view: StudyView) -> list[TrialView]:
    """Non-dominated eligible trials over all objectives (one trial for single objective)."""

    def build() -> list[TrialView]:
        points = [(t, [_sign(view, i) * v for i, v in enumerate(t.values or ())]) for t in eligible(view)]
        if len(view.directions) <= 1:
            best = max(points, key=lambda p: (p[1][0], -p[0].number), default=None)
            return [best[0]] if best else []
        # Sort by the first objective (desc), then keep points not dominated by a kept one.
        points.sort(key=lambda p: [-x for x in p[1]])
        front: list[tuple[TrialView, list[float]]] = []
        for trial, p in points:
            if not any(all(a >= b for a, b in zip(q, p, strict=True)) and q != p for _, q in front):
                front.append((trial, p))
        return sorted((t for t, _ in front), key=lambda t: t.number)

    return view.memo("pareto", build)


def best(view: StudyView) -> TrialView | None:
    """Best eligible trial on the first objective (among the Pareto set for several)."""
    front = pareto(view)
    return max(front, key=lambda t: (_sign(view, 0) * (objective_value(t) or 0.0), -t.number), default=None)


def baseline_value(view: StudyView) -> float | None:
    baseline = view.attrs.get(StudyAttr.BASELINE)
    if not isinstance(baseline, dict) or baseline.get("status") != "ok":
        return None
    objective = view.objectives[0]
    key = {"throughput": "items_per_s", "val_loss": "val_loss"}.get(objective)
    return finite_float(baseline.get(key)) if key else None


def gain(view: StudyView, top: TrialView | None) -> float | None:
    """How many times better the best is than the default config (>1 is better): the
    figure of `gain_report` (the confirmation's median when there is one for this best,
    else the search-time ratio)."""
    return finite_float(gain_report(view, top).value)


def gain_report(view: StudyView, trial: TrialView | None, top: TrialView | None = None) -> Gain:
    """The gain of `trial` over the default config, worded by tuner (`tuner.study.gain`)
    exactly as `tuner tune` and `tuner best` word it; the pages only display it. `top`:
    the study's best when `trial` may be another trial (the trial page): only the best's
    stored confirmation is reported, any other trial's figure is its search-time ratio."""
    from tuner.study.gain import describe_gain

    is_best = top is None or (trial is not None and trial.number == top.number)
    baseline = view.attrs.get(StudyAttr.BASELINE)
    status = baseline.get("status") if isinstance(baseline, dict) else None
    if trial is None:
        missing = "no completed trial"
    elif status is None:
        missing = "no ratio: the default config was not measured"
    elif status != "ok":
        missing = f"no ratio: the default config did not run ({status})"
    else:
        missing = "no ratio: no measured value to compare"
    return describe_gain(
        view.objectives[0],
        confirmation=_confirmation_of(view, trial) if is_best else None,
        best_value=objective_value(trial) if trial is not None else None,
        baseline_value=baseline_value(view),
        unit=item_unit(view),
        missing=missing,
    )


def default_wins(view: StudyView, top: TrialView | None) -> bool:
    """The back-to-back confirmation measured the default config faster than the best
    trial: `tuner tune` then recommends the default config, and so does the dashboard."""
    confirmation = _confirmation_of(view, top)
    return confirmation is not None and confirmation.default_wins


def _confirmation_of(view: StudyView, top: TrialView | None) -> Confirmation | None:
    """The study's stored confirmation when it re-measured `top` (else the best changed since)."""
    from tuner.study.confirm import Confirmation

    data = view.attrs.get(StudyAttr.CONFIRMATION)
    if top is None or not isinstance(data, dict) or tuple(view.objectives) != ("throughput",):
        return None
    try:
        confirmation = Confirmation.from_dict(data)
        confirmation.ratio_min  # noqa: B018 - a zero measurement in a hand-edited attr fails here, not mid-page
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if confirmation.best_trial_number != top.number or not confirmation.pairs:
        return None
    return confirmation


def measured(view: StudyView) -> bool:
    """Whether any trial carries a measured throughput or peak memory. An ask/tell study's
    jobs usually tell only their objectives: then the throughput/memory views are empty
    and the pages leave them out instead of showing empty columns and charts."""
    return view.memo("measured", lambda: any(t.throughput is not None or t.peak_memory_bytes is not None for t in view.trials.values()))


def parameter_names(view: StudyView) -> list[str]:
    """The study's own parameters, whatever their names: those of its space and every name
    its trials were sampled with (read from the trials, never from the knob catalogue)."""
    spec = view.spec
    declared: set[str] = set()
    if spec is not None:
        for group in ("params", "hparams"):  # hparams: user hyperparameters, when the space has them
            declared |= {p.name for p in getattr(spec.space, group, ()) or ()}
    return sorted(declared | set(view.distributions))


def progress(view: StudyView) -> dict[str, Any]:
    return view.memo("progress", lambda: _progress(view))


def _progress(view: StudyView) -> dict[str, Any]:
    counted = [t for t in view.ordered() if t.counts_toward_target]
    by_status: dict[str, int] = {}
    for t in view.ordered():
        by_status[t.status] = by_status.get(t.status, 0) + 1
    target = view.spec.n_trials if view.spec is not None else None
    done = sum(1 for t in counted if t.finished)
    return {
        "done": done,
        "target": target if isinstance(target, int) else None,
        "running": by_status.get("running", 0),
        "total_trials": len(view.trials),
        "by_status": by_status,
        "fraction": min(1.0, done / target) if isinstance(target, int) and target > 0 else None,
    }


def times(view: StudyView) -> dict[str, Any]:
    return view.memo("times", lambda: _times(view))


def _times(view: StudyView) -> dict[str, Any]:
    starts = [t.datetime_start for t in view.trials.values() if t.datetime_start]
    ends = [t.datetime_complete for t in view.trials.values() if t.datetime_complete]
    return {
        "started": min(starts).isoformat() if starts else None,
        "last_finished": max(ends).isoformat() if ends else None,
    }


def hardware_summary(view: StudyView) -> dict[str, Any] | None:
    """The profile the study ran with (study attr `tuner.hardware`), as display rows."""
    hw = view.attrs.get("tuner.hardware")
    if not isinstance(hw, dict):
        return None
    gpus = hw.get("gpus") or []
    names = sorted({str(g.get("name")) for g in gpus if isinstance(g, dict) and g.get("name")})
    memory = [g.get("memory_total_bytes") for g in gpus if isinstance(g, dict) and g.get("memory_total_bytes")]
    label = f"{len(gpus)}x {', '.join(names)}" if gpus else f"CPU: {hw.get('cpu_model') or 'unknown'}"
    rows = [
        ("device", hw.get("device_type")),
        ("GPUs", label if gpus else None),
        ("GPU memory", f"{min(memory) / GIB:.1f} GiB" if memory else None),
        ("driver / CUDA", " / ".join(str(x) for x in (hw.get("driver_version"), hw.get("cuda_driver_version")) if x) or None),
        ("CPU", hw.get("cpu_model")),
        ("CPU cores", hw.get("cpu_count")),
        ("RAM", f"{hw['ram_bytes'] / GIB:.1f} GiB" if isinstance(hw.get("ram_bytes"), (int, float)) else None),
        ("fast precisions", ", ".join(hw.get("fast_precisions") or []) or None),
        ("source", hw.get("source")),
    ]
    peaks = hw.get("peak_tflops") or {}
    peak_rows = [(f"peak {p} TFLOP/s", f"{v:.0f}" + (f" ({hw.get('peak_sources', {}).get(p)})" if hw.get("peak_sources", {}).get(p) else "")) for p, v in peaks.items() if isinstance(v, (int, float))]
    return {
        "label": label,
        "memory_bytes": min(memory) if memory else None,
        "rows": [{"name": k, "value": v} for k, v in [*rows, *peak_rows] if v not in (None, "")],
    }


def memory_limit_bytes(view: StudyView) -> float | None:
    """The line drawn on the memory axis: the study's limit, else the GPU's memory."""
    limit = finite_float(view.spec.memory_limit_bytes if view.spec is not None else None)
    if limit is not None:
        return limit
    hw = hardware_summary(view)
    return float(hw["memory_bytes"]) if hw and hw.get("memory_bytes") else None


def trial_brief(t: TrialView, config: dict[str, Any] | None) -> dict[str, Any]:
    """A trial as the best-config card shows it (its config read by `DashboardStore.configs`)."""
    return {
        "number": t.number,
        "status": t.status,
        "values": [finite_float(v) for v in t.values] if t.values else None,
        "throughput": t.throughput,
        "peak_memory_gib": to_gib(t.peak_memory_bytes),
        "config": config,
        "params": t.params,
    }


# -- charts ------------------------------------------------------------------------------
def _thin(indices: list[int], cap: int, keep: set[int] | None = None) -> list[int]:
    """At most `cap` of `indices`, evenly spaced, always keeping those in `keep`."""
    if len(indices) <= cap:
        return indices
    keep = keep or set()
    kept = [i for i in indices if i in keep]
    rest = [i for i in indices if i not in keep]
    room = max(cap - len(kept), 0)
    step = len(rest) / room if room else math.inf
    sampled = [rest[int(k * step)] for k in range(room)] if room else []
    return sorted(set(kept) | set(sampled))


def history(view: StudyView) -> dict[str, Any]:
    points = eligible(view)
    sign = _sign(view, 0)
    running: list[float] = []
    improved: set[int] = set()
    best_so_far: float | None = None
    for i, t in enumerate(points):
        value = objective_value(t) or 0.0
        if best_so_far is None or sign * value > sign * best_so_far:
            best_so_far = value
            improved.add(i)
        running.append(best_so_far)
    keep = _thin(list(range(len(points))), MAX_HISTORY_POINTS, improved)
    failed = [t for t in view.ordered() if t.status in ("oom", "failed") or (t.state == "COMPLETE" and not t.feasible)]
    return {
        "number": [points[i].number for i in keep],
        "value": [objective_value(points[i]) for i in keep],
        "best": [running[i] for i in keep],
        "best_steps": {"number": [points[i].number for i in sorted(improved)], "value": [running[i] for i in sorted(improved)]},
        "failed_numbers": [t.number for t in failed][:MAX_HISTORY_POINTS],
        "shown": len(keep),
        "total": len(points),
    }


def item_unit(view: StudyView) -> str:
    """What throughput counts (tokens, samples), from the first measured trial."""
    return view.memo("unit", lambda: next((str(u) for t in view.ordered() if (u := t.result.get("item_unit"))), "items"))


def scatter(view: StudyView) -> dict[str, Any]:
    """Throughput vs peak memory by category, the (throughput up, memory down) Pareto front."""
    groups: dict[str, list[TrialView]] = {"ok": [], "over_limit": [], "oom": [], "infeasible": []}
    for t in view.ordered():
        if t.status == "ok" and t.throughput is not None and t.peak_memory_bytes is not None:
            groups["ok" if t.feasible else "over_limit"].append(t)
        elif t.status == "oom":
            groups["oom"].append(t)
        elif t.status == "infeasible":
            groups["infeasible"].append(t)
    front: list[TrialView] = []
    best_tp = -math.inf
    for t in sorted(groups["ok"], key=lambda t: (t.peak_memory_bytes, -(t.throughput or 0))):
        if (t.throughput or 0) > best_tp:
            front.append(t)
            best_tp = t.throughput or 0
    front_numbers = {t.number for t in front}
    out: dict[str, Any] = {}
    total = sum(len(g) for g in groups.values())
    budget = MAX_SCATTER_POINTS
    for name, members in groups.items():
        share = max(200, int(budget * len(members) / total)) if total else 0
        keep = _thin(list(range(len(members))), share, {i for i, t in enumerate(members) if t.number in front_numbers})
        chosen = [members[i] for i in keep]
        out[name] = {
            "number": [t.number for t in chosen],
            # OOM trials plot at the peak they reached before failing; infeasible ones at the
            # peak the memory model predicted (they never ran). Both at zero throughput.
            "memory_gib": [to_gib(t.peak_memory_bytes if name != "infeasible" else finite_float(t.result.get("predicted_peak_bytes"))) for t in chosen],
            "throughput": [t.throughput if name in ("ok", "over_limit") else 0.0 for t in chosen],
            "total": len(members),
        }
    out["pareto"] = {
        "number": [t.number for t in front],
        "memory_gib": [to_gib(t.peak_memory_bytes) for t in front],
        "throughput": [t.throughput for t in front],
    }
    limit = memory_limit_bytes(view)
    out["memory_limit_gib"] = to_gib(limit)
    out["limit_source"] = "study memory limit" if view.spec is not None and view.spec.memory_limit_bytes else ("GPU memory" if limit else None)
    out["unit"] = item_unit(view)
    return out


def parallel_coordinates(view: StudyView) -> dict[str, Any]:
    from tuner.study.distributions import categorical_choices, distribution_from_json

    points = eligible(view)
    sign = _sign(view, 0)
    ranked = sorted(range(len(points)), key=lambda i: -sign * (objective_value(points[i]) or 0.0))
    keep = _thin(list(range(len(points))), MAX_PARCOORDS_LINES, set(ranked[: MAX_PARCOORDS_LINES // 5]))
    chosen = [points[i] for i in keep]
    dims = []
    for name in sorted(view.distributions):
        dist = distribution_from_json(view.distributions[name])
        raw = [t.params.get(name) for t in chosen]
        choices = categorical_choices(dist)
        if choices is not None:
            labels = [str(c) for c in choices]
            dims.append({"label": name, "values": [labels.index(str(v)) if str(v) in labels else None for v in raw], "tickvals": list(range(len(labels))), "ticktext": labels})
            continue
        log = bool(getattr(dist, "log", False))
        numbers = [finite_float(v) for v in raw]
        values = [math.log10(v) if log and v is not None and v > 0 else v for v in numbers]
        distinct = sorted({v for v in numbers if v is not None})
        dim: dict[str, Any] = {"label": name + (" (log)" if log else ""), "values": values}
        if log and 0 < len(distinct) <= 12:
            dim["tickvals"] = [math.log10(v) for v in distinct if v > 0]
            dim["ticktext"] = [f"{v:g}" for v in distinct if v > 0]
        dims.append(dim)
    color = [objective_value(t) for t in chosen]
    dims.append({"label": view.objectives[0], "values": color})
    return {"dimensions": dims, "number": [t.number for t in chosen], "color": color, "shown": len(chosen), "total": len(points)}


def charts(view: StudyView) -> dict[str, Any]:
    def build() -> dict[str, Any]:
        return {
            "revision": view.revision,
            "objectives": view.objectives,
            "directions": view.directions,
            "history": history(view),
            "scatter": scatter(view),
            "parallel": parallel_coordinates(view),
        }

    return view.memo("charts", build)


def curve_trials(view: StudyView, numbers: list[int] | None, limit: int = 12) -> list[TrialView]:
    """The trials whose learning curves are drawn: the ones asked for, else the best few
    and the most recent few finished ones."""
    by_number = {t.number: t for t in view.trials.values()}
    if numbers:
        return [by_number[n] for n in numbers[:limit] if n in by_number]
    sign = _sign(view, 0)
    top = sorted(eligible(view), key=lambda t: -sign * (objective_value(t) or 0.0))[: limit // 2]
    recent = [t for t in reversed(view.ordered()) if t.finished and t.status in ("ok", "pruned")][:limit]
    chosen = {t.number: t for t in top}
    for t in recent:
        if len(chosen) >= limit:
            break
        chosen.setdefault(t.number, t)
    return sorted(chosen.values(), key=lambda t: t.number)


# -- the trial page's monitoring sections -----------------------------------------------------

#: The per-rank NVML table's columns: (key of the rank's row, label, unit).
RANK_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("util_gpu_mean", "GPU util", "%"),
    ("util_mem_mean", "memory busy", "%"),
    ("mem_bw_share_mean", "memory bandwidth / probed peak", "share of probed peak"),
    ("pcie_rx_share_mean", "PCIe RX / link peak", "share of link peak"),
    ("pcie_tx_share_mean", "PCIe TX / link peak", "share of link peak"),
    ("sm_clock_mean_mhz", "SM clock", "MHz"),
    ("power_w_mean", "power", "W"),
    ("mem_used_max_bytes", "memory used (max)", "bytes"),
    ("temp_max_c", "temperature (max)", "°C"),
    ("power_capped_share", "power capped", "share of samples"),
)


def rank_telemetry(telemetry: dict[str, Any]) -> dict[str, Any] | None:
    """The per-rank NVML table of a multi-rank trial (`telemetry["nvml_per_rank"]`), shaped
    for the trial page; None for a single-process trial. A rank without NVML (a CPU rank,
    a rank that died) is a row with its reason and no numbers."""
    table = telemetry.get("nvml_per_rank") if isinstance(telemetry, dict) else None
    if not isinstance(table, dict) or not isinstance(table.get("ranks"), list):
        return None
    worst = table.get("worst_rank")
    rows = []
    for entry in table["ranks"]:
        if not isinstance(entry, dict):
            continue
        available = bool(entry.get("available"))
        rows.append(
            {
                "rank": entry.get("rank"),
                "available": available,
                "reason": None if available else str(entry.get("reason") or "no NVML telemetry"),
                "samples": entry.get("samples") or 0,
                "worst": available and entry.get("rank") == worst,
                "values": {key: finite_float(entry.get(key)) for key, _, _ in RANK_COLUMNS},
                "throttle_reasons": [str(r) for r in entry.get("throttle_reasons") or []],
            }
        )
    return {
        "columns": [{"key": k, "label": label, "unit": unit} for k, label, unit in RANK_COLUMNS],
        "rows": rows,
        "sampled_ranks": sum(1 for r in rows if r["available"]),
        "worst_rank": worst,
        "worst_by": table.get("worst_by"),
        "reason": table.get("reason"),
    }


def launch_overhead(telemetry: dict[str, Any]) -> dict[str, Any] | None:
    """The stored profile's launch latency / idle gaps / dispatch overhead
    (`tuner.trial.launch_overhead`), or None when the trial was not profiled (or was
    profiled before these were measured)."""
    profile = telemetry.get("profile") if isinstance(telemetry, dict) else None
    section = profile.get("launch_overhead") if isinstance(profile, dict) else None
    if not isinstance(section, dict):
        return None
    cpu, gpu = section.get("cpu_dispatch"), section.get("gpu_launch")
    return {
        "device": profile.get("device"),
        "cpu_dispatch": cpu if isinstance(cpu, dict) else None,
        "gpu_launch": gpu if isinstance(gpu, dict) else None,
    }

"""The dashboard's view of an inference (serving) study: QPS vs p99 with the SLO and the
Pareto front, serving columns, the best serving config against the default, and one
trial's latency and batch-size histograms.

An inference study stores its trials' results as the trial attrs `tuner.inference.result`
/ `tuner.inference.config` (not the training `tuner.result`), and its SLO and baseline as
study attrs (`tuner.inference.spec`, `tuner.inference.baseline`; `api.dashboard.store`
reads those with the other study attrs). Serving trials are slow (seconds each), so a
study holds tens to hundreds of them: they are read in one query per study revision and
kept in the view's memo; no paging or downsampling is needed at that size.

Which trial may be best is tuner's rule (`tuner.inference.objectives`): only `ok`
results within the SLO; `inaccurate` and `over_slo` never are, whatever their numbers.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Engine, text

from api.dashboard.store import StudyView, decode_json_attr
from tuner.inference.objectives import best_index, pareto_front
from tuner.inference.result import InferenceResult

# The attr names of tuner.study.inference_study (not imported: that module pulls the study loop in).
SPEC_ATTR = "tuner.inference.spec"
BASELINE_ATTR = "tuner.inference.baseline"
RESULT_ATTR = "tuner.inference.result"
CONFIG_ATTR = "tuner.inference.config"
DEFAULT_SLO_P99_MS = 50.0
#: the serving knobs the table shows as columns, in order (the rest are on the trial page)
TABLE_KNOBS = ("serving_precision", "max_batch_size", "batch_window_ms", "instances")


def is_inference(view: StudyView) -> bool:
    return isinstance(view.attrs.get(SPEC_ATTR), dict)


def slo_p99_ms(view: StudyView) -> float:
    spec = view.attrs.get(SPEC_ATTR) or {}
    value = spec.get("slo_p99_ms") if isinstance(spec, dict) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_SLO_P99_MS


def objectives(view: StudyView) -> list[str]:
    spec = view.attrs.get(SPEC_ATTR) or {}
    names = spec.get("objectives") if isinstance(spec, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and names else ["qps_at_slo"]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def trials(view: StudyView, engine: Engine) -> list[tuple[int, dict[str, Any], InferenceResult]]:
    """(number, config, result) of every trial that stored a serving result, by number."""

    def read() -> list[tuple[int, dict[str, Any], InferenceResult]]:
        by_id = {t.trial_id: t.number for t in view.trials.values()}
        attrs: dict[int, dict[str, Any]] = {}
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT x.trial_id, x.key, x.value_json FROM trial_user_attributes x "
                    "JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id = :s AND x.key IN (:r, :c)"
                ),
                {"s": view.study_id, "r": RESULT_ATTR, "c": CONFIG_ATTR},
            ).all()
        for trial_id, key, value_json in rows:
            if trial_id in by_id:
                attrs.setdefault(by_id[trial_id], {})[key] = decode_json_attr(value_json)
        out = []
        for number in sorted(attrs):
            result, config = attrs[number].get(RESULT_ATTR), attrs[number].get(CONFIG_ATTR)
            if not isinstance(result, dict):
                continue
            try:
                parsed = InferenceResult.from_dict(result)
            except (TypeError, ValueError):
                continue  # written by another tuner version: shown by the generic page only
            out.append((number, config if isinstance(config, dict) else {}, parsed))
        return out

    return view.memo("inference.trials", read)


def _baseline(view: StudyView) -> tuple[dict[str, Any] | None, InferenceResult | None]:
    data = view.attrs.get(BASELINE_ATTR)
    if not isinstance(data, dict) or not isinstance(data.get("result"), dict):
        return None, None
    try:
        return data.get("config"), InferenceResult.from_dict(data["result"])
    except (TypeError, ValueError):
        return data.get("config"), None


def accuracy_delta(accuracy: dict[str, Any]) -> tuple[str | None, float | None]:
    """The one figure of the accuracy guard a table column shows: AUC delta (CTR), else
    1 - top-1 agreement (classes, logits), else the max abs diff to the fp32 reference."""
    for metric, value in (
        ("auc_delta", accuracy.get("auc_delta")),
        ("top1_disagreement", 1 - accuracy["top1_agreement"] if _finite(accuracy.get("top1_agreement")) is not None else None),
        ("max_abs_diff", accuracy.get("max_abs_diff")),
    ):
        if _finite(value) is not None:
            return metric, float(value)
    return None, None


def _point(result: InferenceResult) -> tuple[float, float] | None:
    """Where a trial sits on the QPS vs p99 plane: an `ok` one at its sustained rate; an
    over-SLO one at the lowest rate it was offered (what it achieved there, and that p99)."""
    if result.status.value == "ok" and result.p99_ms is not None:
        return result.qps, result.p99_ms
    if result.ramp and result.p99_ms is not None:
        lowest = min(result.ramp, key=lambda p: p.offered_qps)
        return lowest.achieved_qps, result.p99_ms
    return None


def study(view: StudyView, engine: Engine) -> dict[str, Any]:
    """Everything the inference study page shows, memoized per revision."""
    return view.memo("inference.study", lambda: _study(view, engine))


def _study(view: StudyView, engine: Engine) -> dict[str, Any]:
    rows = trials(view, engine)
    slo = slo_p99_ms(view)
    names = objectives(view)
    results = [r for _, _, r in rows]
    best_at = best_index(results, names[0], slo)
    front = {rows[i][0] for i in pareto_front(results, slo)}
    base_config, base = _baseline(view)
    # The scatter: every trial with a measured (QPS, p99), by what may be best.
    groups: dict[str, dict[str, list[Any]]] = {
        g: {"number": [], "qps": [], "p99_ms": []} for g in ("ok", "over_slo", "inaccurate", "failed")
    }
    unplotted: list[dict[str, Any]] = []
    for number, _, result in rows:
        point = _point(result)
        status = result.status.value
        if point is None:
            unplotted.append({"number": number, "status": status, "reason": result.reason})
            continue
        group = groups[status if status in groups else "failed"]
        group["number"].append(number)
        group["qps"].append(point[0])
        group["p99_ms"].append(point[1])
    pareto_rows = sorted((r for r in rows if r[0] in front), key=lambda r: r[2].qps)
    table = []
    for number, config, result in rows:
        metric, delta = accuracy_delta(result.accuracy)
        table.append(
            {
                "number": number,
                "status": result.status.value,
                "qps": result.qps if result.ok else None,
                "p99_ms": _finite(result.p99_ms),
                "serving_precision": config.get("serving_precision"),
                "int8_backend": config.get("int8_backend") if str(config.get("serving_precision", "")).startswith("int8") else None,
                "max_batch_size": config.get("max_batch_size"),
                "batch_window_ms": config.get("batch_window_ms"),
                "instances": config.get("instances"),
                "accuracy_metric": metric,
                "accuracy_delta": delta,
                "reason": result.reason,
                "best": best_at is not None and rows[best_at][0] == number,
                "pareto": number in front,
            }
        )
    best = None
    if best_at is not None:
        number, config, result = rows[best_at]
        ratio = result.qps / base.qps if base is not None and base.ok and base.qps > 0 else None
        best = {
            "number": number,
            "config": config,
            "qps": result.qps,
            "p99_ms": result.p99_ms,
            "accuracy": result.accuracy,
            "notes": list(result.notes),
            "ratio": ratio,
        }
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status.value] = counts.get(result.status.value, 0) + 1
    return {
        "revision": view.revision,
        "objectives": names,
        "slo_p99_ms": slo,
        "best": best,
        "baseline": {
            "config": base_config,
            "status": base.status.value if base is not None else None,
            "qps": base.qps if base is not None and base.ok else None,
            "p99_ms": _finite(base.p99_ms) if base is not None else None,
            "reason": base.reason if base is not None else None,
        },
        "counts": counts,
        "scatter": {
            **groups,
            "pareto": {
                "number": [n for n, _, _ in pareto_rows],
                "qps": [r.qps for _, _, r in pareto_rows],
                "p99_ms": [r.p99_ms for _, _, r in pareto_rows],
            },
            "unplotted": unplotted,
        },
        "columns": [
            {"key": "number", "label": "#"},
            {"key": "status", "label": "status"},
            {"key": "qps", "label": "QPS at SLO"},
            {"key": "p99_ms", "label": "p99 ms"},
            {"key": "serving_precision", "label": "precision"},
            {"key": "max_batch_size", "label": "batch"},
            {"key": "batch_window_ms", "label": "window ms"},
            {"key": "instances", "label": "instances"},
            {"key": "accuracy_delta", "label": "accuracy delta"},
        ],
        "trials": table,
    }


def _histogram(data: dict[str, int], key: Any) -> dict[str, list[Any]]:
    items = sorted(((str(k), int(v)) for k, v in data.items() if isinstance(v, (int, float))), key=lambda kv: key(kv[0]))
    return {"bucket": [k for k, _ in items], "count": [v for _, v in items]}


def _latency_edge(label: str) -> float:
    """'<=2.5' -> 2.5; the overflow bucket '>1000' sorts last."""
    try:
        return float(label.lstrip("<=>")) + (1e-9 if label.startswith(">") else 0.0)
    except ValueError:
        return math.inf


def _batch_size(label: str) -> float:
    try:
        return float(label)
    except ValueError:
        return math.inf


def trial(view: StudyView, engine: Engine, number: int) -> dict[str, Any] | None:
    """One serving trial for the trial page; None when `number` stored no serving result."""
    found = next(((c, r) for n, c, r in trials(view, engine) if n == number), None)
    if found is None:
        return None
    config, result = found
    summary = study(view, engine)
    metric, delta = accuracy_delta(result.accuracy)
    return {
        "status": result.status.value,
        "reason": result.reason,
        "config": config,
        "baseline_config": summary["baseline"]["config"],
        "slo_p99_ms": slo_p99_ms(view),
        "qps": result.qps if result.ok else None,
        "p50_ms": _finite(result.p50_ms),
        "p95_ms": _finite(result.p95_ms),
        "p99_ms": _finite(result.p99_ms),
        "p99_at_target_ms": _finite(result.p99_at_target_ms),
        "peak_memory_bytes": result.peak_memory_bytes,
        "predicted_peak_bytes": result.predicted_peak_bytes,
        "linear_weight_bytes": result.linear_weight_bytes,
        "accuracy": {k: _finite(v) for k, v in result.accuracy.items()},
        "accuracy_metric": metric,
        "accuracy_delta": delta,
        "notes": list(result.notes),
        "latency_histogram": _histogram(result.latency_histogram_ms, _latency_edge),
        "batch_histogram": _histogram(result.batch_histogram, _batch_size),
        "ramp": [{k: _finite(v) if isinstance(v, float) else v for k, v in p.to_dict().items()} for p in result.ramp],
        "is_best": summary["best"] is not None and summary["best"]["number"] == number,
        "baseline_qps": summary["baseline"]["qps"],
    }


def list_summary(view: StudyView, engine: Engine) -> dict[str, Any]:
    """What the studies list shows for an inference study: its best by tuner's serving rule
    (not Optuna's raw best), and the QPS-at-SLO ratio to the default config as the gain."""
    from tuner.study.gain import describe_qps_gain

    data = study(view, engine)
    best, baseline = data["best"], data["baseline"]
    if best is None:
        missing = "no config met the SLO accurately yet"
    elif baseline["status"] is None:
        missing = "no ratio: the default config was not measured"
    elif baseline["qps"] is None:
        missing = f"no ratio: the default config has no QPS at the SLO ({baseline['status']})"
    else:
        missing = None
    report = describe_qps_gain(
        best["qps"] if best else None, baseline["qps"], data["slo_p99_ms"], missing=missing
    )
    return {
        "best": {"number": best["number"], "value": best["qps"]} if best else None,
        "gain": report.value,
        "gain_report": report.to_dict(),
    }

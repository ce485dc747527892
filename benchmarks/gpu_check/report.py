"""summary.json and summary.md of a GPU check run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Figures shown in the markdown table, per step (everything is in summary.json).
KEY_FIGURES: dict[str, tuple[str, ...]] = {
    "env": ("torch", "torch_cuda", "cuda_device_count", "c_compiler"),
    "probe": ("measured_tflops", "memory_bandwidth_bytes_per_s", "datasheet_tflops"),
    "telemetry": ("sampler_uuid",),
    "matmul_tf32": ("fp32_tflops", "tf32_tflops", "ratio"),
    "study": ("seconds", "trials"),
    "fidelity": ("fidelity_ratio", "study_reported_over_independent"),
    "memory_model": ("median_abs_error", "max_abs_error", "cuda_context_bytes"),
    "precision_matrix": ("replaced_workers",),
    "oom_cycle": ("nvml_used_bytes",),
    "device_assert": ("replaced_workers",),
    "profile": ("items_per_s_profiled", "top_ops"),
    "devices": ("nvidia_smi_uuid",),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _study_line(figures: dict[str, Any]) -> str:
    outcome = figures.get("outcome") or {}
    if not outcome:
        return ""
    unit = outcome.get("item_unit") or "items"
    conf = outcome.get("confirmation") or {}
    return (
        f"best {_fmt(outcome.get('best_items_per_s'))} {unit}/s (trial {outcome.get('best_trial')}), "
        f"default {_fmt(outcome.get('baseline_items_per_s'))}; gain x{_fmt(outcome.get('ratio'))} "
        f"(range {_fmt(outcome.get('ratio_range'))}, {len(conf.get('pairs') or [])} back-to-back pairs); "
    )


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {summary['device']}{' --quick' if summary['quick'] else ''}",
        "",
        f"- started {summary['started_at']}, {summary['total_s']} s of a {summary['budget_s']:.0f} s budget",
        f"- GPUs: {', '.join(g.get('name', '?') + ' ' + g.get('uuid', '') for g in summary['gpus']) or 'none'}",
        f"- **fidelity ratio** (tuner / independent items/s, best config): **{_fmt(summary['fidelity_ratio'])}**"
        f"; default config {_fmt(summary['fidelity']['default_config_ratio'])}"
        f"; per repetition {_fmt(summary['fidelity'].get('per_repetition'))}"
        f"; fastest-step ratio {_fmt(summary['fidelity'].get('best_step_ratio'))}",
        f"- steps: {_fmt(summary['counts'])}",
        "",
        "| step | status | s (cap) | figures |",
        "| --- | --- | ---: | --- |",
    ]
    for name in summary["step_order"]:
        step = summary["steps"].get(name)
        if step is None:
            continue
        figures = step.get("figures") or {}
        shown = _study_line(figures) if name == "study" else ""
        shown += "; ".join(f"{k} {_fmt(figures[k])}" for k in KEY_FIGURES.get(name, ()) if k in figures)
        if step.get("skip_reason"):
            shown = step["skip_reason"]
        lines.append(
            f"| {name} | {step['status']} | {step['duration_s']:.1f} ({step['cap_s']:.0f}) | {shown} |"
        )
    problems = []
    for name in summary["step_order"]:
        step = summary["steps"].get(name) or {}
        for check in step.get("checks", []):
            if not check["ok"]:
                problems.append(f"- {name}: check **{check['name']}** failed: {check['detail'][:300]}")
        for error in step.get("errors", []):
            problems.append(f"- {name}: error: {error[:300]}")
    lines += ["", "## Failed checks and errors", "", *(problems or ["none"]), ""]
    return "\n".join(lines)


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(markdown(summary))

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
    "inference": ("slo_p99_ms", "best_config", "ratio", "int8_library", "served_on"),
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


def _inference_lines(step: dict[str, Any]) -> list[str]:
    """Per-config rows of the inference step: QPS at the SLO, p99, guard, memory."""
    figures = step.get("figures") or {}
    rows = figures.get("configs") or []
    if not rows:
        return []
    lines = [
        "",
        f"## Inference study ({figures.get('workload')}, p99 SLO {_fmt(figures.get('slo_p99_ms'))} ms, "
        f"{figures.get('device')})",
        "",
        f"best {_fmt(figures.get('best_config'))}: x{_fmt(figures.get('ratio'))} the default's QPS at the SLO; "
        f"int8 library {_fmt(figures.get('int8_library'))}; served on {_fmt(figures.get('served_on'))}",
        "",
        "| trial | precision | batch | status | QPS at SLO | p99 ms | accurate | peak MiB (predicted) |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    graphs = figures.get("cuda_graphs")
    for row in rows + ([graphs] if isinstance(graphs, dict) else []):
        config = row.get("config") or {}
        peak, predicted = row.get("peak_memory_bytes"), row.get("predicted_peak_bytes")
        memory = f"{_fmt((peak or 0) / 2**20)} ({_fmt((predicted or 0) / 2**20)})" if peak else "-"
        status = row["status"] + (f": {row['reason'][:80]}" if row["status"] == "refused" else "")
        lines.append(
            f"| {row['trial']} | {config.get('serving_precision')} | {config.get('max_batch_size')} | {status} "
            f"| {_fmt(row.get('qps_at_slo'))} | {_fmt(row.get('p99_ms'))} | {_fmt(row.get('accuracy_guard'))} "
            f"| {memory} |"
        )
    if figures.get("latency_sync"):
        sync = figures["latency_sync"]
        lines += ["", f"latency sync (batch 256): host clock {_fmt(sync['host_ms'])} ms vs CUDA events {_fmt(sync['gpu_event_ms'])} ms"]
    if isinstance(graphs, str):
        lines += ["", f"CUDA graphs: {graphs}"]
    return lines


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
    lines += _inference_lines(summary["steps"].get("inference") or {})
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

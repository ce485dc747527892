"""Performance analyzer: where the time of a training step goes, per operator and category.

`profile_config` builds a workload for one config, runs a few real training steps under
`torch.profiler` (CPU, plus CUDA where available) with the knobs applied by the same
pieces the trial runner uses (`train_step`, `precision`, `checkpointing`), and returns
a self-contained, JSON-able dict:

- the top operators by self time on the CPU and the top kernels on the GPU (name,
  category, calls, self time, share), with one remainder row so shares sum to 1;
- the share of time per category: matmul, attention, optimizer, communication,
  data_movement, other;
- `launch_overhead` (`tuner.trial.launch_overhead`): kernel launch latency and the GPU's
  idle gaps between kernels per step, and the CPU's dispatch overhead per operator.

Categories follow the call tree: an event belongs to the category of its outermost
categorised ancestor, so the `aten::copy_` inside an AdamW step is optimizer time and
the `aten::bmm` inside a math-SDPA is attention time. GPU kernels take the category of
the CPU operator that launched them (the profiler's correlation ids), falling back to
the kernel's own name (gemm, flash, nccl…).
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from tuner.errors import ConfigError, FieldProblem, ValidationError
from tuner.trial.checkpointing import enable_activation_checkpointing
from tuner.trial.device import activate_device, device_clock, resolve_device
from tuner.trial.launch_overhead import analyse_trace
from tuner.trial.oom import is_out_of_memory, release_memory
from tuner.trial.precision import precision_plan
from tuner.trial.train_step import accumulate_gradients, apply_optimizer_step, build_optimizer
from tuner.types import TrialConfig

if TYPE_CHECKING:
    from tuner.workloads.base import TrainableWorkload

__all__ = [
    "CATEGORIES",
    "PROFILE_SCHEMA_VERSION",
    "categorize_name",
    "format_launch_overhead",
    "profile_config",
    "summarise_events",
]

PROFILE_SCHEMA_VERSION = 1
CATEGORIES: tuple[str, ...] = ("matmul", "attention", "optimizer", "communication", "data_movement", "other")

# Our own markers around the parts of a step (torch adds "Optimizer.step#AdamW.step").
STEP_MARKER = "train_step"
BATCH_MARKER = "make_batch"
OPTIMIZER_MARKER = "optimizer"

_AUTOGRAD_PREFIX = "autograd::engine::evaluate_function: "
_COMMUNICATION = re.compile(
    r"c10d|nccl|gloo|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|record_param_comms", re.I
)
_OPTIMIZER = re.compile(r"^optimizer|adam|_foreach_|_fused_sgd|multi_tensor_apply|unscale", re.I)
_ATTENTION = re.compile(r"scaled_dot_product|flash|attention|fmha", re.I)
_MATMUL_OPS = frozenset(
    {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "_scaled_mm", "mv", "addmv",
     "dot", "einsum", "_addmm_activation", "mkldnn_linear", "_mkldnn_linear", "tensordot"}
)  # fmt: skip
_MATMUL_BACKWARD = re.compile(r"^(Mm|Addmm|Bmm|Baddbmm|Addbmm|Matmul|Linear|Mv|Addmv|Dot)Backward\d*$")
_MATMUL_KERNEL = re.compile(r"gemm|cutlass|xmma|cublas|wgmma|nvjet|gemv", re.I)
_DATA_OPS = frozenset(
    {"copy_", "to", "_to_copy", "contiguous", "clone", "cat", "stack", "index", "index_select",
     "gather", "scatter", "scatter_", "scatter_add", "scatter_add_", "index_put_", "_index_put_impl_",
     "index_add_", "index_copy_", "embedding", "embedding_bag", "_embedding_bag",
     "_embedding_bag_forward_only", "embedding_backward", "embedding_dense_backward",
     "_embedding_bag_backward", "_embedding_bag_dense_backward", "pin_memory", "_pin_memory",
     "repeat", "masked_select", "take", "narrow_copy", BATCH_MARKER}
)  # fmt: skip
_DATA_BACKWARD = re.compile(
    r"^(Cat|Index|IndexSelect|Gather|Embedding|EmbeddingBag|ToCopy|Clone|Stack)Backward\d*$"
)
_DATA_KERNEL = re.compile(r"memcpy|copy_kernel|CatArray|index|gather|scatter|embedding", re.I)


def categorize_name(name: str, *, kernel: bool = False) -> str | None:
    """The category an operator (or kernel) name alone implies, or None for no opinion.

    None lets an enclosing operator decide (e.g. `aten::t` inside `aten::linear`).
    """
    if name.startswith(_AUTOGRAD_PREFIX):
        name = name[len(_AUTOGRAD_PREFIX) :]
    base = name.rsplit("::", 1)[-1]
    if _COMMUNICATION.search(name):
        return "communication"
    if _OPTIMIZER.search(name):
        return "optimizer"
    if _ATTENTION.search(name):
        return "attention"
    if base in _MATMUL_OPS or _MATMUL_BACKWARD.match(base) or (kernel and _MATMUL_KERNEL.search(name)):
        return "matmul"
    if base in _DATA_OPS or _DATA_BACKWARD.match(base) or (kernel and _DATA_KERNEL.search(name)):
        return "data_movement"
    return None


class _CategoryOf:
    """Category of a CPU event: its outermost categorised ancestor's, else its own."""

    def __init__(self) -> None:
        self._memo: dict[int, str | None] = {}

    def chain(self, event: Any) -> str | None:
        key = id(event)
        if key not in self._memo:
            parent = event.cpu_parent
            inherited = self.chain(parent) if parent is not None else None
            self._memo[key] = inherited or categorize_name(event.name)
        return self._memo[key]

    def __call__(self, event: Any) -> str:
        return self.chain(event) or "other"


@dataclass
class _Row:
    name: str
    category: str
    kind: str
    calls: int = 0
    self_time_us: float = 0.0


def _section(rows: Iterable[_Row], top_k: int, what: str) -> dict[str, Any]:
    """Hotspots (top_k + a remainder row) and category shares of one timeline."""
    ranked = sorted((r for r in rows if r.self_time_us > 0), key=lambda r: -r.self_time_us)
    total = sum(r.self_time_us for r in ranked)
    by_category = dict.fromkeys(CATEGORIES, 0.0)
    for row in ranked:
        by_category[row.category] += row.self_time_us

    def share(us: float) -> float:
        return us / total if total > 0 else 0.0

    hotspots = [
        {
            "name": r.name,
            "category": r.category,
            "kind": r.kind,
            "calls": r.calls,
            "self_time_us": r.self_time_us,
            "share": share(r.self_time_us),
        }
        for r in ranked[:top_k]
    ]
    rest = ranked[top_k:]
    if rest:
        rest_us = sum(r.self_time_us for r in rest)
        hotspots.append(
            {
                "name": f"({len(rest)} other {what})",
                "category": "mixed",
                "kind": "remainder",
                "calls": sum(r.calls for r in rest),
                "self_time_us": rest_us,
                "share": share(rest_us),
            }
        )
    return {
        "total_self_time_us": total,
        "hotspots": hotspots,
        "categories": {c: share(us) for c, us in by_category.items()},
        "category_time_us": by_category,
    }


def _is_annotation(event: Any) -> bool:
    return bool(getattr(event, "is_user_annotation", False)) or "annotation" in str(
        getattr(event, "activity_type", "") or ""
    )


# Device-timeline records that are not work: our markers mirrored onto the GPU
# ("gpu_user_annotation"), stream waits ("cuda_sync"), profiler ranges and overhead.
# Counting them would double the time of the kernels they overlap.
_NOT_DEVICE_WORK = ("annotation", "sync", "overhead", "range")


def _is_device_work(event: Any) -> bool:
    activity = str(getattr(event, "activity_type", "") or "")
    return not getattr(event, "is_user_annotation", False) and not any(
        k in activity for k in _NOT_DEVICE_WORK
    )


def summarise_events(events: Iterable[Any], top_k: int = 15) -> dict[str, Any]:
    """CPU and device sections from `torch.profiler` FunctionEvents (`prof.events()`).

    Usable on any profiler run, e.g. one rank of a distributed trial.
    """
    category_of = _CategoryOf()
    cpu_rows: dict[tuple[str, str], _Row] = {}
    device_rows: dict[tuple[str, str], _Row] = {}
    launchers: dict[int, Any] = {}
    device_events = []
    for event in events:
        if event.device_type == DeviceType.CPU:
            if event.is_async:
                continue
            if getattr(event, "linked_correlation_id", 0) == 0:
                launchers[event.id] = event
            category = category_of(event)
            row = cpu_rows.setdefault(
                (event.name, category),
                _Row(event.name, category, "annotation" if _is_annotation(event) else "op"),
            )
            row.calls += 1
            row.self_time_us += float(event.self_cpu_time_total)
        elif _is_device_work(event):
            device_events.append(event)
    for event in device_events:
        launcher = launchers.get(getattr(event, "linked_correlation_id", -1))
        category = (
            (category_of.chain(launcher) if launcher is not None else None)
            or categorize_name(event.name, kernel=True)
            or "other"
        )
        row = device_rows.setdefault((event.name, category), _Row(event.name, category, "kernel"))
        row.calls += 1
        row.self_time_us += float(event.self_device_time_total)
    return {
        "cpu": _section(cpu_rows.values(), top_k, "operators"),
        "cuda": _section(device_rows.values(), top_k, "kernels") if device_events else None,
    }


def _check_arguments(config: TrialConfig, steps: int, warmup_steps: int, top_k: int) -> None:
    problems = []
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        problems.append(FieldProblem("steps", steps, "must be an int >= 1", "profile e.g. 5 steps"))
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        problems.append(FieldProblem("warmup_steps", warmup_steps, "must be an int >= 0", "use e.g. 1"))
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        problems.append(FieldProblem("top_k", top_k, "must be an int >= 1", "use e.g. 15"))
    if problems:
        raise ValidationError(problems)
    if config.world_size > 1:
        raise ConfigError(
            FieldProblem(
                "world_size",
                config.world_size,
                "the profiler runs one process",
                "profile with world_size: 1 (per-device compute is the same; sharding_stage must be 0)",
            )
        )


def profile_config(
    workload: TrainableWorkload,
    config: TrialConfig,
    params: Mapping[str, Any],
    steps: int = 5,
    device: str = "auto",
    seed: int = 0,
    *,
    warmup_steps: int = 1,
    top_k: int = 15,
) -> dict[str, Any]:
    """Profile `steps` training steps of `config` and say where the time goes.

    Warm-up steps run first, outside the profiler (lazy init, cuDNN/cuBLAS heuristics
    and torch.compile would otherwise dominate). Returns a JSON-able dict with
    `schema_version`; `status` is "ok", or "oom" when the config does not fit. `params`
    are the workload's resolved params (the caller resolved the user's input).
    """
    _check_arguments(config, steps, warmup_steps, top_k)
    resolved = dict(params)
    torch_device = resolve_device(device)
    if config.compile:
        warmup_steps = max(warmup_steps, 2)  # the first two steps compile (forward, then backward)
    report: dict[str, Any] = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": "tuner.performance_profile",
        "workload": workload.name,
        "params": resolved,
        "config": config.to_dict(),
        "device": str(torch_device),
        "torch": torch.__version__,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "activities": ["cpu", "cuda"] if torch_device.type == "cuda" else ["cpu"],
        "status": "ok",
        "notes": [],
    }
    started = time.perf_counter()
    try:
        _profile_into(report, workload, config, resolved, torch_device, seed, steps, warmup_steps, top_k)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        report["status"] = "oom"
        report["reason"] = f"out of memory: {(str(exc).strip() or repr(exc)).splitlines()[0][:300]}"
    finally:
        if config.compile:
            torch.compiler.reset()
        release_memory(torch_device)
    report["duration_s"] = time.perf_counter() - started
    return report


def _profile_into(
    report: dict[str, Any],
    workload: TrainableWorkload,
    config: TrialConfig,
    params: dict[str, Any],
    device: torch.device,
    seed: int,
    steps: int,
    warmup_steps: int,
    top_k: int,
) -> None:
    notes: list[str] = report["notes"]
    activate_device(device)  # an explicit cuda:N: current, and initialised before its counters are reset
    plan = precision_plan(config.precision, device)
    notes.extend(plan.notes)
    torch.manual_seed(seed)
    setup = workload.build(params, config, str(device), seed)
    notes.extend(setup.notes)
    if config.activation_checkpointing:
        notes.extend(enable_activation_checkpointing(setup))
    setup.model.train()
    optimizer = build_optimizer(
        setup.model, learning_rate=config.learning_rate, weight_decay=config.weight_decay, device=device
    )
    train_model = torch.compile(setup.model) if config.compile else setup.model
    scaler = plan.make_grad_scaler(config.loss_scale, config.loss_scale_growth_interval)
    generator = torch.Generator(device=device).manual_seed(seed)

    def next_batch() -> Any:
        with record_function(BATCH_MARKER):
            return setup.make_batch(config.micro_batch_size, generator)

    def one_step() -> float:
        began = device_clock(device)
        with record_function(STEP_MARKER):
            loss = accumulate_gradients(
                train_model, setup.loss_fn, next_batch, config.gradient_accumulation_steps, plan, scaler
            )
            # The runner's host reads, as the runner does them: the loss before the step,
            # or (loss scaling) loss and scale together after it.
            if scaler is None:
                float(loss)
            with record_function(OPTIMIZER_MARKER):
                apply_optimizer_step(optimizer, scaler, loss if scaler is not None else None)
        return device_clock(device) - began

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.reset_peak_memory_stats(device)
    step_times: list[float] = []
    with plan.matmul_mode():
        for _ in range(warmup_steps):
            one_step()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step_times.append(one_step())
    analysis_started = time.perf_counter()
    report.update(summarise_events(prof.events(), top_k=top_k))
    report["launch_overhead"] = analyse_trace(_trace_events(prof), step_marker=STEP_MARKER)
    items_per_step = config.micro_batch_size * config.gradient_accumulation_steps * setup.items_per_sample
    mean_step = statistics.fmean(step_times)
    report.update(
        {
            "item_unit": workload.item_unit,
            "items_per_step": items_per_step,
            "step_time_s": {"mean": mean_step, "min": min(step_times), "max": max(step_times)},
            # Under the profiler: its per-op bookkeeping slows small ops, so this is a
            # lower bound of what an unprofiled trial reaches.
            "items_per_s_profiled": items_per_step / mean_step if mean_step > 0 else None,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "analysis_s": time.perf_counter() - analysis_started,
        }
    )
    notes.append("step times include profiler overhead; use a trial for throughput")


def _trace_events(prof: Any) -> list[dict[str, Any]]:
    """The kineto trace's events (timestamps, correlation ids) that FunctionEvents lack."""
    with tempfile.TemporaryDirectory(prefix="tuner-trace-") as folder:
        path = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents") or []
    return [e for e in events if isinstance(e, dict)]


def format_launch_overhead(analysis: dict[str, Any] | None) -> list[str]:
    """The launch/dispatch lines of `tuner profile`'s table."""
    lines: list[str] = []
    cpu = (analysis or {}).get("cpu_dispatch")
    if cpu:
        per_call = cpu.get("metadata_op_us_per_call")
        lines.append(
            f"CPU dispatch: {cpu['dispatch_share'] * 100:.1f}% of operator time is framework time "
            f"({cpu['dispatch_us'] / 1e3:.2f} of {cpu['op_time_us'] / 1e3:.2f} ms, "
            f"{cpu['dispatch_us_per_op']:.1f} us per op over {cpu['op_calls']} calls"
            + (f"; a metadata-only call costs {per_call:.1f} us" if per_call is not None else "")
            + ")"
        )
    gpu = (analysis or {}).get("gpu_launch")
    if gpu:
        latency = gpu.get("launch_latency_us")
        if latency:
            lines.append(
                f"kernel launch latency: mean {latency['mean']:.1f} us, p50 {latency['p50']:.1f}, "
                f"p90 {latency['p90']:.1f}, max {latency['max']:.1f} ({gpu['kernels']} kernels)"
            )
        lines.append(
            f"GPU idle between kernels: {gpu['idle_share'] * 100:.1f}% of {gpu['steps']} step windows "
            f"({gpu['idle_us'] / 1e3:.2f} of {gpu['step_window_us'] / 1e3:.2f} ms, {gpu['gaps']} gaps)"
        )
        for gap in gpu.get("largest_gaps", [])[:3]:
            lines.append(
                f"  gap {gap['gap_us']:.1f} us in step {gap['step']}: after {gap['after'][:50]} "
                f"before {gap['before'][:50]}"
            )
    return lines


def format_profile(report: dict[str, Any], top: int | None = None) -> str:
    """The readable table `tuner profile` prints."""
    lines = [
        f"workload {report['workload']}  device {report['device']}  torch {report['torch']}  "
        f"steps {report['steps']} (+{report['warmup_steps']} warm-up)",
        "config: " + ", ".join(f"{k}={v}" for k, v in report["config"].items()),
        "params: " + (", ".join(f"{k}={v}" for k, v in report["params"].items()) or "(defaults)"),
    ]
    if report.get("status") != "ok":
        lines.append(f"status: {report.get('status')} — {report.get('reason')}")
        return "\n".join(lines)
    step = report["step_time_s"]
    lines.append(
        f"step time {step['mean'] * 1e3:.1f} ms (min {step['min'] * 1e3:.1f}, max {step['max'] * 1e3:.1f}); "
        f"{report['items_per_step']} {report['item_unit']}/step; "
        f"{report['items_per_s_profiled']:.1f} {report['item_unit']}/s under the profiler"
    )
    if report.get("peak_memory_bytes"):
        lines.append(f"peak memory {report['peak_memory_bytes'] / 2**30:.2f} GiB")
    for key, title in (("cpu", "CPU"), ("cuda", "GPU")):
        section = report.get(key)
        if not section:
            continue
        lines.append("")
        shares = "  ".join(
            f"{c} {s * 100:.1f}%" for c, s in section["categories"].items() if s > 0 or c == "matmul"
        )
        lines.append(f"{title} time {section['total_self_time_us'] / 1e3:.1f} ms by category: {shares}")
        lines.append(f"  {'share':>6}  {'self ms':>9}  {'calls':>6}  {'category':<13} name")
        rows = section["hotspots"] if top is None else section["hotspots"][:top]
        for row in rows:
            name = row["name"] if len(row["name"]) <= 90 else row["name"][:87] + "..."
            lines.append(
                f"  {row['share'] * 100:5.1f}%  {row['self_time_us'] / 1e3:9.3f}  {row['calls']:6d}  "
                f"{row['category']:<13} {name}"
            )
    launch_lines = format_launch_overhead(report.get("launch_overhead"))
    if launch_lines:
        lines.append("")
        lines.extend(launch_lines)
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)

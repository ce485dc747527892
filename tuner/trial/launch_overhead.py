"""Launch latency, GPU idle gaps and CPU dispatch overhead from a profiler trace.

Pure functions over the events of a kineto trace (`prof.export_chrome_trace(...)`'s
"traceEvents": dicts with `cat`, `name`, `ts` and `dur` in microseconds, `pid`, `tid`,
`args`), so a recorded or hand-written trace gives the same answer as a live profile.

GPU (`gpu_launch_and_idle`; None when the trace has no kernels):

- **launch latency** of a kernel = its start on the device minus the start of the
  CPU-side launch call (`cat` "cuda_runtime"/"cuda_driver", e.g. `cudaLaunchKernel`,
  `cuLaunchKernel`, `cudaGraphLaunch`) with the same `args.correlation`. It includes the
  launch call itself and any wait behind earlier work on the stream: a large latency means
  the CPU runs ahead of the GPU (GPU-bound, good); a small latency with idle gaps means
  the GPU waits for the CPU (launch-bound). `launch_call_us` is the CPU time of the call.
- **idle gaps** of a step = device time between the start of the step's first kernel and
  the end of its last kernel during which no kernel runs on any stream of that device
  (kernels only: memcpy/memset time counts as idle, since no SM works then). A kernel
  belongs to the step whose `train_step` annotation (on the CPU) encloses its launch
  call; without such annotations the whole trace is one step. `idle_share` = sum of idle
  time / sum of step windows; `largest_gaps` lists the longest gaps with the kernels
  around them.

CPU (`cpu_dispatch_overhead`): the framework time of the recorded operator calls outside
the compute they wrap. Per thread, operator events (`cat` "cpu_op": aten ops, autograd
nodes) nest by time. An operator is *metadata-only* when it does no arithmetic and
copies no data (views, `empty`, `detach`…: `METADATA_OPS`). An operator's self time is
*compute* when it is not metadata-only and its self time is at least the time of its
children that are not metadata-only: the arithmetic runs in it (`aten::mm`, or
`aten::addmm`, whose bias `copy_` child is small). Otherwise the operator is a wrapper
(`aten::linear` around `aten::addmm`, `AddmmBackward0`, the autograd engine's
`evaluate_function`) and its self time is the framework's. Then

- `op_time_us` = time covered by outermost operators;
- `compute_us` = the compute self times (where the CPU kernels run);
- `dispatch_us` = `op_time_us - compute_us`: the self time of wrappers and of
  metadata-only operators (dispatcher, autograd, argument checks, output allocation);
- `dispatch_share` = `dispatch_us / op_time_us`; `dispatch_us_per_op` =
  `dispatch_us / op_calls` (all recorded operator calls);
- `top_operators`: the operators with the most dispatch time (their self time when it
  is not compute);
- `metadata_op_us_per_call`: the mean self time of a metadata-only call, a direct
  reading of what one trip through the dispatcher costs.

A compute operator's own dispatch cost (before its kernel starts) is in its self time,
so `dispatch_us` is a lower bound; Python time between operators is in no operator and
so in neither figure. On a GPU the compute operators' self time is their launch work
(the kernels run on the device), so there the figures split CPU time into framework
time and launching.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "METADATA_OPS",
    "analyse_trace",
    "cpu_dispatch_overhead",
    "gpu_launch_and_idle",
]

#: Operators that only create tensor metadata (no arithmetic, no data copy): as leaves
#: their whole time is framework overhead.
METADATA_OPS = frozenset(
    {
        "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::as_strided", "aten::empty",
        "aten::empty_strided", "aten::empty_like", "aten::t", "aten::transpose", "aten::permute",
        "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
        "aten::detach", "aten::detach_", "aten::alias", "aten::lift_fresh", "aten::resolve_conj",
        "aten::resolve_neg", "aten::unflatten", "aten::flatten", "aten::split", "aten::chunk",
        "aten::narrow", "aten::numpy_T", "aten::expand_as", "aten::view_as", "aten::unbind",
        "aten::split_with_sizes", "aten::result_type", "aten::is_nonzero", "aten::resize_",
        "aten::set_", "aten::_reshape_alias", "aten::to", "aten::contiguous", "detach",
    }
)  # fmt: skip

_LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
_LAUNCH_NAME_PARTS = ("LaunchKernel", "LaunchCooperativeKernel", "GraphLaunch")
_KERNEL_CATEGORY = "kernel"
#: how many of the longest gaps the report lists
LARGEST_GAPS = 5
#: a child may start/end this many microseconds outside its parent (rounded timestamps)
_NEST_SLACK_US = 0.01


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass
class _Op:
    name: str
    start: float
    end: float
    children_us: float = 0.0
    work_children_us: float = 0.0  # children that are not metadata-only


def _complete_events(events: Iterable[Mapping[str, Any]], category: str) -> list[Mapping[str, Any]]:
    return [
        e
        for e in events
        if e.get("cat") == category
        and e.get("ph", "X") == "X"
        and _number(e.get("ts")) is not None
        and _number(e.get("dur")) is not None
    ]


def cpu_dispatch_overhead(events: Iterable[Mapping[str, Any]], top_k: int = 10) -> dict[str, Any] | None:
    """Framework (dispatch) time vs leaf compute time of the CPU operators; see the module
    docstring for the definitions. None when the trace has no operator events."""
    ops = _complete_events(events, "cpu_op")
    if not ops:
        return None
    by_thread: dict[tuple[Any, Any], list[_Op]] = defaultdict(list)
    for e in ops:
        start = float(e["ts"])
        by_thread[(e.get("pid"), e.get("tid"))].append(
            _Op(str(e.get("name", "")), start, start + float(e["dur"]))
        )
    op_time = compute = 0.0
    dispatch_by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # name -> [us, calls]
    calls = metadata_calls = 0
    metadata_us = 0.0
    for thread_ops in by_thread.values():
        thread_ops.sort(key=lambda o: (o.start, -o.end))
        stack: list[_Op] = []
        finished: list[_Op] = []
        outer_end = float("-inf")
        for op in thread_ops:
            # Pop what ended before `op`, and what `op` is not inside (a malformed overlap:
            # treated as a sibling, so no time is counted twice).
            while stack and (
                op.start >= stack[-1].end - _NEST_SLACK_US or op.end > stack[-1].end + _NEST_SLACK_US
            ):
                finished.append(stack.pop())
            if stack:
                stack[-1].children_us += op.end - op.start
                if op.name not in METADATA_OPS:
                    stack[-1].work_children_us += op.end - op.start
            else:
                op_time += max(0.0, op.end - max(op.start, outer_end))
                outer_end = max(outer_end, op.end)
            stack.append(op)
        finished.extend(stack)
        for op in finished:
            calls += 1
            self_us = max(0.0, (op.end - op.start) - op.children_us)
            if op.name in METADATA_OPS:
                metadata_us += self_us
                metadata_calls += 1
            elif self_us >= op.work_children_us:
                compute += self_us
                continue
            row = dispatch_by_name[op.name]
            row[0] += self_us
            row[1] += 1
    dispatch = max(0.0, op_time - compute)
    ranked = sorted(dispatch_by_name.items(), key=lambda kv: -kv[1][0])[:top_k]
    return {
        "op_calls": calls,
        "op_time_us": op_time,
        "compute_us": compute,
        "dispatch_us": dispatch,
        "dispatch_share": dispatch / op_time if op_time > 0 else 0.0,
        "dispatch_us_per_op": dispatch / calls if calls else 0.0,
        "metadata_op_calls": metadata_calls,
        "metadata_op_us_per_call": metadata_us / metadata_calls if metadata_calls else None,
        "top_operators": [
            {
                "name": name,
                "dispatch_us": us,
                "calls": int(n),
                "share": us / dispatch if dispatch > 0 else 0.0,
            }
            for name, (us, n) in ranked
        ],
    }


def _is_launch(event: Mapping[str, Any]) -> bool:
    name = str(event.get("name", ""))
    return any(part in name for part in _LAUNCH_NAME_PARTS)


def _correlation(event: Mapping[str, Any]) -> Any:
    args = event.get("args")
    return args.get("correlation") if isinstance(args, Mapping) else None


def _stats(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "mean": statistics.fmean(ordered),
        "p50": statistics.median(ordered),
        "p90": quantile(0.9),
        "max": ordered[-1],
    }


def _steps(events: Sequence[Mapping[str, Any]], marker: str) -> list[tuple[float, float]]:
    windows = [
        (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        for e in _complete_events(events, "user_annotation")
        if e.get("name") == marker
    ]
    return sorted(windows)


def gpu_launch_and_idle(
    events: Iterable[Mapping[str, Any]], step_marker: str = "train_step"
) -> dict[str, Any] | None:
    """Kernel launch latency and idle gaps between kernels; see the module docstring.

    None when the trace has no kernels (a CPU-only profile).
    """
    events = list(events)
    kernels = _complete_events(events, _KERNEL_CATEGORY)
    if not kernels:
        return None
    launches = {
        _correlation(e): e
        for category in _LAUNCH_CATEGORIES
        for e in _complete_events(events, category)
        if _is_launch(e) and _correlation(e) is not None
    }
    latencies: list[float] = []
    call_us: list[float] = []
    steps = _steps(events, step_marker)
    # (device, step index) -> kernels; step -1: launch not found or outside every step
    grouped: dict[tuple[Any, int], list[tuple[float, float, str]]] = defaultdict(list)
    for kernel in kernels:
        start = float(kernel["ts"])
        interval = (start, start + float(kernel["dur"]), str(kernel.get("name", "")))
        launch = launches.get(_correlation(kernel))
        step = 0 if not steps else -1
        if launch is not None:
            launched = float(launch["ts"])
            latencies.append(start - launched)
            call_us.append(float(launch["dur"]))
            if steps:
                step = next((i for i, (a, b) in enumerate(steps) if a <= launched <= b), -1)
        args = kernel.get("args")
        device = args.get("device") if isinstance(args, Mapping) else None
        grouped[(device, step)].append(interval)
    window_total = idle_total = 0.0
    gaps: list[dict[str, Any]] = []
    step_count = 0
    for (device, step), intervals in sorted(grouped.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if step < 0:
            continue  # a kernel of no step (e.g. launched between steps) defines no window
        step_count += 1
        intervals.sort()
        window_start, busy_end, last_name = intervals[0][0], intervals[0][1], intervals[0][2]
        for start, end, name in intervals[1:]:
            if start > busy_end:
                gaps.append(
                    {
                        "step": step,
                        "device": device,
                        "gap_us": start - busy_end,
                        "after": last_name,
                        "before": name,
                    }
                )
                idle_total += start - busy_end
            if end >= busy_end:
                busy_end, last_name = end, name
        window_total += busy_end - window_start
    gaps.sort(key=lambda g: -g["gap_us"])
    unmatched = len(kernels) - len(latencies)
    report: dict[str, Any] = {
        "kernels": len(kernels),
        "kernels_without_launch": unmatched,
        "launch_latency_us": _stats(latencies) if latencies else None,
        "launch_call_us": _stats(call_us) if call_us else None,
        "steps": step_count,
        "step_window_us": window_total,
        "idle_us": idle_total,
        "idle_share": idle_total / window_total if window_total > 0 else 0.0,
        "gaps": len(gaps),
        "largest_gaps": gaps[:LARGEST_GAPS],
    }
    return report


def analyse_trace(events: Iterable[Mapping[str, Any]], step_marker: str = "train_step") -> dict[str, Any]:
    """Both analyses of one trace: {"cpu_dispatch": ..., "gpu_launch": ... or None}."""
    events = list(events)
    return {
        "cpu_dispatch": cpu_dispatch_overhead(events),
        "gpu_launch": gpu_launch_and_idle(events, step_marker),
    }

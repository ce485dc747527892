"""Launch latency, GPU idle gaps and CPU dispatch overhead from profiler traces.

The GPU figures come from a hand-written kineto-style trace whose answers are worked out
below by hand; the CPU figures from a hand-written trace and from real CPU profiles.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from tuner.trial.launch_overhead import analyse_trace, cpu_dispatch_overhead, gpu_launch_and_idle
from tuner.trial.profiler import format_launch_overhead


def _x(cat: str, name: str, ts: float, dur: float, **args: Any) -> dict[str, Any]:
    return {
        "ph": "X",
        "cat": cat,
        "name": name,
        "pid": 1,
        "tid": args.pop("tid", 1),
        "ts": ts,
        "dur": dur,
        "args": args,
    }


def _launch(
    corr: int, ts: float, dur: float, name: str = "cudaLaunchKernel", cat: str = "cuda_runtime"
) -> dict[str, Any]:
    return _x(cat, name, ts, dur, correlation=corr)


def _kernel(corr: int, name: str, ts: float, dur: float, stream: int = 7) -> dict[str, Any]:
    return {**_x("kernel", name, ts, dur, correlation=corr, device=0, stream=stream), "tid": stream, "pid": 0}


# Step 1 (CPU annotation 0..1000): kernels A 50-150, B 150-200, C 320-350 and D 330-370 on
# two streams (overlapping), E 410-420 (launched through the driver API). Window 50..420
# = 370 us; gaps 200->320 (120 us) and 370->410 (40 us): idle 160 us.
# Step 2 (2000..2500): F 2100-2150, G 2200-2300 and a memcpy 2160-2180 (no kernel, so
# idle): window 200 us, gap 50 us.
# A kernel with no launch event (correlation 99) at 5000 belongs to no step.
GPU_TRACE: list[dict[str, Any]] = [
    _x("user_annotation", "train_step", 0, 1000),
    _launch(1, 10, 5), _kernel(1, "A_gemm", 50, 100),
    _launch(2, 20, 5), _kernel(2, "B_elementwise", 150, 50),
    _launch(3, 300, 8), _kernel(3, "C_gemm", 320, 30),
    _launch(4, 310, 4), _kernel(4, "D_other_stream", 330, 40, stream=9),
    _launch(5, 400, 6, name="cuLaunchKernel", cat="cuda_driver"), _kernel(5, "E_triton", 410, 10),
    _x("user_annotation", "train_step", 2000, 500),
    _launch(6, 2010, 5), _kernel(6, "F", 2100, 50),
    _launch(7, 2020, 5), _kernel(7, "G", 2200, 100),
    _launch(8, 2030, 3, name="cudaMemcpyAsync"), {**_x("gpu_memcpy", "Memcpy HtoD", 2160, 20, correlation=8), "pid": 0},
    _kernel(99, "orphan", 5000, 10),
]  # fmt: skip


def test_gpu_launch_latency_matches_the_hand_computed_values() -> None:
    gpu = gpu_launch_and_idle(GPU_TRACE)
    assert gpu is not None
    assert gpu["kernels"] == 8 and gpu["kernels_without_launch"] == 1
    # latencies: A 40, B 130, C 20, D 20, E 10, F 90, G 180 -> sorted 10 20 20 40 90 130 180
    latency = gpu["launch_latency_us"]
    assert latency["mean"] == pytest.approx(490 / 7)
    assert latency["p50"] == 40 and latency["p90"] == 180 and latency["max"] == 180
    assert gpu["launch_call_us"]["max"] == 8 and gpu["launch_call_us"]["p50"] == 5


def test_gpu_idle_gaps_match_the_hand_computed_values() -> None:
    gpu = gpu_launch_and_idle(GPU_TRACE)
    assert gpu is not None
    assert gpu["steps"] == 2
    assert gpu["step_window_us"] == pytest.approx(370 + 200)
    assert gpu["idle_us"] == pytest.approx(120 + 40 + 50)
    assert gpu["idle_share"] == pytest.approx(210 / 570)
    assert gpu["gaps"] == 3
    assert [g["gap_us"] for g in gpu["largest_gaps"]] == [120, 50, 40]
    first = gpu["largest_gaps"][0]
    assert (first["step"], first["after"], first["before"]) == (0, "B_elementwise", "C_gemm")
    # D (other stream) ends last before E: the 40 us gap is after D, not after C
    assert gpu["largest_gaps"][2]["after"] == "D_other_stream"


def test_without_step_annotations_the_trace_is_one_step() -> None:
    trace = [e for e in GPU_TRACE if e["cat"] != "user_annotation"]
    gpu = gpu_launch_and_idle(trace)
    assert gpu is not None and gpu["steps"] == 1
    # one window from A (50) to the orphan kernel's end (5010); every hole between is idle
    busy = 100 + 50 + 50 + 10 + 50 + 100 + 10  # A B C..D(330-370 merged with C: 320-370) E F G orphan
    assert gpu["step_window_us"] == pytest.approx(5010 - 50)
    assert gpu["idle_us"] == pytest.approx(5010 - 50 - busy)


def test_a_cpu_trace_has_no_gpu_section() -> None:
    assert gpu_launch_and_idle([_x("cpu_op", "aten::mm", 0, 10)]) is None
    assert cpu_dispatch_overhead([]) is None


# Thread 1: aten::linear 0-100 holds aten::t 2-6 (metadata) and aten::addmm 10-95, which
# holds aten::expand 11-12 (metadata), aten::copy_ 12-20 and aten::resolve_conj 20-21
# (metadata). addmm's self time 75 >= its non-metadata child (copy_, 8): compute 75;
# copy_ is a leaf: compute 8; linear's self time 11 < its non-metadata child (85): dispatch.
# Thread 2: aten::relu 0-50, a leaf: compute 50.
CPU_TRACE: list[dict[str, Any]] = [
    _x("cpu_op", "aten::linear", 0, 100), _x("cpu_op", "aten::t", 2, 4),
    _x("cpu_op", "aten::addmm", 10, 85), _x("cpu_op", "aten::expand", 11, 1),
    _x("cpu_op", "aten::copy_", 12, 8), _x("cpu_op", "aten::resolve_conj", 20, 1),
    _x("cpu_op", "aten::relu", 0, 50, tid=2),
    _x("user_annotation", "train_step", 0, 100),  # not an operator
]  # fmt: skip


def test_cpu_dispatch_overhead_matches_the_hand_computed_values() -> None:
    cpu = cpu_dispatch_overhead(CPU_TRACE)
    assert cpu is not None
    assert cpu["op_calls"] == 7
    assert cpu["op_time_us"] == pytest.approx(150)
    assert cpu["compute_us"] == pytest.approx(75 + 8 + 50)
    assert cpu["dispatch_us"] == pytest.approx(11 + 4 + 1 + 1)
    assert cpu["dispatch_share"] == pytest.approx(17 / 150)
    assert cpu["dispatch_us_per_op"] == pytest.approx(17 / 7)
    assert cpu["metadata_op_calls"] == 3 and cpu["metadata_op_us_per_call"] == pytest.approx(2.0)
    top = {row["name"]: row for row in cpu["top_operators"]}
    assert top["aten::linear"]["dispatch_us"] == pytest.approx(11)
    assert "aten::addmm" not in top and "aten::relu" not in top


def _real_trace(body: Any, steps: int = 3) -> list[dict[str, Any]]:
    body()  # warm up outside the profiler
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("train_step"):
                body()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.json"
        prof.export_chrome_trace(str(path))
        return json.loads(path.read_text())["traceEvents"]


def test_real_cpu_profile_many_tiny_ops_are_dispatch_bound_one_big_matmul_is_not() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small = torch.randn(4, 4)
        big = torch.randn(384, 384)

        def tiny_ops() -> None:
            x = small
            for _ in range(200):
                x = x.view(16).unsqueeze(0).squeeze(0).view(4, 4) + 1

        def one_matmul() -> None:
            torch.mm(big, big)

        tiny = analyse_trace(_real_trace(tiny_ops))
        heavy = analyse_trace(_real_trace(one_matmul))
    finally:
        torch.set_num_threads(before)
    assert tiny["gpu_launch"] is None and heavy["gpu_launch"] is None
    tiny_cpu, heavy_cpu = tiny["cpu_dispatch"], heavy["cpu_dispatch"]
    assert tiny_cpu["op_calls"] >= 3 * 200 * 5  # view, unsqueeze, squeeze, view, add per iteration
    assert tiny_cpu["compute_us"] + tiny_cpu["dispatch_us"] == pytest.approx(tiny_cpu["op_time_us"])
    assert tiny_cpu["metadata_op_us_per_call"] > 0
    # Views cost as much as the 16-element adds: most operator time is the framework's.
    assert tiny_cpu["dispatch_share"] > 0.3
    assert heavy_cpu["dispatch_share"] < 0.1
    assert tiny_cpu["dispatch_share"] > 5 * heavy_cpu["dispatch_share"]


def test_format_lines_state_both_sections() -> None:
    lines = format_launch_overhead(analyse_trace(GPU_TRACE + [e for e in CPU_TRACE if e["cat"] == "cpu_op"]))
    text = "\n".join(lines)
    assert "CPU dispatch: 11.3% of operator time" in text
    assert "kernel launch latency: mean 70.0 us, p50 40.0" in text
    assert "GPU idle between kernels: 36.8% of 2 step windows" in text
    assert "gap 120.0 us in step 0: after B_elementwise before C_gemm" in text
    assert format_launch_overhead(None) == []

"""Measured compute and memory ceilings for `tuner probe --measure`.

Datasheet peaks are marketing-clock numbers; what a training step can reach is what a
large matmul and a large copy reach on this very device. GPU: bf16, tf32 and fp32
8192^3 matmuls and a device-to-device copy that counts read+write bytes (how the shared
H200 figures were taken: 771 / 396 / 51 TFLOP/s, 4.26 TB/s). CPU: a small fp32 matmul
and a copy larger than the caches. Results use the raw readings keys of probe.json so
they flow through `profile_from_raw_readings` unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from tuner.errors import TunerError
from tuner.trial.device import synchronize
from tuner.trial.precision import precision_plan


class MeasureError(TunerError):
    """The ceilings cannot be measured here (e.g. torch sees no CUDA device)."""


def _seconds_per_call(fn: Callable[[], object], device: torch.device, target_s: float) -> float:
    """Mean seconds of `fn` after warm-up, repeating it until about `target_s` passed.

    A first timed call sizes the loop so that slow CPUs and fast GPUs both get a stable
    mean without a fixed iteration count that is too long for one and too short for the
    other.
    """
    for _ in range(2):
        fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    one = max(time.perf_counter() - start, 1e-6)
    iterations = max(3, min(200, int(target_s / one)))
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iterations


def matmul_tflops(
    size: int, dtype: torch.dtype, device: torch.device, target_s: float, precision: str = "fp32"
) -> float:
    """Dense matmul rate (2·n³ FLOPs per product) under the TF32 mode of `precision`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    with precision_plan(precision, device).matmul_mode():
        seconds = _seconds_per_call(lambda: torch.matmul(a, b, out=out), device, target_s)
    return 2 * size**3 / seconds / 1e12


def copy_tbps(nbytes: int, device: torch.device, target_s: float) -> float:
    """Copy rate in TB/s counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = _seconds_per_call(lambda: dst.copy_(src), device, target_s)
    return 2 * src.numel() * 4 / seconds / 1e12


def measure_gpu_peaks(
    device_index: int = 0, size: int = 8192, copy_bytes: int = 1 << 30, target_s: float = 0.3
) -> dict[str, Any]:
    """bf16/tf32/fp32 matmul TFLOP/s and copy TB/s of one GPU, in readings keys."""
    if not torch.cuda.is_available():
        raise MeasureError(
            f"torch {torch.__version__} sees no CUDA device (a CPU-only build, or the driver is "
            "unusable from torch); install a CUDA build of torch to measure"
        )
    device = torch.device("cuda", device_index)
    started = time.perf_counter()
    props = torch.cuda.get_device_properties(device)
    with torch.cuda.device(device):
        result: dict[str, Any] = {
            "torch": torch.__version__,
            "device": "cuda",
            # Which GPU this is: torch's cuda:N need not be NVML's GPU N (the profile
            # attributes the peaks by this UUID).
            "measured_gpu_uuid": str(getattr(props, "uuid", "")) or None,
            "torch_props": {
                "name": props.name,
                "total_memory": props.total_memory,
                "sm": props.multi_processor_count,
                "cc": [props.major, props.minor],
            },
            "matmul_bf16_tflops": matmul_tflops(size, torch.bfloat16, device, target_s),
            "matmul_tf32_tflops": matmul_tflops(size, torch.float32, device, target_s, precision="tf32"),
            "matmul_fp32_tflops": matmul_tflops(size, torch.float32, device, target_s, precision="fp32"),
            "copy_TBps_rw": copy_tbps(copy_bytes, device, target_s),
        }
        torch.cuda.empty_cache()
    result["measure_s"] = time.perf_counter() - started
    return result


def measure_cpu_peaks(size: int = 1024, copy_bytes: int = 64 << 20, target_s: float = 0.2) -> dict[str, Any]:
    """fp32 matmul TFLOP/s and memory copy TB/s of the CPU with torch's thread count.

    64 MiB buffers exceed the L3 that one process's cores mostly hit (32 MiB per EPYC
    CCD; most Xeons have less in all), so the copy mostly measures DRAM.
    """
    device = torch.device("cpu")
    return {
        "matmul_fp32_tflops": matmul_tflops(size, torch.float32, device, target_s),
        "matmul_size": size,
        "copy_TBps_rw": copy_tbps(copy_bytes, device, target_s),
        "threads": torch.get_num_threads(),
    }

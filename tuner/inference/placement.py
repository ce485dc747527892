"""Where a served model runs: its device, and on a GPU the stream and copies around it.

Requests arrive in host memory and the workloads' `forward` collates them there (as a real
server's request handler does), so on a GPU the served module is wrapped in `OnDevice`:
every tensor argument is copied to the device (float ones in the serving dtype) inside
the timed forward, and the copy is part of each request's latency. Each instance gets its
own CUDA stream (Triton's instance groups run concurrently the same way). The answer is
copied back to host memory, as a server's response is; that copy, and the stream's
synchronisation after it (`PreparedModel.running`), make a forward return only when the
GPU's work is done, so the batcher's clock, which stops after the forward returns, times
the GPU and not how fast Python queued kernels. On the CPU, where an instance runs is its
intra-op thread count (`intra_op_threads`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def serving_device(device: str) -> torch.device:
    """The torch device a serving trial asked for: "auto" is the current GPU when CUDA is
    available, else the CPU; "cuda"/"cuda:N" must exist (`tuner.trial.device.resolve_device`)."""
    from tuner.trial.device import resolve_device

    return resolve_device(device)


def _to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and dtype != torch.float32:
            return value.to(device=device, dtype=dtype)
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device, dtype) for k, v in value.items()}
    return value


def _to_host(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to("cpu")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    return value


class OnDevice(nn.Module):
    """`inner` served on `device`: tensor arguments are moved there first (float ones cast
    to `dtype`), so a workload's host-side collate works unchanged on a GPU; the outputs
    come back to the host (the response), so the accuracy guard compares on the CPU."""

    def __init__(self, inner: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.device = device
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args = _to_device(args, self.device, self.dtype)
        kwargs = _to_device(kwargs, self.device, self.dtype)
        return _to_host(self.inner(*args, **kwargs))


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op CPU threads on this thread (0: leave torch's
    default), restored after."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(before)


def new_stream(device: torch.device) -> Any:
    """A CUDA stream of its own for one instance; None on the CPU."""
    return torch.cuda.Stream(device=device) if device.type == "cuda" else None


def device_total_memory(device: torch.device) -> int | None:
    """Bytes of memory on a GPU (None on the CPU: the process's RSS has no fixed ceiling here)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def cuda_bf16_supported(device: str) -> bool:
    """Whether the GPU `device` ("cuda" or "cuda:N") has bf16 kernels (Ampere and later)."""
    with torch.cuda.device(torch.device(device)):
        return bool(torch.cuda.is_bf16_supported())

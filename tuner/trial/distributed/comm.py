"""How much of a step is spent communicating, measured with torch.profiler on one step.

Hooks on DDP buckets would only see stages 0-1, and host timestamps do not see NCCL
(its work is asynchronous on a CUDA stream), so one profiled step measures every stage
the same way:

- CUDA: the union of the device intervals of NCCL kernels;
- CPU (gloo): the union of the host intervals of the collectives' profiler events
  (`gloo:all_reduce`, `gloo:all_gather`, … span from launch until the gloo thread
  finishes the work) and of the `c10d::` ops (which cover the collectives gloo runs
  synchronously, such as FSDP's reduce-scatter).

The union, not the sum, is taken because buckets are in flight concurrently. The share
counts overlapped communication too: it says how busy the interconnect is during a step,
not how much of it is exposed. The profiled step runs with the profiler's per-op
overhead, so the share is slightly low; it is a warm-up step, excluded from throughput.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

_HOST_MARKERS = ("gloo:", "nccl:", "c10d::")


@dataclass
class CommMeasurement:
    comm_s: float = 0.0
    step_s: float = 0.0
    collectives: int = 0

    @property
    def share(self) -> float | None:
        if self.step_s <= 0:
            return None
        return min(1.0, self.comm_s / self.step_s)


@contextlib.contextmanager
def profiled_communication(device: torch.device) -> Iterator[CommMeasurement]:
    """Profile the enclosed step; fills `comm_s` and `collectives` on exit (set `step_s`)."""
    measurement = CommMeasurement()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        yield measurement
    intervals = _communication_intervals(prof, cuda=device.type == "cuda")
    measurement.collectives = len(intervals)
    measurement.comm_s = union_length(intervals) / 1e6


def _communication_intervals(prof: profile, *, cuda: bool) -> list[tuple[float, float]]:
    intervals: list[tuple[float, float]] = []
    for event in prof.events():
        name = event.name.lower()
        on_device = event.device_type != torch.autograd.DeviceType.CPU
        if cuda:
            # Host-side NCCL events only cover the launch; the kernels are the transfer.
            keep = on_device and "nccl" in name
        else:
            keep = not on_device and name.startswith(_HOST_MARKERS)
        if keep:
            intervals.append((float(event.time_range.start), float(event.time_range.end)))
    return intervals


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping or nested intervals."""
    total = 0.0
    current_start: float | None = None
    current_end = 0.0
    for start, end in sorted(intervals):
        if current_start is None or start > current_end:
            if current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_start is not None:
        total += current_end - current_start
    return total

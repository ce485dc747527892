"""Peak memory of one trial: the CUDA allocator's peak, or the process's peak RSS on CPU.

On CUDA we reset the allocator's peak counter at the start and read
`max_memory_allocated` at the end: tensor memory only, the figure the memory model
predicts. On CPU the closest honest figure is the process's resident-set high-water mark:
Linux lets a process reset it (write "5" to /proc/self/clear_refs) and read it back
(VmHWM in /proc/self/status). Where that is not allowed we fall back to
`getrusage(RUSAGE_SELF).ru_maxrss`, which is the peak since the process started and may
include earlier trials; the notes say so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

CUDA_ALLOCATOR = "cuda_allocator"
PROCESS_RSS = "process_rss"

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


class MemoryMeter:
    """Measures the peak memory between `start()` and `peak_bytes()`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = CUDA_ALLOCATOR if device.type == "cuda" else PROCESS_RSS
        self.notes: list[str] = []
        self._rss_reset = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")
            self._rss_reset = _read_vm_hwm() is not None
        except OSError:
            self._rss_reset = False
        if not self._rss_reset:
            self.notes.append(
                "peak memory is the process's peak RSS since it started (the high-water mark could not be reset)"
            )

    def peak_bytes(self) -> int | None:
        """The peak so far; safe to call after an out-of-memory error."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._rss_reset:
            hwm = _read_vm_hwm()
            if hwm is not None:
                return hwm
        return _rusage_peak_bytes()


def _read_vm_hwm() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                value, unit = line.split()[1:3]
                return int(value) * {"kB": 1024, "mB": 1024**2, "gB": 1024**3}.get(unit, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rusage_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024

"""Step timing with warm-up exclusion and a wall-clock budget.

The first steps of a trial pay one-off costs (CUDA context and kernel selection, the
allocator growing its pools, torch.compile tracing), so they are timed but kept out of
the throughput. An inference trial reuses this for its warm-up and timed iterations.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class StepTimer:
    """Collects per-step seconds; the first `warmup_steps` are not counted as timed."""

    warmup_steps: int
    max_seconds: float | None = None
    step_seconds: list[float] = field(default_factory=list)
    #: this process's CPU seconds (all threads, user + system) when each step was recorded
    cpu_marks: list[float] = field(default_factory=list)

    def record(self, seconds: float) -> None:
        self.step_seconds.append(seconds)
        self.cpu_marks.append(time.process_time())

    @property
    def cpu_s_per_step(self) -> float | None:
        """CPU seconds this process used per timed step (all its threads: intra-op, comm),
        from the end of the warm-up to the last step; None without warm-up or timed steps.

        Beside the wall time per step it tells a loaded machine from a slow config: on a
        busy host the wall time grows while the CPU a step needs stays the same, and
        threads that spin waiting (OpenMP, a collective) show up as CPU above the wall time.
        """
        if self.warmup_steps < 1 or len(self.cpu_marks) <= self.warmup_steps:
            return None
        timed = len(self.cpu_marks) - self.warmup_steps
        return (self.cpu_marks[-1] - self.cpu_marks[self.warmup_steps - 1]) / timed

    @property
    def timed_seconds(self) -> list[float]:
        return self.step_seconds[self.warmup_steps :]

    @property
    def timed_steps(self) -> int:
        return len(self.timed_seconds)

    @property
    def warmup_steps_run(self) -> int:
        return min(self.warmup_steps, len(self.step_seconds))

    @property
    def mean_step_s(self) -> float | None:
        timed = self.timed_seconds
        return statistics.fmean(timed) if timed else None

    @property
    def first_step_s(self) -> float | None:
        return self.step_seconds[0] if self.step_seconds else None

    def budget_spent(self) -> bool:
        """Whether the timed steps used up `max_seconds` (never before one timed step)."""
        if self.max_seconds is None or not self.timed_seconds:
            return False
        return sum(self.timed_seconds) >= self.max_seconds

    def warmup_overhead_s(self) -> float | None:
        """How much longer the warm-up steps took than steady-state steps would have.

        With torch.compile this is essentially the compile time.
        """
        mean = self.mean_step_s
        warm = self.step_seconds[: self.warmup_steps]
        if mean is None or not warm:
            return None
        return max(0.0, sum(warm) - mean * len(warm))

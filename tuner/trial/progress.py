"""What a trial has measured so far, turned into a `TrialResult` at any exit.

The loop fills it in as it goes, so an out-of-memory error, a divergence or a pruning
decision still returns the steps, losses and peak memory reached before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuner.trial.timing import StepTimer
from tuner.types import TrialResult, TrialStatus

if TYPE_CHECKING:
    from tuner.trial.memory_meter import MemoryMeter


@dataclass
class TrialProgress:
    item_unit: str
    timer: StepTimer
    items_per_step: int = 0
    steps_run: int = 0
    loss_curve: list[float] = field(default_factory=list)
    lr_trace: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    final_loss_scale: float | None = None
    val_loss: float | None = None
    val_curve: list[tuple[float, float, float | None]] = field(default_factory=list)
    val_metrics: dict[str, float] = field(default_factory=dict)
    flops_per_item: float | None = None
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def items_per_s(self) -> float | None:
        mean = self.timer.mean_step_s
        if mean is None or mean <= 0 or self.items_per_step <= 0:
            return None
        return self.items_per_step / mean

    def finish(
        self,
        status: TrialStatus,
        meter: MemoryMeter,
        *,
        started: float,
        reason: str | None = None,
        peak_flops: float | None = None,
    ) -> TrialResult:
        """The result at any exit of a training loop: the meter's notes and peak included."""
        for note in meter.notes:
            self.note(note)
        return self.to_result(
            status,
            reason=reason,
            peak_memory_bytes=meter.peak_bytes(),
            memory_kind=meter.kind,
            duration_s=time.perf_counter() - started,
            peak_flops=peak_flops,
        )

    def to_result(
        self,
        status: TrialStatus,
        *,
        reason: str | None = None,
        peak_memory_bytes: int | None = None,
        memory_kind: str | None = None,
        duration_s: float | None = None,
        peak_flops: float | None = None,
    ) -> TrialResult:
        items_per_s = self.items_per_s()
        metrics = dict(self.metrics)
        if self.items_per_step:
            metrics["items_per_optimizer_step"] = float(self.items_per_step)
        first = self.timer.first_step_s
        if first is not None:
            metrics["first_step_s"] = first
        cpu = self.timer.cpu_s_per_step
        if cpu is not None:
            metrics["cpu_s_per_step"] = cpu
        mfu = None
        if items_per_s is not None and self.flops_per_item:
            achieved = items_per_s * self.flops_per_item
            metrics["achieved_tflops"] = achieved / 1e12
            if peak_flops:
                mfu = achieved / peak_flops
        return TrialResult(
            status=status,
            items_per_s=items_per_s,
            item_unit=self.item_unit,
            step_time_s=self.timer.mean_step_s,
            timed_steps=self.timer.timed_steps,
            warmup_steps=self.timer.warmup_steps_run,
            steps_run=self.steps_run,
            peak_memory_bytes=peak_memory_bytes,
            memory_kind=memory_kind,
            mfu=mfu,
            loss_curve=tuple(self.loss_curve),
            val_loss=self.val_loss,
            val_curve=tuple(self.val_curve),
            val_metrics=dict(self.val_metrics),
            skipped_steps=self.skipped_steps,
            final_loss_scale=self.final_loss_scale,
            lr_trace=tuple(self.lr_trace),
            reason=reason,
            notes=tuple(self.notes),
            duration_s=duration_s,
            metrics=metrics,
        )

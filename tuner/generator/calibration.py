"""Calibrating the analytic memory model with measured peaks.

With every knob but the micro batch fixed, peak memory is close to linear in the micro
batch (weights and optimizer state are the intercept, activations the slope). So measured
peaks of one *memory group* (same activation storage width, checkpointing, compile,
world size, sharding, accumulation) correct the prediction for every other micro batch
of that group:

- one ok measurement: keep the analytic slope, move the line through the measurement;
- two or more: least-squares line through the measurements;
- an out-of-memory measurement: that micro batch and every larger one in the group do
  not fit, whatever the line says;
- a group with no measurement yet: the analytic number, scaled up (never down) by how
  much the analytic model underestimated the groups that were measured.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.generator.memory_model import SIXTEEN_BIT, MemoryEstimate, estimate_peak, usable_memory_bytes
from tuner.types import TrialConfig

if TYPE_CHECKING:
    from tuner.hardware.profile import HardwareProfile

#: Knobs that do not change what a step allocates (optimizer hyper-parameters, fp16 loss
#: scaling, DDP communication tuning that only reorders the same buckets).
MEMORY_NEUTRAL_KNOBS = frozenset(
    {
        "micro_batch_size",
        "learning_rate",
        "warmup_ratio",
        "weight_decay",
        "loss_scale",
        "loss_scale_growth_interval",
        "bucket_cap_mb",
        "grad_compression",
    }
)


def memory_group(config: TrialConfig) -> tuple[tuple[str, Any], ...]:
    """The calibration group of a config: every memory-relevant knob but the micro batch.

    bf16 and fp16 store activations alike, as do fp32 and tf32, so each pair shares a group.
    """
    values = config.to_dict()
    key = []
    for name in sorted(values):
        if name in MEMORY_NEUTRAL_KNOBS:
            continue
        value = values[name]
        if name == "precision":
            value = "16-bit" if value in SIXTEEN_BIT else "32-bit"
        if name == "gradient_accumulation_steps":
            value = value > 1  # accumulation keeps gradients alive; how many steps does not matter
        key.append((name, value))
    return tuple(key)


@dataclass
class _Group:
    points: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (micro batch, peak bytes)
    smallest_oom: int | None = None
    largest_ok: int | None = None


class MemoryModel:
    """The analytic model of one workload shape, corrected by measured trials."""

    def __init__(
        self,
        shape: Mapping[str, Any],
        *,
        workload: str,
        hardware: HardwareProfile | None = None,
        limit_bytes: int | None = None,
    ) -> None:
        self.shape = dict(shape)
        self.workload = workload
        self.hardware = hardware
        self.limit_bytes = limit_bytes if limit_bytes is not None else usable_memory_bytes(hardware)
        self._groups: dict[tuple[tuple[str, Any], ...], _Group] = {}
        self._ratios: list[float] = []  # measured / analytic, over every ok measurement

    def analytic(self, config: TrialConfig | Mapping[str, Any]) -> MemoryEstimate:
        est = estimate_peak(self.shape, config, workload=self.workload, hardware=self.hardware)
        return est.with_fit(self.limit_bytes)

    def observe(self, config: TrialConfig | Mapping[str, Any], peak_bytes: int | None, status: str) -> None:
        """Learn from one measured trial. `status` is the trial's status (ok, oom, …)."""
        cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))
        group = self._groups.setdefault(memory_group(cfg), _Group())
        mb = cfg.micro_batch_size
        status = getattr(status, "value", status)
        if status == "oom":
            group.smallest_oom = mb if group.smallest_oom is None else min(group.smallest_oom, mb)
            return
        if status != "ok" or not peak_bytes:
            return  # a failed or pruned trial says nothing about memory
        group.points = [p for p in group.points if p[0] != mb] + [(mb, int(peak_bytes))]
        group.largest_ok = mb if group.largest_ok is None else max(group.largest_ok, mb)
        self._ratios.append(peak_bytes / self.analytic(cfg).peak_bytes)

    def measured(self, config: TrialConfig) -> bool:
        """Whether an ok measurement of `config`'s memory group calibrates its predictions."""
        group = self._groups.get(memory_group(config))
        return bool(group and group.points)

    @property
    def observations(self) -> int:
        return sum(len(g.points) for g in self._groups.values())

    def estimate(self, config: TrialConfig | Mapping[str, Any]) -> MemoryEstimate:
        """The best prediction for `config`: calibrated when its group was measured."""
        cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))
        analytic = self.analytic(cfg)
        group = self._groups.get(memory_group(cfg))
        mb = cfg.micro_batch_size
        notes = list(analytic.assumptions)
        peak = float(analytic.peak_bytes)
        calibrated = False
        if group and group.points:
            calibrated = True
            if len(group.points) == 1:
                (mb0, peak0), = group.points
                base = self.analytic(cfg.replace(micro_batch_size=mb0)).peak_bytes
                peak = peak0 + (analytic.peak_bytes - base)
                notes.append(f"calibrated: analytic slope through the measured peak at micro batch {mb0}")
            else:
                intercept, slope = _least_squares(group.points)
                peak = intercept + slope * mb
                notes.append(f"calibrated: line through {len(group.points)} measured peaks of this group")
        elif self._ratios and max(self._ratios) > 1.0:
            scale = statistics.median(self._ratios)
            if scale > 1.0:
                peak *= scale
                calibrated = True
                notes.append(f"scaled x{scale:.3f}: the analytic model underestimated the measured groups")
        estimate = dataclasses.replace(
            analytic,
            peak_bytes=round(peak),
            calibrated=calibrated,
            analytic_bytes=analytic.peak_bytes if calibrated else None,
            assumptions=tuple(notes),
        ).with_fit(self.limit_bytes)
        if group and group.smallest_oom is not None and mb >= group.smallest_oom:
            notes.append(f"micro batch {group.smallest_oom} of this group ran out of memory when measured")
            return dataclasses.replace(estimate, fits=False, assumptions=tuple(notes))
        if group and group.largest_ok is not None and mb <= group.largest_ok and estimate.limit_bytes:
            # A larger micro batch of the same group ran, so this one fits too.
            return dataclasses.replace(estimate, fits=True)
        return estimate


def _least_squares(points: list[tuple[int, int]]) -> tuple[float, float]:
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    slope = max(slope, 0.0)  # memory never shrinks with a larger batch; noise can say otherwise
    return my - slope * mx, slope

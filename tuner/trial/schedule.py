"""The learning-rate schedule every training trial uses: linear warmup, then cosine to 0.

Pure arithmetic (no torch), so the schedule can be checked and plotted anywhere.

With `T = max_steps` optimizer steps and `W = round(warmup_ratio * T)` warmup steps, the
LR of optimizer step `s` (0-based) is

    s <  W:  peak * (s + 1) / W                          (first step is not wasted at 0)
    s >= W:  peak * 0.5 * (1 + cos(pi * (s - W) / (T - W)))

so the first post-warmup step runs at the peak and the LR would reach 0 at step `T`,
one past the last step. `warmup_ratio = 0` is a cosine decay from the first step.
"""

from __future__ import annotations

import math


def warmup_steps_for(warmup_ratio: float, max_steps: int) -> int:
    """How many of `max_steps` optimizer steps warm the LR up linearly."""
    return min(max_steps, round(warmup_ratio * max_steps))


def lr_at(step: int, *, peak_lr: float, max_steps: int, warmup_ratio: float) -> float:
    """The learning rate of optimizer step `step` (0-based)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = warmup_steps_for(warmup_ratio, max_steps)
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    decay_steps = max_steps - warmup
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup) / decay_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at_fraction(fraction: float, *, peak_lr: float, warmup_ratio: float) -> float:
    """The learning rate once `fraction` (0..1) of a time budget is spent: the same warmup
    + cosine shape as `lr_at`, spanning seconds instead of steps, so a config trained for
    a fixed time ends its schedule when its time ends, however fast its steps are."""
    fraction = min(1.0, max(0.0, fraction))
    if warmup_ratio > 0 and fraction < warmup_ratio:
        # never exactly 0: the first step of a warmup is not wasted (as in lr_at)
        return peak_lr * max(fraction / warmup_ratio, 1e-3)
    decay = 1.0 - warmup_ratio
    progress = 1.0 if decay <= 0 else min(1.0, (fraction - warmup_ratio) / decay)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

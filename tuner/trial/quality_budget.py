"""A training run under a quality budget: items or training seconds, fixed validation
checkpoints, the LR schedule spanning the budget, and an early stop at a target loss.

Pure bookkeeping (no torch): the runner asks it which LR a step gets, records each
step's seconds, and asks whether a validation checkpoint is due or the budget is spent.

- **Equal data** (`budget.max_items`): every config trains the same items (tokens for
  the gpt workload, samples for recsys); its steps are `ceil(max_items / items per
  optimizer step)` and `lr_at` spans exactly those steps, so a config with a 4x larger
  effective batch runs 4x fewer steps and still ends its cosine at the end of the data.
- **Equal time** (`budget.max_train_seconds`): every config trains for the same seconds
  of optimizer steps (evaluation excluded); the LR follows `lr_at_fraction` of the time
  spent, so a config whose steps are twice as fast decays over twice as many of them.
- **Checkpoints** (`budget.eval_every_items`): the validation loss after every that many
  items, the same item counts for every config, so the pruner compares trials at equal
  data (step `k` of a report is the k-th checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tuner.trial.schedule import lr_at, lr_at_fraction
from tuner.types import TrialBudget

__all__ = ["BudgetRun"]

#: The step loop's bound when only seconds limit a run (the time ends it long before).
_UNBOUNDED_STEPS = 10**9


@dataclass
class BudgetRun:
    budget: TrialBudget
    items_per_step: int  # items of one optimizer step (global batch x items per sample)
    peak_lr: float
    warmup_ratio: float
    items: int = 0
    train_seconds: float = 0.0
    checkpoints_done: int = 0
    curve: list[tuple[float, float, float | None]] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        """How many optimizer steps the loop may run."""
        if self.budget.max_items is not None:
            return max(1, math.ceil(self.budget.max_items / max(1, self.items_per_step)))
        if self.budget.max_train_seconds is not None:
            return _UNBOUNDED_STEPS
        return self.budget.max_steps

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        if self.budget.max_items is not None or self.budget.max_train_seconds is None:
            return lr_at(step, peak_lr=self.peak_lr, max_steps=self.total_steps, warmup_ratio=self.warmup_ratio)
        return lr_at_fraction(
            self.train_seconds / self.budget.max_train_seconds, peak_lr=self.peak_lr, warmup_ratio=self.warmup_ratio
        )

    def advance(self, seconds: float) -> None:
        """One optimizer step took `seconds`."""
        self.items += self.items_per_step
        self.train_seconds += seconds

    def checkpoint_due(self) -> bool:
        every = self.budget.eval_every_items
        return every is not None and self.items >= (self.checkpoints_done + 1) * every

    def record(self, val_loss: float | None) -> int:
        """Record a checkpoint's validation loss at the current items; returns its index
        (1-based), the step the pruner sees. Several checkpoints passed in one large step
        count as one, at the last of them, so indices stay items // eval_every_items."""
        every = self.budget.eval_every_items
        self.checkpoints_done = self.items // every if every else self.checkpoints_done + 1
        self.curve.append((float(self.items), self.train_seconds, val_loss))
        return self.checkpoints_done

    def spent(self) -> bool:
        """Whether the items or the training seconds of the budget are used up."""
        if self.budget.max_items is not None and self.items >= self.budget.max_items:
            return True
        return self.budget.max_train_seconds is not None and self.train_seconds >= self.budget.max_train_seconds

    def reached_target(self, val_loss: float | None) -> bool:
        target = self.budget.target_val_loss
        return target is not None and val_loss is not None and math.isfinite(val_loss) and val_loss <= target

    @property
    def last_items(self) -> float | None:
        return self.curve[-1][0] if self.curve else None

"""Studies that tune for quality at equal data or equal time, or for time to a target.

Objectives (entries of `tuner.study.spec.OBJECTIVES`):

- `quality_at_budget` (minimize): the validation loss after the budget — `max_items`
  (equal data) or `max_train_seconds` (equal time) — with the warmup + cosine schedule
  spanning that budget (`tuner.trial.quality_budget`).
- `time_to_target` (minimize): training seconds until the validation loss, measured at
  the fixed checkpoints `eval_every_items`, reaches `budget.target_val_loss`; without
  one, the target is the default config's (the baseline's) validation loss after its
  budget. Trials that do not get there are ranked by a censored estimate, never dropped
  (`tuner.trial.target`).
- `auc` (maximize, recsys) and `perplexity` (minimize, gpt): the workload's task metric
  on its held-out data after the budget.

**Learning rate and batch size.** A larger effective batch takes fewer, less noisy
steps through the same data; with the learning rate unchanged it learns less per item,
so comparing batch sizes at one LR would favour the default's batch. In a study with a
quality budget whose space does not tune `learning_rate`, each config's LR is the
reference LR scaled by the square root of its effective batch over the reference's
(`sqrt_scaled_lr`; the rule for Adam-family optimizers, Malladi et al. 2022, "On the
SDEs and Scaling Rules for Adaptive Gradient Algorithms"). When the space tunes
`learning_rate`, the sampled value is used as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tuner.errors import FieldProblem
from tuner.space.params import FixedParam
from tuner.trial.target import target_metrics
from tuner.types import TrialBudget, TrialConfig, TrialResult

if TYPE_CHECKING:
    from tuner.space.search_space import SearchSpace

__all__ = [
    "BUDGET_OBJECTIVES",
    "QUALITY_BUDGET_OBJECTIVES",
    "TASK_METRIC_OBJECTIVES",
    "BudgetPlan",
    "budget_problems",
    "sqrt_scaled_lr",
]

#: Objectives measured after a quality budget (items or training seconds).
BUDGET_OBJECTIVES: frozenset[str] = frozenset({"quality_at_budget", "time_to_target"})
#: Objectives read from the workload's task metrics (`TrialResult.val_metrics`).
TASK_METRIC_OBJECTIVES: frozenset[str] = frozenset({"auc", "perplexity"})
#: Every objective added here; all of them measure quality (no knob is held for them).
QUALITY_BUDGET_OBJECTIVES: frozenset[str] = BUDGET_OBJECTIVES | TASK_METRIC_OBJECTIVES


def budget_problems(objectives: Sequence[str], budget: TrialBudget) -> list[FieldProblem]:
    """What a study's budget lacks for its objectives (empty when nothing)."""
    problems: list[FieldProblem] = []
    needs_budget = [o for o in objectives if o in BUDGET_OBJECTIVES]
    if needs_budget and not budget.quality_budget:
        problems.append(
            FieldProblem(
                "budget.max_items",
                None,
                f"is needed by the objective {needs_budget[0]}, which compares configs at equal data or equal time",
                "give budget.max_items (items: tokens or samples) or budget.max_train_seconds",
            )
        )
    if "time_to_target" in objectives and budget.eval_every_items is None:
        problems.append(
            FieldProblem(
                "budget.eval_every_items",
                None,
                "is needed by the objective time_to_target: the validation loss is measured at these checkpoints",
                "give budget.eval_every_items, e.g. a tenth of max_items",
            )
        )
    return problems


def sqrt_scaled_lr(config: TrialConfig, reference: TrialConfig) -> TrialConfig:
    """`config` with the reference LR scaled by sqrt(effective batch / reference's)."""
    ratio = config.global_batch_size / reference.global_batch_size
    return config.replace(learning_rate=reference.learning_rate * math.sqrt(ratio))


@dataclass(frozen=True)
class BudgetPlan:
    """What a study with a quality budget does to each config and each trial's budget."""

    objectives: tuple[str, ...]
    reference: TrialConfig  # the baseline config (workload default with the space's fixed values)
    scale_lr: bool  # the batch-size LR rule applies (quality budget, learning_rate not tuned)
    target: float | None = None  # the validation loss time_to_target aims at

    @classmethod
    def for_study(
        cls, objectives: Sequence[str], budget: TrialBudget, reference: TrialConfig, space: SearchSpace
    ) -> BudgetPlan:
        tuned = "learning_rate" in space and not isinstance(space.get("learning_rate"), FixedParam)
        return cls(tuple(objectives), reference, budget.quality_budget and not tuned, budget.target_val_loss)

    @property
    def wants_target(self) -> bool:
        return "time_to_target" in self.objectives

    def configure(self, config: TrialConfig) -> TrialConfig:
        """The config a trial trains: the LR rule applied when it is on."""
        if not self.scale_lr or config.global_batch_size == self.reference.global_batch_size:
            return config
        return sqrt_scaled_lr(config, self.reference)

    def trial_budget(self, budget: TrialBudget) -> TrialBudget:
        """A trial's budget: stops at the target once one is known."""
        if not self.wants_target or self.target is None:
            return budget
        return replace(budget, target_val_loss=self.target)

    def with_target_from(self, baseline: TrialResult | None) -> BudgetPlan:
        """The plan with its target: the given one, or the baseline's final validation loss."""
        if not self.wants_target or self.target is not None or baseline is None or not baseline.ok:
            return self
        loss = baseline.val_loss
        if loss is None or not math.isfinite(loss):
            return self
        return replace(self, target=float(loss))

    def scored_baseline(self, baseline: TrialResult) -> TrialResult:
        """The baseline with its time to the target, read from its own curve."""
        if self.target is None or not baseline.val_curve or "time_to_target" in baseline.val_metrics:
            return baseline
        metrics = {**baseline.val_metrics, **target_metrics(baseline.val_curve, self.target)}
        return replace(baseline, val_metrics=metrics)

    def pruner_value(self, direction: str, value: float) -> float:
        """What the pruner gets for a checkpoint's validation loss: the loss itself, negated
        for a maximized objective (auc), so "better" points the study's way."""
        return -value if direction == "maximize" else value

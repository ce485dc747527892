"""Quality-safe throughput studies: what a "fastest" config may change, and when it is no
longer the same training.

A throughput study ranks configs by items/s. Some knobs raise items/s by changing what is
learned instead of how fast: a shorter sequence makes each token cheaper (a different
task), a larger effective batch gives fewer updates per token with the same learning rate,
and the learning rate, warmup and weight decay change the optimisation itself. So:

1. **Held knobs** (`hold_quality_knobs`): in a study whose objectives include no quality
   objective (val_loss), the knobs of `tuner.knobs.QUALITY_KNOBS` keep the baseline's
   values (the workload's default config with the space's fixed values) unless the space
   frees them (`free_knobs: [...]` or `free_knobs: all`; CLI `--free-knobs`). Holding the
   effective batch keeps micro_batch_size tunable: the sampler only proposes micro batches
   that divide the held product, and gradient_accumulation_steps is derived from the
   sampled micro batch (and world size), never sampled. Deriving it (instead of sampling
   both and rejecting mismatches) means every proposal is a valid config and the sampler
   learns over one dimension that matters; only when world_size is also sampled can a
   (micro batch, world size) pair not divide the product, and that proposal is recorded
   `infeasible` (never launched, not counted) like a config predicted not to fit.
2. **Divergence guard** (`quality_problem`): a trial that trained but diverged is recorded
   `failed` with a reason starting "quality:" (status `failed`, Optuna FAIL: no new status
   for the readers to learn, and every reader of "best" already skips failed trials), so
   it is never the best or the recommended config. Diverged means: a non-finite loss at
   the end of training, more than `MAX_SKIPPED_SHARE` of the optimizer steps skipped by
   the fp16 loss scaler, or a final training loss more than `LOSS_MARGIN` above the
   baseline's at equal tokens.

Equal tokens: with the sequence length and the effective batch held, every optimizer step
of every config consumes the same tokens, and every trial runs the same budget, so the
losses are compared at the last optimizer step both curves reached (a `max_seconds`
budget may stop one earlier). When the effective batch is freed, each side is cut at the
step where its tokens reach the smaller of the two totals; when the sequence length
differs the losses are per-token losses of different tasks and the margin is not checked
(NaN and skipped steps still are). "Final loss" is the mean training loss over the last
`TAIL_STEPS` steps up to that point (of the side with fewer tokens per step; the other
side averages over the same tokens): one step's loss is one batch's, a noisy number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.space.params import FixedParam, ParamSpec
from tuner.study.quality_budget import QUALITY_BUDGET_OBJECTIVES
from tuner.types import TrialConfig, TrialResult

if TYPE_CHECKING:
    from tuner.space.search_space import SearchSpace

__all__ = [
    "LOSS_MARGIN",
    "MAX_SKIPPED_SHARE",
    "QUALITY_OBJECTIVES",
    "QUALITY_PREFIX",
    "TAIL_STEPS",
    "QualityHold",
    "hold_quality_knobs",
    "quality_problem",
    "reference_config",
]

#: Objectives that measure what is learned: a study with one of them guards quality itself.
QUALITY_OBJECTIVES: frozenset[str] = frozenset({"val_loss"}) | QUALITY_BUDGET_OBJECTIVES
#: A trial whose final training loss is above the baseline's by more than this share (at
#: equal tokens) is not the same training made faster. Configs that only change how the
#: same math runs (micro batch split, precision, checkpointing) land within ~1% of the
#: baseline on the tiny GPT (identical to 3 decimals on CPU); a diverging learning rate or
#: an fp16 scaler that skips every step lands 20% and more above it.
LOSS_MARGIN = 0.10
#: More than this share of optimizer steps skipped by the fp16 GradScaler (overflowing
#: gradients) is a trial that mostly did not train; a few skips while the scale calibrates
#: at the start are normal.
MAX_SKIPPED_SHARE = 0.25
#: Training losses averaged into the "final loss" compared with the baseline's.
TAIL_STEPS = 3
#: Every reason the guard gives starts with this, so readers can tell a quality failure.
QUALITY_PREFIX = "quality: "

_SCALAR_KNOBS = ("max_sequence_length", "learning_rate", "warmup_ratio", "weight_decay")
_BATCH = "micro_batch_size"
_ACCUMULATION = "gradient_accumulation_steps"
_WORLD = "world_size"


# -- holding knobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityHold:
    """The space a study samples once quality knobs are held, and how configs are completed."""

    space: SearchSpace
    #: the held micro batch x accumulation x world size; None when the product is free
    effective_batch: int | None = None
    #: the accumulation values a derived one must be in; None: any integer >= 1
    accumulation: ParamSpec | None = None
    held: tuple[str, ...] = ()  # names from QUALITY_KNOBS that are held
    reasoning: tuple[str, ...] = ()

    def apply(self, config: TrialConfig) -> TrialConfig | str:
        """`config` with gradient_accumulation_steps derived from the held effective batch,
        or why no accumulation keeps the product (to record the proposal infeasible)."""
        if self.effective_batch is None:
            return config
        per_step = config.micro_batch_size * config.world_size
        accumulation, rest = divmod(self.effective_batch, per_step)
        if rest or accumulation < 1 or (self.accumulation is not None and not self.accumulation.contains(accumulation)):
            return (
                f"micro batch {config.micro_batch_size} x world size {config.world_size} cannot keep the held "
                f"effective batch {self.effective_batch} with an accumulation "
                + (f"in {self.accumulation.domain_text()}" if self.accumulation is not None else ">= 1")
            )
        return config.replace(gradient_accumulation_steps=accumulation)

    def derive(self, config: TrialConfig) -> TrialConfig:
        """`apply` for predictions (the memory model): an impossible config is left as it is."""
        applied = self.apply(config)
        return applied if isinstance(applied, TrialConfig) else config


def reference_config(default: TrialConfig, space: SearchSpace) -> TrialConfig:
    """The values held knobs keep: the workload's `default` config with `space`'s fixed
    values (what the study's baseline runs; `tuner.study.loop.baseline_config`)."""
    return space.to_config(space.default_values(default), default)


def guards_quality(objectives: Sequence[str]) -> bool:
    """Whether a study with `objectives` holds quality knobs and guards against divergence:
    only when no objective measures quality itself. A user objective (`val_acc:max`,
    tuner.study.objectives) is the user's own measure of what a trial achieved, so it is
    trusted as one: nothing is held for it."""
    return not any(o in QUALITY_OBJECTIVES or ":" in o for o in objectives)


def hold_quality_knobs(
    space: SearchSpace, objectives: Sequence[str], reference: TrialConfig, *, learns: bool = True
) -> QualityHold:
    """`space` with the quality knobs it does not free held at `reference`'s values.

    `reference` is the study's baseline config (the workload's default with the space's
    fixed values). Nothing is held when an objective measures quality or the workload
    trains nothing (`learns` False: a replayed table). Raises ValidationError naming the
    field, the value and the fix when a held value is outside what the space allows.
    """
    if not learns or not guards_quality(objectives):
        return QualityHold(space)
    freed = space.freed
    problems: list[FieldProblem] = []
    held: list[str] = []
    reasoning: list[str] = []
    for name in _SCALAR_KNOBS:
        if name in freed or name not in space:
            continue
        param = space.get(name)
        if isinstance(param, FixedParam):
            continue  # the user fixed it; the baseline uses the same value
        value = getattr(reference, name)
        if not param.contains(value):
            problems.append(
                FieldProblem(
                    param.field,
                    param.to_dict(),
                    f"does not allow the default {name} {value!r}, which a throughput study holds "
                    "(it changes what the model learns)",
                    f"include {value!r} in the range, fix {name} to a value, or free it: free_knobs: [{name}]",
                    space.source,
                )
            )
            continue
        space = space.with_fixed(name, value)
        held.append(name)
        reasoning.append(f"held {name} at the default {value!r} (the space offered {param.domain_text()})")
    hold_batch = "effective_batch" not in freed and any(
        n in space and not isinstance(space.get(n), FixedParam) for n in (_BATCH, _ACCUMULATION, _WORLD)
    )
    effective: int | None = None
    accumulation: ParamSpec | None = None
    if hold_batch:
        space, effective, accumulation, line = _hold_effective_batch(space, reference, problems)
        if line:
            held.append("effective_batch")
            reasoning.append(line)
    if problems:
        raise ValidationError(problems)
    if held:
        reasoning.insert(
            0,
            "held for quality: a throughput study ranks by items/s only, so the knobs that change what is "
            "learned keep the default config's values (free them with free_knobs in the space, --free-knobs, "
            "or add the val_loss objective)",
        )
    return QualityHold(space, effective, accumulation, tuple(held), tuple(reasoning))


def _values_of(space: SearchSpace, name: str, reference: TrialConfig) -> tuple[list[int], ParamSpec | None]:
    if name not in space:
        return [int(getattr(reference, name))], None
    param = space.get(name)
    values = param.finite_values() or ()
    return sorted({int(v) for v in values}), param


def _hold_effective_batch(
    space: SearchSpace, reference: TrialConfig, problems: list[FieldProblem]
) -> tuple[SearchSpace, int | None, ParamSpec | None, str | None]:
    target = reference.global_batch_size
    batches, batch_param = _values_of(space, _BATCH, reference)
    worlds, _ = _values_of(space, _WORLD, reference)
    accumulation: ParamSpec | None = None
    if _ACCUMULATION in space:
        accumulation = space.get(_ACCUMULATION)

    def fits(mb: int) -> bool:
        for world in worlds:
            steps, rest = divmod(target, mb * world)
            if not rest and steps >= 1 and (accumulation is None or accumulation.contains(steps)):
                return True
        return False

    kept = [mb for mb in batches if fits(mb)]
    if not kept:
        field = batch_param.field if batch_param is not None else f"params.{_ACCUMULATION}"
        shown = batch_param.to_dict() if batch_param is not None else (accumulation.to_dict() if accumulation else None)
        problems.append(
            FieldProblem(
                field,
                shown,
                f"has no micro batch that keeps the default effective batch {target} (micro batch x accumulation "
                f"x world size), which a throughput study holds",
                f"include a divisor of {target} (e.g. {reference.micro_batch_size}) and accumulations up to "
                f"{target}, or free it: free_knobs: [effective_batch]",
                space.source,
            )
        )
        return space, None, None, None
    if batch_param is not None and not isinstance(batch_param, FixedParam) and len(kept) < len(batches):
        space = space.with_fixed(_BATCH, kept[0]) if len(kept) == 1 else space.restrict(_BATCH, choices=kept)
    if accumulation is not None and not isinstance(accumulation, FixedParam):
        space = space.without(_ACCUMULATION)  # derived from the micro batch, never sampled
    line = (
        f"held the effective batch at the default {target} (micro batch x accumulation x world size): "
        f"micro batch {', '.join(str(mb) for mb in kept)}, accumulation derived from it"
    )
    return space, target, accumulation, line


# -- the divergence guard -------------------------------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _tail(curve: Sequence[float | None], end: int, steps: int) -> float | None:
    window = list(curve[max(0, end - steps) : end])
    if not window or not all(_finite(v) for v in window):
        return None
    return sum(window) / len(window)  # type: ignore[arg-type]


def _tokens_per_step(config: TrialConfig) -> int:
    return config.global_batch_size * config.max_sequence_length


def diverged(result: TrialResult) -> str | None:
    """Why `result`'s training diverged by its own numbers (no baseline needed), or None."""
    curve = result.loss_curve
    if curve and not _finite(curve[-1]):
        shown = "nan or inf" if curve[-1] is None else curve[-1]  # JSON stores both as null
        return f"{QUALITY_PREFIX}the training loss at the last step was {shown}: diverged"
    steps = result.steps_run or len(curve)
    if steps and result.skipped_steps > MAX_SKIPPED_SHARE * steps:
        return (
            f"{QUALITY_PREFIX}the fp16 loss scaler skipped {result.skipped_steps} of {steps} steps "
            f"(more than {MAX_SKIPPED_SHARE:.0%}): the model mostly did not train"
        )
    return None


def quality_problem(
    result: TrialResult,
    config: TrialConfig,
    baseline: TrialResult | None,
    baseline_config: TrialConfig | None,
) -> str | None:
    """Why a completed trial must not count as a faster config, or None when it may.

    The checks of the module docstring; the margin one needs an ok baseline with a loss
    curve and the same sequence length, and is skipped (not failed) without one.
    """
    why = diverged(result)
    if why or not result.loss_curve:
        return why
    if (
        baseline is None
        or not baseline.ok
        or not baseline.loss_curve
        or baseline_config is None
        or baseline_config.max_sequence_length != config.max_sequence_length
    ):
        return None
    mine_per, theirs_per = _tokens_per_step(config), _tokens_per_step(baseline_config)
    tokens = min(len(result.loss_curve) * mine_per, len(baseline.loss_curve) * theirs_per)
    mine, theirs = max(1, tokens // mine_per), max(1, tokens // theirs_per)
    # The averaged window covers the same tokens too: TAIL_STEPS of the smaller step.
    window = TAIL_STEPS * min(mine_per, theirs_per)
    trial_loss = _tail(result.loss_curve, mine, max(1, window // mine_per))
    base_loss = _tail(baseline.loss_curve, theirs, max(1, window // theirs_per))
    if trial_loss is None or base_loss is None or base_loss <= 0:
        return None
    if trial_loss > base_loss * (1 + LOSS_MARGIN):
        return (
            f"{QUALITY_PREFIX}final training loss {trial_loss:.4f} is {trial_loss / base_loss - 1:.0%} above the "
            f"default config's {base_loss:.4f} at equal tokens (step {mine} vs {theirs}; margin "
            f"{LOSS_MARGIN:.0%}): it trains worse, not just faster"
        )
    return None


def describe_hold(hold: QualityHold) -> dict[str, Any]:
    """The hold as stored with the study (`StudyAttr.QUALITY`)."""
    return {"held": list(hold.held), "effective_batch": hold.effective_batch, "reasoning": list(hold.reasoning)}

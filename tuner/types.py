"""Core value types that cross module and process boundaries.

Frozen dataclasses, never ORM rows or dicts with magic keys. Each has `to_dict` and
`from_dict` so it can travel as JSON (REST, worker pipes, the SQL store).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tuner.errors import ConfigError, FieldProblem
from tuner.knobs import KNOBS, closest_knob, coerce_and_check_fields


class TrialStatus(str, Enum):
    OK = "ok"
    OOM = "oom"
    FAILED = "failed"
    PRUNED = "pruned"
    INFEASIBLE = "infeasible"  # predicted not to fit; never launched


@dataclass(frozen=True)
class TrialConfig:
    """Every knob one training trial applies. Defaults are the 'untuned' baseline."""

    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_sequence_length: int = 128
    precision: str = "fp32"
    loss_scale: float = 65536.0
    loss_scale_growth_interval: int = 2000
    learning_rate: float = 3e-4
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    activation_checkpointing: bool = False
    compile: bool = False
    world_size: int = 1
    sharding_stage: int = 0
    bucket_cap_mb: float = 25.0
    grad_compression: str = "none"
    nccl_algo: str = "default"
    nccl_proto: str = "default"

    def __post_init__(self) -> None:
        problems = coerce_and_check_fields(self, KNOBS)
        if self.sharding_stage > 0 and self.world_size == 1:
            problems.append(
                FieldProblem(
                    "sharding_stage",
                    self.sharding_stage,
                    "sharding needs more than one process",
                    "set world_size > 1 or sharding_stage: 0",
                )
            )
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> TrialConfig:
        """Build a config from knob values; unknown keys are an error that names them."""
        problems = []
        for key in data:
            if key not in KNOBS:
                guess = closest_knob(key)
                fix = f"did you mean {guess!r}?" if guess else "remove it; known knobs: " + ", ".join(KNOBS)
                problems.append(FieldProblem(key, data[key], "is not a knob", fix, source))
        if problems:
            raise ConfigError(problems)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError([dataclasses.replace(p, source=source) for p in exc.problems]) from None

    def to_dict(self) -> dict[str, Any]:
        # Every knob is a scalar, so a shallow dict equals dataclasses.asdict, which
        # deep-copies field by field and was a visible share of each ask's CPU.
        return {name: getattr(self, name) for name in _field_names(TrialConfig)}

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.micro_batch_size * self.gradient_accumulation_steps * self.world_size


@dataclass(frozen=True)
class TrialBudget:
    """How long one trial trains. Steps are optimizer steps."""

    max_steps: int = 20
    warmup_steps: int = 3  # excluded from throughput
    max_seconds: float | None = None  # stop timing early when reached (after warmup)
    eval_batches: int = 4
    report_every: int = 1  # optimizer steps between intermediate reports to the pruner
    # -- quality budgets (tuner.study.quality_budget; docs/search-spaces.md "quality objectives")
    #: train every config on this many items (tokens/samples): the steps are derived from
    #: the config's items per step and the LR schedule spans them (max_steps is not used)
    max_items: int | None = None
    #: train every config for this many seconds of training steps (evaluation excluded),
    #: the LR schedule spanning the time; with max_items too, whichever ends first
    max_train_seconds: float | None = None
    #: evaluate the validation loss every this many items (fixed checkpoints, the same for
    #: every config): the checkpoints go to the pruner and make the learning curve
    eval_every_items: int | None = None
    #: stop at the first checkpoint whose validation loss is at or below this
    target_val_loss: float | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_items", "eval_every_items"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(FieldProblem(name, value, "must be an integer >= 1", f"omit it or give items, e.g. {name}: 65536"))
        for name in ("max_train_seconds", "target_val_loss"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
            ):
                problems.append(FieldProblem(name, value, "must be a finite number > 0", f"omit it or give e.g. {name}: 2.0"))
        if self.max_steps < 1:
            problems.append(FieldProblem("max_steps", self.max_steps, "must be >= 1", "use at least 1 step"))
        if self.max_items is None and not 0 <= self.warmup_steps < self.max_steps:
            problems.append(
                FieldProblem(
                    "warmup_steps",
                    self.warmup_steps,
                    f"must be in [0, max_steps={self.max_steps})",
                    "leave at least one timed step after warm-up",
                )
            )
        if self.max_seconds is not None and self.max_seconds <= 0:
            problems.append(
                FieldProblem("max_seconds", self.max_seconds, "must be > 0", "omit it or give seconds")
            )
        if problems:
            raise ConfigError(problems)

    @property
    def quality_budget(self) -> bool:
        """Whether the budget is in items or training seconds (every config compared at
        equal data or equal time) rather than in optimizer steps."""
        return self.max_items is not None or self.max_train_seconds is not None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in _QUALITY_BUDGET_FIELDS:
            if data[name] is None:
                del data[name]  # stored specs of step budgets stay as they were
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialBudget:
        return cls(**data)


_QUALITY_BUDGET_FIELDS = ("max_items", "max_train_seconds", "eval_every_items", "target_val_loss")


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured. Throughput excludes warm-up steps."""

    status: TrialStatus
    items_per_s: float | None = None  # tokens/s for language models, samples/s otherwise
    item_unit: str = "items"
    step_time_s: float | None = None  # mean seconds per optimizer step over timed steps
    timed_steps: int = 0
    warmup_steps: int = 0
    steps_run: int = 0
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None  # "cuda_allocator" | "process_rss" | "replay_table"
    mfu: float | None = None
    loss_curve: tuple[float, ...] = ()
    val_loss: float | None = None
    skipped_steps: int = 0  # fp16 steps skipped by GradScaler on overflow
    final_loss_scale: float | None = None
    lr_trace: tuple[float, ...] = ()
    reason: str | None = None  # why the status is not ok
    notes: tuple[str, ...] = ()  # e.g. "tf32 is a no-op on CPU"
    duration_s: float | None = None
    predicted_peak_bytes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # extra numbers (comm share, telemetry…)
    telemetry: dict[str, Any] = field(default_factory=dict)
    # True when the trial never ran because the machinery failed (its worker process could
    # not start: an import error, a bad interpreter), not the trial itself. The study loop
    # does not count such a failure as a trial, and stops after a few in a row.
    infrastructure: bool = False
    #: validation checkpoints of a quality budget: (items trained, training seconds,
    #: validation loss) at each fixed checkpoint, the last one at the end of training
    val_curve: tuple[tuple[float, float, float | None], ...] = ()
    #: task metrics on the validation data (gpt `perplexity`, recsys `auc`) and, with a
    #: target, `time_to_target` (tuner.trial.target)
    val_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "val_curve", tuple(tuple(point) for point in self.val_curve))
        if not isinstance(self.status, TrialStatus):
            object.__setattr__(self, "status", TrialStatus(self.status))
        object.__setattr__(self, "loss_curve", tuple(self.loss_curve))
        object.__setattr__(self, "lr_trace", tuple(self.lr_trace))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def ok(self) -> bool:
        return self.status is TrialStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: non-finite floats (an fp16 step whose loss overflowed) become
        None, because strict JSON stores (PostgreSQL json/jsonb) reject NaN and Infinity."""
        # _json_safe copies every nested dict and list, so no asdict deep copy first
        data = _json_safe({name: getattr(self, name) for name in _field_names(TrialResult)})
        data["status"] = self.status.value
        data["loss_curve"] = _json_safe(list(self.loss_curve))
        data["lr_trace"] = _json_safe(list(self.lr_trace))
        data["notes"] = list(self.notes)
        if not self.infrastructure:
            del data["infrastructure"]  # stored results of trials that ran stay as they were
        if not self.val_curve:
            del data["val_curve"]
        if not self.val_metrics:
            del data["val_metrics"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def failed(cls, reason: str, **extra: Any) -> TrialResult:
        return cls(status=TrialStatus.FAILED, reason=reason, **extra)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _json_safe(value: Any) -> Any:
    """A copy of `value` with NaN/inf floats anywhere inside it replaced by None (and
    dataclasses inside it turned into dicts, as dataclasses.asdict would)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe({name: getattr(value, name) for name in _field_names(type(value))})
    return value

"""The pieces of one optimizer step, usable by the single-process and distributed loops.

- `build_optimizer`: AdamW, fused on CUDA, decay only on matrices.
- `accumulate_gradients`: forward+backward over the micro batches of one step.
- `apply_optimizer_step`: the (possibly loss-scaled) optimizer step; reports skips and
  the loss scale with one host sync.
- `validation_loss`: mean loss over held-out batches in eval mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tuner.trial.precision import PrecisionPlan

if TYPE_CHECKING:
    from tuner.trial.progress import TrialProgress

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def build_optimizer(
    model: nn.Module, *, learning_rate: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters.

    Weight decay goes to matrices (linear and embedding weights) only: decaying biases and
    norm gains towards zero hurts quality and is what common LM recipes avoid. The fused
    kernel is one launch for all parameters on CUDA, which matters for small models whose
    step time is dominated by per-parameter launches.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in params if p.dim() >= 2]
    undecayed = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": undecayed, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if device.type == "cuda":
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    return torch.optim.AdamW(groups, lr=learning_rate)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def accumulate_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    next_batch: Callable[[], Any],
    accumulation_steps: int,
    plan: PrecisionPlan,
    scaler: torch.amp.GradScaler | None,
    *,
    first_micro_batch_context: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Forward and backward over `accumulation_steps` micro batches; returns the mean loss.

    Each micro loss is divided by the number of micro batches, so the accumulated
    gradient equals the gradient of the mean loss over all of them (the same as one
    micro batch that many times larger, for losses that are means over equal-size
    batches). The returned loss is detached and unscaled; reading it is left to the
    caller so this function never forces a device sync.
    """
    total = torch.zeros((), device=_device_of(model))
    for index in range(accumulation_steps):
        batch = next_batch()
        context = first_micro_batch_context() if index == 0 and first_micro_batch_context else None
        if context is not None:
            with context:
                loss = _forward(model, loss_fn, batch, plan)
                _backward(loss / accumulation_steps, scaler)
        else:
            loss = _forward(model, loss_fn, batch, plan)
            _backward(loss / accumulation_steps, scaler)
        total += loss.detach().float()
        del loss, batch  # free this micro batch's graph before the next one is built
    return total / accumulation_steps


def _forward(model: nn.Module, loss_fn: LossFn, batch: Any, plan: PrecisionPlan) -> torch.Tensor:
    with plan.autocast():
        return loss_fn(model, batch)


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()


@dataclass(frozen=True)
class StepOutcome:
    """What one optimizer step tells the loop (read from the device in one go)."""

    skipped: bool  # the scaler found inf/nan gradients and skipped the step
    loss_scale: float | None  # the scale after `update()`; None without a scaler
    loss: float | None  # the step's loss, when it was passed in


def _scale_on_device(scaler: torch.amp.GradScaler) -> torch.Tensor | None:
    # `get_scale()` is a host sync (`.item()`); the scale tensor itself is not. The
    # one private GradScaler name the project uses.
    return scaler._get_scale_async()


def apply_optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    loss: torch.Tensor | None = None,
) -> StepOutcome:
    """Step the optimizer and zero the grads; say whether the step was skipped.

    With a GradScaler, a step whose gradients contain inf/nan is skipped and the scale
    backs off; a lower scale after `update()` is the sign of a skip. The scales before
    and after (and `loss`, when given) come back to the host in ONE read: every host
    sync stalls the GPU's queue, and two `get_scale()` calls per step made fp16 steps
    slower than bf16 ones for a reason that is not the precision.
    """
    if scaler is None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(skipped=False, loss_scale=None, loss=None if loss is None else float(loss))
    scale = _scale_on_device(scaler)
    before = scale.detach().clone() if scale is not None else None  # update() changes it in place
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    after = _scale_on_device(scaler)
    if before is None or after is None:  # a disabled scaler has no scale tensor
        return StepOutcome(skipped=False, loss_scale=scaler.get_scale(), loss=None if loss is None else float(loss))
    parts = [before.float().reshape(()), after.float().reshape(())]
    if loss is not None:
        parts.append(loss.detach().float().reshape(()).to(after.device))
    values = torch.stack(parts).tolist()  # the one host sync of the step's bookkeeping
    return StepOutcome(
        skipped=values[1] < values[0],
        loss_scale=values[1],
        loss=values[2] if loss is not None else None,
    )


@torch.no_grad()
def validation_loss(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], plan: PrecisionPlan
) -> float | None:
    """Mean loss over `batches` in eval mode, under the trial's autocast."""
    if not batches:
        return None
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), device=_device_of(model))
        for batch in batches:
            with plan.autocast():
                total += loss_fn(model, batch).detach().float()
        return float(total) / len(batches)
    finally:
        model.train(was_training)


def record_validation(
    progress: TrialProgress,
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    plan: PrecisionPlan,
) -> float | None:
    """Measure the validation loss into `progress` (with its time) and return it; a
    non-finite loss is noted and reported as none. Shared by the single-process and the
    sharded loops."""
    if not batches:
        return None
    began = time.perf_counter()
    value = validation_loss(model, loss_fn, batches, plan)
    progress.metrics["eval_s"] = time.perf_counter() - began
    if value is not None and not math.isfinite(value):
        progress.note(f"validation loss was {value}; reported as none")
        value = None
    progress.val_loss = value
    return value


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")

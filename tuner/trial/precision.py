"""What each `precision` knob value means on a device: autocast, loss scaling, TF32.

- `fp32`: no autocast, TF32 matmuls explicitly off on CUDA (true fp32 accumulation).
- `tf32`: no autocast, TF32 matmuls/convolutions on CUDA; the CPU has no TF32 units, so
  there it is a no-op and the plan's notes say so.
- `bf16`: autocast to bfloat16 (CPU and CUDA); bf16 keeps fp32's exponent range, so no
  loss scaling is needed.
- `fp16`: autocast to float16 plus a `torch.amp.GradScaler` whose initial scale and
  growth interval are knobs; steps whose gradients overflow are skipped by the scaler.

Shared by the training loop and (later) an inference trial, so both mean the same thing
by a precision name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from tuner.errors import FieldProblem, ValidationError
from tuner.knobs import PRECISIONS

_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "tf32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class PrecisionPlan:
    """How to run one precision on one device type ("cpu" or "cuda")."""

    name: str
    device_type: str
    autocast_dtype: torch.dtype | None
    uses_loss_scaling: bool
    notes: tuple[str, ...] = field(default=())

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The autocast context for forward passes (a null context for fp32/tf32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def make_grad_scaler(self, init_scale: float, growth_interval: int) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 with the configured initial scale, else None."""
        if not self.uses_loss_scaling:
            return None
        return torch.amp.GradScaler(self.device_type, init_scale=init_scale, growth_interval=growth_interval)

    @contextlib.contextmanager
    def matmul_mode(self) -> Iterator[None]:
        """Set the TF32 switches this precision needs for the duration, then restore them.

        Process-wide switches: restoring matters because a worker runs many trials in one
        process, and a tf32 trial must not turn the next fp32 trial into a tf32 one.
        """
        if self.device_type != "cuda" or self.name not in ("fp32", "tf32"):
            yield
            return
        want_tf32 = self.name == "tf32"
        # One API per switch: torch >= 2.9 raises when the legacy flags are read after the
        # new per-backend `fp32_precision` flags were set inconsistently (e.g. cuDNN conv
        # but not RNN). `set_float32_matmul_precision` and `cudnn.allow_tf32` each keep
        # the legacy and new views in agreement.
        previous_matmul = torch.get_float32_matmul_precision()
        previous_cudnn = torch.backends.cudnn.allow_tf32
        torch.set_float32_matmul_precision("high" if want_tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = want_tf32
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous_matmul)
            torch.backends.cudnn.allow_tf32 = previous_cudnn


def precision_plan(precision: str, device: torch.device) -> PrecisionPlan:
    """The plan for knob value `precision` on `device`."""
    if precision not in _AUTOCAST_DTYPES:
        raise ValidationError(
            FieldProblem(
                "precision", precision, "is not a known precision", "use one of " + ", ".join(PRECISIONS)
            )
        )
    notes: list[str] = []
    if precision == "tf32" and device.type != "cuda":
        notes.append("tf32 is a no-op on CPU: it has no TF32 matmul units, so this trial ran plain fp32")
    if precision == "fp16" and device.type == "cpu":
        notes.append(
            "fp16 autocast on CPU is emulated and much slower than fp32; timings do not transfer to GPUs"
        )
    override = tf32_override_note(precision, device.type, os.environ)
    if override is not None:
        notes.append(override)
    return PrecisionPlan(
        name=precision,
        device_type=device.type,
        autocast_dtype=_AUTOCAST_DTYPES[precision],
        uses_loss_scaling=precision == "fp16",
        notes=tuple(notes),
    )


def tf32_override_note(precision: str, device_type: str, env: Mapping[str, str]) -> str | None:
    """A note when TORCH_ALLOW_TF32_CUBLAS_OVERRIDE makes this fp32 trial a TF32 one.

    NGC containers set it to 1; cuBLAS then uses TF32 for fp32 matmuls whatever
    `allow_tf32` says, so `matmul_mode()` cannot give fp32 its meaning. The local
    executor's workers unset it; a trial run in a process that has it gets this note.
    """
    value = env.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "").strip()
    if device_type != "cuda" or precision != "fp32" or value in ("", "0"):
        return None
    return (
        f"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE={value} is set in this process, so cuBLAS ran this fp32 "
        "trial's matmuls as TF32; unset it for real fp32 (the local executor's workers do)"
    )

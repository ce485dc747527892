"""Workloads the GPU check registers so its worker processes can report on themselves.

`LocalExecutor` re-registers every workload registered in the parent in its workers (by
"module:qualname"), so importing this module before creating an executor is enough.

- `gpu_check_gpt`: the gpt workload, plus a note at build time with the process-wide TF32
  switches as the *previous* trial left them (build runs before the runner sets this
  trial's switches) and the UUID of the GPU the trial really runs on.
- `gpu_check_assert`: triggers a CUDA device-side assert (an out-of-range index on the
  GPU), the sticky error that leaves a CUDA context unusable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tuner.types import TrialConfig
from tuner.workloads import register_workload
from tuner.workloads.gpt import GPTWorkload

NOTE_PREFIX = "gpu_check:"
_NOTE_RE = re.compile(r"(\w+)=(\S+)")


def state_note(device: str) -> str:
    """The TF32 switches of this process and the trial device's UUID, as one note."""
    import torch

    parts: dict[str, Any] = {}
    for key, read in (
        ("matmul_precision", torch.get_float32_matmul_precision),
        ("cudnn_allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
        ("cuda_matmul_allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
    ):
        try:  # torch >= 2.9 may refuse a legacy flag after inconsistent new-style settings
            parts[key] = read()
        except RuntimeError as exc:
            parts[key] = "refused:" + type(exc).__name__
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        uuid = str(props.uuid)
        parts["device_uuid"] = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        parts["visible_index"] = torch.device(device).index
    return NOTE_PREFIX + " " + " ".join(f"{k}={v}" for k, v in parts.items())


def parse_state_note(notes: list[str] | tuple[str, ...]) -> dict[str, str] | None:
    for note in notes:
        if note.startswith(NOTE_PREFIX):
            return dict(_NOTE_RE.findall(note[len(NOTE_PREFIX) :]))
    return None


@register_workload
class StateReportingGPT(GPTWorkload):
    name = "gpu_check_gpt"
    description = "gpt, plus a note with the TF32 switches and the GPU UUID (scripts/gpu_check.sh)"

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> Any:
        note = state_note(device)
        setup = super().build(params, config, device, seed)
        setup.notes.append(note)
        return setup


@register_workload
class DeviceAssertWorkload(GPTWorkload):
    name = "gpu_check_assert"
    description = "raises a CUDA device-side assert at build (scripts/gpu_check.sh)"

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> Any:
        import torch

        values = torch.zeros(4, device=device)
        index = torch.tensor([1 << 20], device=device)
        values[index].sum().item()  # on CUDA: "device-side assert triggered", sticky
        raise RuntimeError("gpu_check_assert ran on a device without device-side asserts")

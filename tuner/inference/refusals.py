"""Configs the hardware or library cannot run, refused with the reason before any trial.

A refused config costs no trial time and is never best; the study tells the sampler so.
"""

from __future__ import annotations

from typing import Any

from tuner.errors import FieldProblem
from tuner.inference.config import InferenceConfig

#: Knob values a device kind can never run, whatever the other knobs: (why, fix). A space
#: that can only give such a value is a field error before the study starts.
NEVER_ON: dict[str, dict[tuple[str, str], tuple[str, str]]] = {
    "cpu": {
        ("compile_mode", "reduce-overhead"): (
            "is CUDA graphs (torch.compile's reduce-overhead records and replays a CUDA graph), which need a GPU",
            "use compile_mode: default or max-autotune on the CPU, or serve on --device cuda",
        ),
        ("serving_precision", "fp16"): (
            "has no fast fp16 matmul in PyTorch's CPU kernels: it serves slower than fp32",
            "use serving_precision: bf16 or int8_dynamic on the CPU, or serve on --device cuda",
        ),
    },
    # (int8_backend: fbgemm on a GPU is refused per trial: it matters to int8 configs only)
}


def torchao_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def refusal(
    config: InferenceConfig, *, device: str, paddings: tuple[str, ...], variable_length: bool
) -> str | None:
    """Why `config` cannot run on `device` for a workload whose forward implements
    `paddings`; None when it can."""
    on_cpu = not device.startswith("cuda")
    if config.serving_precision == "fp16" and on_cpu:
        return (
            "fp16 on CPU: PyTorch's CPU kernels have no fast fp16 matmul (they convert to fp32 "
            "or run reference loops), so it serves slower than fp32; use bf16 or int8_dynamic"
        )
    if config.int8 and config.int8_backend == "fbgemm" and not on_cpu:
        return "int8_backend fbgemm (torch.ao quantize_dynamic) runs on CPU only; use int8_backend: torchao"
    if config.int8 and not on_cpu and not torchao_available():
        return (
            f"{config.serving_precision} on a GPU needs torchao (torch.ao quantize_dynamic, the "
            "fallback, runs on the CPU only); pip install torchao, or serve bf16/fp16"
        )
    if config.serving_precision == "bf16" and not on_cpu and not _cuda_bf16(device):
        return "bf16 on this GPU: it has no bf16 kernels (pre-Ampere); use fp16"
    if config.serving_precision == "int8_weight_only" and config.int8_backend == "fbgemm":
        return (
            "torch.ao.quantization.quantize_dynamic has no weight-only int8; "
            "use int8_backend: torchao (Int8WeightOnlyConfig)"
        )
    if config.serving_precision == "int8_weight_only" and not torchao_available():
        return "int8_weight_only needs torchao (pip install torchao)"
    if variable_length and config.padding not in paddings:
        return f"padding {config.padding!r} is not implemented by this workload's forward; use one of {', '.join(paddings)}"
    if config.compile_mode == "reduce-overhead" and on_cpu:
        return "compile_mode reduce-overhead is CUDA graphs, which need a GPU; use default or max-autotune on CPU"
    return None


def _cuda_bf16(device: str) -> bool:
    from tuner.inference.placement import cuda_bf16_supported  # torch: asked on a GPU only

    return cuda_bf16_supported(device)


def space_device_problems(space: Any, device_type: str) -> list[FieldProblem]:
    """Field errors for knobs of a `kind: inference` space whose every value is refused on
    `device_type` ("cpu" or "cuda"): e.g. `compile_mode: reduce-overhead` (CUDA graphs)
    on the CPU. A space that mixes such a value with others is fine: those trials are
    refused one by one, at no cost."""
    problems = []
    never = NEVER_ON.get(device_type, {})
    for knob in sorted({k for k, _ in never}):
        if knob not in space:
            continue
        param = space.get(knob)
        if param.when is not None:
            continue  # conditional: the configs it does not apply to keep the default and run
        values = [param.value] if param.kind == "fixed" else list(getattr(param, "choices", ()))
        refused = [v for v in values if (knob, v) in never]
        if values and len(refused) == len(values):
            why, fix = never[(knob, refused[0])]
            shown = refused[0] if len(refused) == 1 else refused
            problems.append(
                FieldProblem(f"space.params.{knob}", shown, f"{why} (this study serves on the {device_type.upper()})", fix)
            )
    return problems

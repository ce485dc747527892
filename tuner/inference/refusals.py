"""Configs the hardware or library cannot run, refused with the reason before any trial.

A refused config costs no trial time and is never best; the study tells the sampler so.
"""

from __future__ import annotations

from tuner.inference.config import InferenceConfig


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

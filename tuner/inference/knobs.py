"""The catalogue of serving knobs: one table, read by the search-space validator,
`InferenceConfig` and the docs.

Names differ from the training knobs (`serving_precision`, not `precision`; `compile_mode`,
not `compile`) because both catalogues share one namespace in a search space's `params`
and the legal values differ (int8 serves but does not train; compile has modes here).
"""

from __future__ import annotations

from tuner.knobs import Knob, closest_knob

SERVING_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8_dynamic", "int8_weight_only")
INT8_BACKENDS: tuple[str, ...] = ("torchao", "fbgemm")
PADDINGS: tuple[str, ...] = ("longest", "buckets", "packed")
COMPILE_MODES: tuple[str, ...] = ("off", "default", "max-autotune", "reduce-overhead")

_INFERENCE_KNOB_LIST: tuple[Knob, ...] = (
    Knob("max_batch_size", "int", 1, "most requests the batcher puts in one forward", low=1, high=65536),
    Knob(
        "batch_window_ms",
        "float",
        0.0,
        "longest a request waits for others before a partial batch runs (0: run what is queued)",
        low=0,
        high=10_000,
    ),
    Knob(
        "padding",
        "categorical",
        "longest",
        "variable-length inputs: pad to the batch's longest, batch by length bucket, or pack without padding",
        choices=PADDINGS,
    ),
    Knob("instances", "int", 1, "model copies serving one queue (Triton's instance group)", low=1, high=64),
    Knob(
        "threads_per_instance",
        "int",
        0,
        "intra-op CPU threads of each instance (0: torch's default, all cores)",
        low=0,
        high=1024,
    ),
    Knob(
        "serving_precision",
        "categorical",
        "fp32",
        "numeric precision of the served model (int8: quantized Linear layers)",
        choices=SERVING_PRECISIONS,
    ),
    Knob(
        "int8_backend",
        "categorical",
        "torchao",
        "int8 library: torchao quantize_ or torch.ao.quantization.quantize_dynamic (fbgemm)",
        choices=INT8_BACKENDS,
    ),
    Knob("fusion", "bool", False, "fold Conv+BN(+ReLU) into one op (conv models); serve a workload's fused form (recsys: one table-batched lookup)"),
    Knob(
        "compile_mode", "categorical", "off", "torch.compile mode of the served model", choices=COMPILE_MODES
    ),
)

INFERENCE_KNOBS: dict[str, Knob] = {k.name: k for k in _INFERENCE_KNOB_LIST}


def closest_inference_knob(name: str) -> str | None:
    return closest_knob(name, INFERENCE_KNOBS)

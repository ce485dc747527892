"""The memory model of a serving config: weights by precision, activations by batch x length.

peak ~= instances x (weights + activations of one full batch) + the process's fixed part.
Each instance holds its own copy of the weights (as Triton's instance groups do), and one
batch in flight. Used before launch: a config predicted above the study's memory limit is
`infeasible` and never run.

The figure matches what the trial's meter reads on its device: on the CPU the process's
peak RSS (so the interpreter and torch's libraries are in it); on a GPU the caching
allocator's peak (`max_memory_allocated`: tensors only, so no process part, but each
instance's stream has its own cuBLAS workspace, taken from the allocator). On a GPU the
limit, unless the study sets one, is the device's memory the allocator can hand out.
"""

from __future__ import annotations

from tuner.inference.config import InferenceConfig
from tuner.inference.serving import ServingShape

BYTES_PER_PARAM: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
#: int8 Linear weights: 1 byte each plus a fp32 scale (and int8 zero point) per output row;
#: the row cost is folded in as a small per-weight overhead for typical fan-ins (>= 64).
INT8_BYTES_PER_WEIGHT = 1.0 + 5.0 / 64
#: A torch process with a model loaded: interpreter, torch's libraries, allocator slack.
PROCESS_BASE_BYTES = 350 * 2**20


def weight_bytes(shape: ServingShape, precision: str) -> int:
    if precision.startswith("int8"):
        # Only Linear layers are quantized; the rest (embeddings, convs) stay fp32.
        return int(shape.linear_params * INT8_BYTES_PER_WEIGHT + shape.other_params * 4.0)
    return int((shape.linear_params + shape.other_params) * BYTES_PER_PARAM[precision])


def activation_bytes(shape: ServingShape, config: InferenceConfig) -> int:
    """One full batch in flight: batch x length x bytes per item-length (x 1/2 in bf16/fp16).
    Padding to the longest in a batch is charged at the workload's longest length."""
    scale = 0.5 if config.serving_precision in ("bf16", "fp16") else 1.0
    length = shape.max_length if config.padding == "longest" else shape.mean_length
    return int(config.max_batch_size * length * shape.activation_bytes_per_item * scale)


def predicted_peak_bytes(shape: ServingShape, config: InferenceConfig, device_type: str = "cpu") -> int:
    per_instance = weight_bytes(shape, config.serving_precision) + activation_bytes(shape, config)
    if device_type == "cuda":
        from tuner.generator.memory_model import CUDA_WORKSPACE_BYTES

        return config.instances * (per_instance + CUDA_WORKSPACE_BYTES)
    return PROCESS_BASE_BYTES + config.instances * per_instance


def device_memory_limit(limit_bytes: int | None, device_type: str, total_bytes: int | None) -> int | None:
    """The limit a serving config's prediction is held to: the study's, else on a GPU what
    its caching allocator can hand out of `total_bytes` (the CUDA context and fragmentation
    taken off, as for training); None on the CPU without a study limit."""
    if limit_bytes is not None or device_type != "cuda" or total_bytes is None:
        return limit_bytes
    from tuner.generator.memory_model import ALLOCATOR_USABLE_FRACTION, CUDA_CONTEXT_BYTES

    return max(0, int((total_bytes - CUDA_CONTEXT_BYTES) * ALLOCATOR_USABLE_FRACTION))

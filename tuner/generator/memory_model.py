"""Analytic peak-memory model of one training step, before the config runs.

The peak of a step is the largest of a few moments, each a sum of tensors that are alive
at once (see docs/memory-model.md for the derivations and the checks against H200 data):

- `loss_backward` (language models): weights + AdamW moments + the autocast weight cache
  + every activation saved for backward + the cross-entropy buffers over the vocabulary.
- `recompute` (activation checkpointing): the saved block inputs + one block's activations
  rebuilt during backward, after the logits buffers are gone.
- `embedding_backward` (recommenders): the dense embedding gradient is allocated while
  weights, moments and the per-sample buffers of the backward pass are alive.
- `optimizer_step`: weights + gradients + AdamW moments (16 bytes per parameter).

Everything here counts bytes of `torch.cuda.max_memory_allocated` (the caching
allocator's allocated bytes); the CUDA context and fragmentation enter only through the
usable limit (`usable_memory_bytes`). Calibration from measured trials lives in
`tuner.generator.calibration`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.types import TrialConfig

if TYPE_CHECKING:
    from tuner.hardware.profile import HardwareProfile

GIB = 1024**3
MIB = 1024**2

#: Precisions whose activations autocast stores in 2 bytes; the rest store 4 (tf32 only
#: changes how fp32 matmuls are computed, not what is stored).
SIXTEEN_BIT = frozenset({"bf16", "fp16"})

#: cuBLAS/cuBLASLt workspaces and small buffers the allocator holds during a step. Hopper
#: cuBLAS uses 32 MiB per handle plus Lt workspace; the H200 intercepts leave ~70 MB that
#: the tensors below do not explain, which is this order.
CUDA_WORKSPACE_BYTES = 64 * MIB
#: Memory NVML counts as total that the caching allocator can never hand out: the CUDA
#: context, kernel images and NCCL buffers (measured ~0.5-0.8 GiB on Hopper with lazy loading).
CUDA_CONTEXT_BYTES = 1 * GIB
#: Share of the remaining memory the caching allocator can fill before fragmentation makes
#: an allocation fail. On the H200 the largest peak reached before an OOM was 143.6 GB of
#: 150.75 GB total (95.3%).
ALLOCATOR_USABLE_FRACTION = 0.95
#: Host memory left to the OS, Python and the data pipeline when a trial runs on CPU.
CPU_RESERVE_BYTES = 2 * GIB

LM_KEYS = ("layers", "d", "heads", "seq", "vocab", "params")
DLRM_KEYS = ("tables", "rows", "dim", "params")
#: Optional shape keys the model reads; anything else is ignored with a note.
LM_OPTIONAL = ("mlp_ratio", "attention", "flops_per_token", "workload")
DLRM_OPTIONAL = ("bottom_mlp", "dense_features", "workload", "flops_per_sample")

LM_WORKLOADS = frozenset({"gpt", "lm", "transformer"})
DLRM_WORKLOADS = frozenset({"recsys", "dlrm"})


@dataclass(frozen=True)
class MemoryEstimate:
    """A predicted peak of allocated bytes for one config on one device."""

    peak_bytes: int
    parts: dict[str, int]  # what is alive at the peak moment, by kind; sums to peak_bytes
    fits: bool | None  # against `limit_bytes`; None when no hardware was given
    limit_bytes: int | None  # allocator bytes this device can hand out (see usable_memory_bytes)
    phase: str  # the moment of the step that sets the peak
    assumptions: tuple[str, ...] = ()
    calibrated: bool = False  # True when measured trials corrected the analytic number
    analytic_bytes: int | None = None  # the uncalibrated prediction, when calibrated

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["assumptions"] = list(self.assumptions)
        data["peak_gib"] = round(self.peak_bytes / GIB, 3)
        return data

    def with_fit(self, limit_bytes: int | None, **changes: Any) -> MemoryEstimate:
        fits = None if limit_bytes is None else self.peak_bytes <= limit_bytes
        return dataclasses.replace(self, fits=fits, limit_bytes=limit_bytes, **changes)


@dataclass(frozen=True)
class _Moment:
    name: str
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def usable_memory_bytes(hardware: HardwareProfile | None) -> int | None:
    """Bytes of the caching allocator one trial process can fill before it runs out.

    On CUDA, memory other processes held on the GPU when it was probed
    (`HardwareProfile.memory_used_by_others_bytes`) is not free for the trial either: a
    config predicted to fit the whole GPU would run out of memory on a shared one.
    """
    if hardware is None or hardware.memory_bytes is None:
        return None
    if hardware.device_type == "cuda":
        others = hardware.memory_used_by_others_bytes or 0
        return max(0, int((hardware.memory_bytes - CUDA_CONTEXT_BYTES - others) * ALLOCATOR_USABLE_FRACTION))
    return max(0, hardware.memory_bytes - CPU_RESERVE_BYTES)


def model_family(workload: str, shape: Mapping[str, Any]) -> str:
    """'lm' or 'dlrm': which analytic model describes this workload."""
    base = workload.split("_")[0].lower() if workload else ""
    if base in LM_WORKLOADS:
        return "lm"
    if base in DLRM_WORKLOADS:
        return "dlrm"
    if all(k in shape for k in LM_KEYS):
        return "lm"
    if all(k in shape for k in DLRM_KEYS):
        return "dlrm"
    raise ValidationError(
        FieldProblem(
            "shape",
            dict(shape),
            f"workload {workload!r} has no memory model and the shape has neither the language-model "
            f"keys ({', '.join(LM_KEYS)}) nor the recommender keys ({', '.join(DLRM_KEYS)})",
            "pass --workload gpt or recsys, or a shape with one of those key sets",
        )
    )


def _check_shape(shape: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> list[str]:
    problems = []
    for key in required:
        value = shape.get(key)
        if value is None:
            problems.append(FieldProblem(f"shape.{key}", None, "is missing", f"give {key} (a positive integer)"))
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            problems.append(FieldProblem(f"shape.{key}", value, "must be a positive number", f"give {key} > 0"))
    if problems:
        raise ValidationError(problems)
    ignored = sorted(k for k in shape if k not in required and k not in optional)
    return [f"ignored shape keys the memory model does not use: {', '.join(ignored)}"] if ignored else []


def _as_config(config: TrialConfig | Mapping[str, Any]) -> TrialConfig:
    return config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))


def _model_states(params: float, config: TrialConfig, *, grads_alive: bool) -> tuple[dict[str, float], list[str]]:
    """Weights, gradients and AdamW moments on one device, by sharding stage.

    Mixed precision keeps fp32 master weights (4 B), fp32 gradients (4 B) and two fp32
    AdamW moments (8 B): 16 B per parameter unsharded. ZeRO-1 shards the moments, ZeRO-2 also
    the gradients, ZeRO-3 also the weights, each over `world_size` ranks.
    """
    ws = config.world_size
    stage = config.sharding_stage if ws > 1 else 0
    notes = []
    weights = 4 * params / (ws if stage >= 3 else 1)
    optimizer = 8 * params / (ws if stage >= 1 else 1)
    grads = 4 * params / (ws if stage >= 2 else 1) if grads_alive else 0.0
    parts = {"weights": weights, "grads": grads, "optimizer": optimizer}
    if stage == 2:
        # FSDP2 with reshard_after_forward=False keeps the all-gathered fp32 weights from
        # forward through backward, on top of the shard.
        parts["unsharded_weights"] = 4 * params
        notes.append("stage 2 (FSDP2, no reshard) holds the full fp32 weights during forward/backward")
    if ws > 1 and stage <= 1:
        # DDP's reducer allocates flat gradient buckets the size of all gradients
        # (gradient_as_bucket_view=False is the default).
        parts["ddp_buckets"] = 4 * params
        notes.append("DDP gradient buckets: 4 B per parameter (gradient_as_bucket_view off)")
    return parts, notes


def _finish(
    moments: list[_Moment], hardware: HardwareProfile | None, assumptions: list[str]
) -> MemoryEstimate:
    peak = max(moments, key=lambda m: m.total)
    parts = {k: round(v) for k, v in peak.parts.items()}
    total = sum(parts.values())
    limit = usable_memory_bytes(hardware)
    return MemoryEstimate(
        peak_bytes=total,
        parts=parts,
        fits=None if limit is None else total <= limit,
        limit_bytes=limit,
        phase=peak.name,
        assumptions=tuple(assumptions),
    )


def lm_activation_bytes_per_token_per_layer(d: float, precision: str, *, compile: bool, mlp_ratio: float) -> float:
    """Bytes one pre-LN GPT block saves for backward per token, with SDPA attention.

    Counted tensor by tensor (autocast keeps the residual stream and LayerNorm in fp32):
    LN1 input (4d) + QKV input (a·d) + q,k,v (3a·d) + attention output (a·d) + out-proj input
    (a·d) + LN2 input (4d) + fc1 input (a·d) + GELU input (r·a·d) + fc2 input (r·a·d), where
    a is the activation width in bytes (2 under bf16/fp16 autocast, 4 otherwise) and r the
    MLP ratio: 38·d for bf16 and 68·d for fp32 at r=4 (Korthikanti et al. count 34·d for a
    fully 16-bit block with dropout). torch.compile's partitioner recomputes the GELU output
    and the casts of the LayerNorm outputs instead of saving them.
    """
    a = 2.0 if precision in SIXTEEN_BIT else 4.0
    residual = 4.0
    saved = 2 * residual * d + a * d * (1 + 3 + 1 + 1 + 1 + 2 * mlp_ratio)
    if compile:
        saved -= a * d * (mlp_ratio + 2)
    return saved + 2 * 8.0  # LayerNorm mean/rstd in fp32


def estimate_lm(
    shape: Mapping[str, Any], config: TrialConfig, hardware: HardwareProfile | None = None
) -> MemoryEstimate:
    """Peak allocated bytes of one decoder-LM training step (AdamW, tied embeddings)."""
    assumptions = _check_shape(shape, LM_KEYS, LM_OPTIONAL)
    layers, d, heads = float(shape["layers"]), float(shape["d"]), float(shape["heads"])
    seq, vocab, params = float(shape["seq"]), float(shape["vocab"]), float(shape["params"])
    mlp_ratio = float(shape.get("mlp_ratio", 4))
    attention = str(shape.get("attention", "sdpa"))
    precision = config.precision
    a = 2.0 if precision in SIXTEEN_BIT else 4.0
    tokens = config.micro_batch_size * seq
    ckpt = config.activation_checkpointing

    per_layer = lm_activation_bytes_per_token_per_layer(d, precision, compile=config.compile, mlp_ratio=mlp_ratio)
    per_layer += heads * 4.0  # SDPA's log-sum-exp, fp32 per head and token
    if attention == "eager":
        # Materialised scores and softmax output per head (Korthikanti's 5·a·s² for 16-bit).
        per_layer += 2.5 * a * heads * seq
        assumptions.append("eager attention: scores and softmax saved (5·heads·seq bytes per token at 16 bit)")
    else:
        assumptions.append("SDPA/flash attention: no seq² score tensor is saved")
    # Outside the blocks: token+position embedding sum (fp32), final LN input and the LM
    # head's input cast.
    outside = 4 * d + 4 * d + a * d
    # Cross-entropy over the vocabulary (autocast runs it in fp32): the saved log-softmax
    # output, the incoming gradient and the gradient it produces are alive at once.
    logits = 12.0 * vocab
    assumptions.append("eager cross-entropy: 12 bytes per token and vocabulary entry at its backward")

    block_matmul_params = layers * (4 + 2 * mlp_ratio) * d * d
    head_params = vocab * d
    cache = 0.0
    if precision in SIXTEEN_BIT:
        # Autocast caches the 16-bit copy of every weight a matmul used until the forward
        # ends; checkpointed blocks run without the cache, so only the head's copy remains.
        cache = 2 * (head_params + (0 if ckpt else block_matmul_params))
        assumptions.append("autocast keeps 2-byte copies of matmul weights through forward")
    accumulate = config.gradient_accumulation_steps > 1
    states, notes = _model_states(params, config, grads_alive=accumulate)
    assumptions += notes
    assumptions.append(
        "AdamW moments exist (from step 2); gradients are None in forward (zero_grad(set_to_none=True))"
        + ("; gradient accumulation keeps them alive" if accumulate else "")
    )
    if config.world_size > 1 and config.sharding_stage == 3:
        states["gathered_block_weights"] = 2 * 4 * (4 + 2 * mlp_ratio) * d * d  # one block + prefetch
    workspace = CUDA_WORKSPACE_BYTES if hardware is None or hardware.device_type == "cuda" else 0

    saved_per_token = layers * (4 * d if ckpt else per_layer)
    loss_backward = _Moment(
        "loss_backward",
        {
            **states,
            "autocast_weight_cache": cache,
            "activations": tokens * (saved_per_token + outside),
            "logits": tokens * logits,
            "workspace": workspace,
        },
    )
    moments = [loss_backward]
    if ckpt:
        assumptions.append("activation checkpointing saves each block's fp32 input (4·d per token)")
        # After the head's backward the vocabulary buffers are freed; the last block is
        # rebuilt while the head's weight gradient and the hidden-state gradient live.
        moments.append(
            _Moment(
                "recompute",
                {
                    **states,
                    "grads": states["grads"] or 4 * head_params,
                    "autocast_weight_cache": 2 * block_matmul_params / layers if precision in SIXTEEN_BIT else 0.0,
                    "activations": tokens * (saved_per_token + outside + per_layer + 2 * 4 * d),
                    "workspace": workspace,
                },
            )
        )
    optimizer_states, _ = _model_states(params, config, grads_alive=True)
    moments.append(_Moment("optimizer_step", {**optimizer_states, "workspace": workspace}))
    if config.compile:
        assumptions.append(
            "torch.compile: GELU output and LayerNorm-output casts recomputed, not saved "
            "(not measured on this data; the loss is assumed outside the compiled graph)"
        )
    return _finish(moments, hardware, assumptions)


def estimate_dlrm(
    shape: Mapping[str, Any], config: TrialConfig, hardware: HardwareProfile | None = None
) -> MemoryEstimate:
    """Peak allocated bytes of one DLRM-style step (EmbeddingBag tables, dense AdamW)."""
    assumptions = _check_shape(shape, DLRM_KEYS, DLRM_OPTIONAL)
    tables, dim, params = float(shape["tables"]), float(shape["dim"]), float(shape["params"])
    batch = float(config.micro_batch_size)
    a = 2.0 if config.precision in SIXTEEN_BIT else 4.0
    # Dense AdamW updates the embeddings too, so their gradient is a full dense tensor:
    # at the embedding backward, weights + moments + gradients (16 B/param) are all alive.
    states, notes = _model_states(params, config, grads_alive=True)
    assumptions += notes
    assumptions.append("dense AdamW on the embedding tables: 16 bytes per parameter")
    # EmbeddingBag runs outside autocast (fp32): the pooled gradient and the per-lookup
    # gradient the backward gathers are 4 B each per embedding element; indices and
    # offsets are int64.
    per_sample = tables * dim * (4 + 4) + tables * 16
    bottom = shape.get("bottom_mlp")
    if isinstance(bottom, (list, tuple)) and bottom:
        # The bottom MLP's saved activations are still alive when the embeddings' backward
        # runs (it ran before them in forward).
        per_sample += a * float(sum(bottom))
    else:
        dense = float(shape.get("dense_features", 13))
        per_sample += 4 * dense
        assumptions.append("bottom-MLP activations not modelled (shape has no bottom_mlp widths)")
    workspace = CUDA_WORKSPACE_BYTES if hardware is None or hardware.device_type == "cuda" else 0
    moments = [
        _Moment("embedding_backward", {**states, "activations": batch * per_sample, "workspace": workspace}),
    ]
    if config.activation_checkpointing:
        assumptions.append("activation checkpointing has no effect on a recommender's peak here")
    return _finish(moments, hardware, assumptions)


def estimate_peak(
    shape: Mapping[str, Any],
    config: TrialConfig | Mapping[str, Any],
    *,
    workload: str,
    hardware: HardwareProfile | None = None,
) -> MemoryEstimate:
    """Predict the peak allocated bytes of one training step of `config` on one device."""
    cfg = _as_config(config)
    family = model_family(workload, shape)
    if family == "lm":
        return estimate_lm(shape, cfg, hardware)
    return estimate_dlrm(shape, cfg, hardware)


def linear_in_batch(estimate_fn: Any, config: TrialConfig) -> tuple[float, float]:
    """(intercept, slope per sample) of an estimate around `config`'s micro batch."""
    mb = config.micro_batch_size
    lo = estimate_fn(config.replace(micro_batch_size=max(1, mb // 2))).peak_bytes
    hi = estimate_fn(config.replace(micro_batch_size=max(2, mb * 2))).peak_bytes
    slope = (hi - lo) / (max(2, mb * 2) - max(1, mb // 2))
    return estimate_fn(config).peak_bytes - slope * mb, slope

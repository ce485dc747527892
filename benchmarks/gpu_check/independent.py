"""An independent plain-PyTorch GPT training loop: the yardstick for tuner's throughput.

Written apart from the trial runner on purpose (no import from `tuner.trial` or
`tuner.workloads`): its own model code, optimizer set-up, precision handling, data and
clock. It trains the same shape (pre-LN GPT blocks, SDPA causal attention, 4x GELU MLP,
tied embeddings), at the same micro batch, accumulation, sequence length, precision,
checkpointing and compile setting, and times a window of steps the way a user's own
script would: one device sync before and one after the window, tokens / seconds. If the
runner's reported items/s differ from this by more than a few percent, the runner
measures something other than what a user gets.

Used by `benchmarks.gpu_check` (the fidelity step) and `benchmarks/fidelity.py`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LoopSpec", "flops_per_token", "measure"]


@dataclass(frozen=True)
class LoopSpec:
    """One training setup: the model shape plus the knobs that change speed."""

    layers: int
    d_model: int
    heads: int
    vocab_size: int
    seq: int
    micro_batch_size: int
    accumulation: int = 1
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16
    activation_checkpointing: bool = False
    compile: bool = False
    learning_rate: float = 1e-3
    loss_scale: float = 65536.0

    @classmethod
    def from_tuner(cls, params: Mapping[str, Any], config: Mapping[str, Any]) -> LoopSpec:
        """From a gpt workload's params and a tuner config dict (plain data, no tuner types)."""
        return cls(
            layers=int(params["layers"]),
            d_model=int(params["d_model"]),
            heads=int(params["heads"]),
            vocab_size=int(params["vocab_size"]),
            seq=int(config["max_sequence_length"]),
            micro_batch_size=int(config["micro_batch_size"]),
            accumulation=int(config.get("gradient_accumulation_steps", 1)),
            precision=str(config.get("precision", "fp32")),
            activation_checkpointing=bool(config.get("activation_checkpointing", False)),
            compile=bool(config.get("compile", False)),
            learning_rate=float(config.get("learning_rate", 1e-3)),
            loss_scale=float(config.get("loss_scale", 65536.0)),
        )

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch_size * self.accumulation * self.seq

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parameter_count(spec: LoopSpec) -> int:
    d = spec.d_model
    per_block = 12 * d * d + 13 * d  # two norms, qkv, out projection, 4x MLP (with biases)
    return spec.vocab_size * d + spec.seq * d + spec.layers * per_block + 2 * d


def flops_per_token(spec: LoopSpec) -> float:
    """Training FLOPs per token (6 per parameter plus attention's 12·L·d·seq), for MFU."""
    return 6.0 * parameter_count(spec) + 12.0 * spec.layers * spec.d_model * spec.seq


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        qkv = self.in_proj(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(b, s, d))


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attention = _Attention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _LanguageModel(nn.Module):
    def __init__(self, spec: LoopSpec) -> None:
        super().__init__()
        self.checkpointing = spec.activation_checkpointing
        self.tokens = nn.Embedding(spec.vocab_size, spec.d_model)
        self.positions = nn.Embedding(spec.seq, spec.d_model)
        self.layers = nn.ModuleList(_Layer(spec.d_model, spec.heads) for _ in range(spec.layers))
        self.norm = nn.LayerNorm(spec.d_model)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        for layer in self.layers:
            h = checkpoint(layer, h, use_reentrant=False) if self.checkpointing else layer(h)
        return self.norm(h) @ self.tokens.weight.t()  # the head shares the embedding


@contextlib.contextmanager
def _precision(spec: LoopSpec, device: torch.device) -> Iterator[tuple[Any, Any]]:
    """(autocast context factory, grad scaler or None), with the TF32 switch set and restored."""
    previous = torch.get_float32_matmul_precision()
    previous_cudnn = torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        tf32 = spec.precision == "tf32"
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = tf32
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    scaler = (
        torch.amp.GradScaler(device.type, init_scale=spec.loss_scale) if spec.precision == "fp16" else None
    )
    try:
        yield autocast, scaler
    finally:
        torch.set_float32_matmul_precision(previous)
        torch.backends.cudnn.allow_tf32 = previous_cudnn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    spec: LoopSpec,
    *,
    device: str = "cpu",
    warmup_steps: int = 3,
    timed_steps: int = 10,
    seed: int = 0,
    peak_flops: float | None = None,
) -> dict[str, Any]:
    """Train `spec` for warm-up plus timed optimizer steps; return what was measured.

    `items_per_s` is tokens of the timed window over its wall time (synchronised at both
    ends). Raises on errors (an OOM included): this is a yardstick, not a trial runner.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(seed)
    model = _LanguageModel(spec).to(dev)
    model.train()
    fused = dev.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0, fused=fused)
    step_model = torch.compile(model) if spec.compile else model
    generator = torch.Generator(device=dev).manual_seed(seed)
    losses: list[float] = []

    def one_step(autocast: Any, scaler: Any) -> torch.Tensor:
        total = torch.zeros((), device=dev)
        for _ in range(spec.accumulation):
            ids = torch.randint(
                0,
                min(256, spec.vocab_size),
                (spec.micro_batch_size, spec.seq + 1),
                device=dev,
                generator=generator,
            )
            with autocast():
                logits = step_model(ids[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
            scaled = loss / spec.accumulation
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total += loss.detach()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total / spec.accumulation

    began = time.perf_counter()
    with _precision(spec, dev) as (autocast, scaler):
        for _ in range(warmup_steps):
            losses.append(float(one_step(autocast, scaler)))
        _sync(dev)
        window_start = time.perf_counter()
        timed = []
        # On the CPU every op is synchronous, so per-step clock reads cost nothing and
        # change nothing; on a GPU they would add a sync per step, so only the window counts.
        step_ends = []
        for _ in range(timed_steps):
            timed.append(one_step(autocast, scaler))
            if dev.type == "cpu":
                step_ends.append(time.perf_counter())
        _sync(dev)
        window_s = time.perf_counter() - window_start
    losses += [float(loss) for loss in timed]
    items_per_s = spec.tokens_per_step * timed_steps / window_s
    flops = flops_per_token(spec)
    result: dict[str, Any] = {
        "items_per_s": items_per_s,
        "step_time_s": window_s / timed_steps,
        # CPU only: the fastest single step, the figure least touched by other processes
        "min_step_s": min(b - a for a, b in zip([window_start, *step_ends], step_ends, strict=False))
        if step_ends
        else None,
        "timed_steps": timed_steps,
        "warmup_steps": warmup_steps,
        "tokens_per_step": spec.tokens_per_step,
        "parameters": parameter_count(spec),
        "flops_per_token": flops,
        "achieved_tflops": flops * items_per_s / 1e12,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses_finite": all(math.isfinite(v) for v in losses),
        "wall_s": time.perf_counter() - began,
        "device": str(dev),
    }
    if peak_flops:
        result["mfu"] = flops * items_per_s / peak_flops
    if spec.compile:
        torch.compiler.reset()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return result

"""Export a tuned config: as a JSON/YAML config file, or as a runnable PyTorch snippet.

The JSON/YAML forms are exactly `TrialConfig.to_dict()` (YAML adds a comment header), so
`TrialConfig.from_dict(yaml.safe_load(text))` reads them back; a study that tunes the
user's own hyperparameters adds them under one more key, `hparams` (pop it before
`from_dict`). The torch form is a short self-contained script that applies every knob to
any model: autocast dtype, GradScaler with the tuned initial scale, the optimizer, linear
warm-up then cosine, gradient accumulation, activation checkpointing, torch.compile; the
hyperparameters are one `HPARAMS` dict (types kept), and the conventional names are
applied where the script builds things: `optimizer` (adamw | adam | sgd), `momentum`,
`nesterov`, and in the stand-in model `dropout` and `n_layers`/`layers`. Run as is, it
trains a tiny stand-in model.

One function renders every export (`render_points`): `tuner export`, the REST
`/best` and `/pareto` (`?format=`), the client's `Study.export` and the dashboard all
call it, so they give the same text for the same trial.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.types import TrialConfig

FORMATS: tuple[str, ...] = ("json", "yaml", "torch")
_SUFFIX_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".py": "torch"}
_AMP_DTYPES = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}


def format_for_path(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise ValidationError(
            FieldProblem(
                "output",
                str(path),
                f"has suffix {suffix or '(none)'!r}, which names no export format",
                "end the file name with .yaml, .yml, .json or .py",
            )
        )
    return _SUFFIX_FORMATS[suffix]


def _header_lines(meta: dict[str, Any] | None) -> list[str]:
    return [f"{key}: {value}" for key, value in (meta or {}).items() if value is not None]


@dataclass(frozen=True)
class ExportPoint:
    """One exported trial: its config, its hyperparameters, and where it came from."""

    config: TrialConfig
    hparams: Mapping[str, Any] = field(default_factory=dict)
    number: int | None = None
    values: Mapping[str, float] | None = None  # objective name -> value

    def document(self) -> dict[str, Any]:
        data: dict[str, Any] = self.config.to_dict()
        if self.hparams:
            data["hparams"] = dict(self.hparams)
        return data

    def meta(self, study: str | None, note: Mapping[str, Any] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"study": study, "trial": f"#{self.number}" if self.number is not None else None}
        meta.update({name: f"{value:.6g}" for name, value in (self.values or {}).items()})
        meta.update(note or {})
        return meta


def render_points(
    points: Sequence[ExportPoint], fmt: str, *, study: str | None = None, note: Mapping[str, Any] | None = None
) -> str:
    """The one rendering of exported trials (see the module docstring): one point as a
    document, several (a Pareto front) as a list (json/yaml) or one script each (torch)."""
    _check_format(fmt)
    if not points:
        raise ValidationError(FieldProblem("trials", [], "is empty", "export a study with a completed trial"))
    if len(points) == 1:
        return render(points[0].config, fmt, points[0].meta(study, note), hparams=points[0].hparams)
    if fmt == "json":
        return json.dumps([p.document() for p in points], indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        header = f"# study: {study}\n" if study else ""
        return header + yaml.safe_dump([p.document() for p in points], sort_keys=False)
    return "\n\n".join(render(p.config, fmt, p.meta(study, note), hparams=p.hparams) for p in points)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValidationError(
            FieldProblem("format", fmt, "is not an export format", "use one of: " + ", ".join(FORMATS))
        )


def render(
    config: TrialConfig, fmt: str, meta: dict[str, Any] | None = None, *, hparams: Mapping[str, Any] | None = None
) -> str:
    """`config` (and the trial's `hparams`) as text in `fmt` (json | yaml | torch); `meta`
    becomes comments/header."""
    _check_format(fmt)
    point = ExportPoint(config, dict(hparams or {}))
    if fmt == "json":
        return json.dumps(point.document(), indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        header = "".join(f"# {line}\n" for line in _header_lines(meta))
        return header + yaml.safe_dump(point.document(), sort_keys=False)
    return torch_snippet(config, meta, hparams=hparams)


def write_config(
    path: str | Path, config: TrialConfig, meta: dict[str, Any] | None = None, *, hparams: Mapping[str, Any] | None = None
) -> Path:
    """Write `config` (and `hparams`) to `path` in the format its suffix names."""
    path = Path(path)
    text = render(config, format_for_path(path), meta, hparams=hparams)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def torch_snippet(
    config: TrialConfig, meta: dict[str, Any] | None = None, *, hparams: Mapping[str, Any] | None = None
) -> str:
    """A runnable Python script that trains with `config` and `hparams` (module docstring)."""
    c = config
    tuned = dict(hparams or {})
    header = "".join(f"# {line}\n" for line in _header_lines(meta))
    amp = _AMP_DTYPES.get(c.precision, "None")
    distributed = ""
    if c.world_size > 1:
        distributed = (
            f"# Tuned for world_size={c.world_size}, sharding_stage={c.sharding_stage}: launch with\n"
            f"#   torchrun --nproc-per-node {c.world_size} this_file.py\n"
            "# and wrap the model before training: stage 0 DistributedDataParallel"
            f"(bucket_cap_mb={c.bucket_cap_mb:g}),\n"
            "# 1 DDP + ZeroRedundancyOptimizer, 2/3 torch.distributed.fsdp.fully_shard"
            "(reshard_after_forward=stage == 3).\n"
        )
    return f'''{header}"""Training loop with the tuned config applied (generated by `tuner export --format torch`)."""

import math

import torch
from torch.utils.checkpoint import checkpoint

{distributed}MICRO_BATCH_SIZE = {c.micro_batch_size}
GRADIENT_ACCUMULATION_STEPS = {c.gradient_accumulation_steps}
MAX_SEQUENCE_LENGTH = {c.max_sequence_length}
PRECISION = {c.precision!r}
AMP_DTYPE = {amp}  # autocast dtype; None = full fp32 (tf32 only changes matmul kernels)
LOSS_SCALE = {c.loss_scale!r}  # GradScaler initial scale (fp16 only)
LOSS_SCALE_GROWTH_INTERVAL = {c.loss_scale_growth_interval}
LEARNING_RATE = {c.learning_rate!r}
WARMUP_RATIO = {c.warmup_ratio!r}
WEIGHT_DECAY = {c.weight_decay!r}
ACTIVATION_CHECKPOINTING = {c.activation_checkpointing}
COMPILE = {c.compile}
# Your own hyperparameters as tuned (the space's hparams:); optimizer/momentum/nesterov are
# applied by make_optimizer, dropout and n_layers by the stand-in model below.
HPARAMS = {tuned!r}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def enable_activation_checkpointing(blocks):
    """Recompute each block's activations in backward instead of keeping them."""
    for block in blocks:
        forward = block.forward
        block.forward = lambda *args, _f=forward: checkpoint(_f, *args, use_reentrant=False)


def warmup_cosine(total_steps):
    warmup = int(WARMUP_RATIO * total_steps)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(parameters):
    """The tuned optimizer: HPARAMS["optimizer"] when tuned (adamw, adam or sgd), else AdamW."""
    name = str(HPARAMS.get("optimizer", "adamw")).lower()
    if name == "sgd":
        nesterov = bool(HPARAMS.get("nesterov", False))
        momentum = float(HPARAMS.get("momentum", 0.9 if nesterov else 0.0))
        return torch.optim.SGD(
            parameters, lr=LEARNING_RATE, momentum=momentum, nesterov=nesterov, weight_decay=WEIGHT_DECAY
        )
    if name == "adam":
        return torch.optim.Adam(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)


def train(model, loss_fn, next_batch, total_steps, blocks=()):
    """Train `model` for `total_steps` optimizer steps; next_batch(n) returns n samples."""
    if PRECISION == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if ACTIVATION_CHECKPOINTING:
        enable_activation_checkpointing(blocks)
    model = model.to(DEVICE)
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps))
    scaler = torch.amp.GradScaler(
        DEVICE,
        init_scale=LOSS_SCALE,
        growth_interval=LOSS_SCALE_GROWTH_INTERVAL,
        enabled=PRECISION == "fp16",
    )
    step_model = torch.compile(model) if COMPILE else model
    for _ in range(total_steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(GRADIENT_ACCUMULATION_STEPS):
            with torch.autocast(DEVICE, dtype=AMP_DTYPE, enabled=AMP_DTYPE is not None):
                loss = loss_fn(step_model, next_batch(MICRO_BATCH_SIZE)) / GRADIENT_ACCUMULATION_STEPS
            scaler.scale(loss).backward()
        scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
        scaler.update()
        scheduler.step()
    return loss.item() * GRADIENT_ACCUMULATION_STEPS


if __name__ == "__main__":
    # A tiny stand-in model so the file runs as is; replace with your model and data.
    torch.manual_seed(0)
    depth = int(HPARAMS.get("n_layers", HPARAMS.get("layers", 2)))
    dropout = float(HPARAMS.get("dropout", 0.0))
    blocks = [
        torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Dropout(dropout)) for _ in range(depth)
    ]
    model = torch.nn.Sequential(*blocks, torch.nn.Linear(32, 1))
    target = torch.nn.Linear(32, 1)

    def next_batch(n):
        x = torch.randn(n, 32, device=DEVICE)
        return x, target.to(DEVICE)(x).detach()

    def loss_fn(m, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(m(x).float(), y)

    print("final loss", train(model, loss_fn, next_batch, total_steps=4, blocks=blocks))
'''

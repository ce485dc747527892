"""`TrainingSetup`: what a trainable workload hands the runner.

The workload owns model, data and loss; the runner owns every knob (precision, schedule,
accumulation, checkpointing, compile, sharding). Keeping that split means one runner
applies the knobs identically to every model, including a user's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from tuner.types import TrialConfig


@dataclass
class TrainingSetup:
    """A built workload on one device, ready to train.

    - `model` is on the device in fp32 (autocast handles lower precisions).
    - `blocks` are the sub-modules whose forward may be recomputed in backward when
      activation checkpointing is on (e.g. transformer blocks). The model's own forward
      must call them through `self.checkpoint_wrapper(block, *args)` or an equivalent
      hook that the runner installs via `set_activation_checkpointing`; see the gpt model.
    - `make_batch(micro_batch_size, generator)` returns one training micro batch on the
      device (anything `loss_fn` understands).
    - `loss_fn(model, batch)` returns the scalar training loss.
    - `items_per_sample` is what one sample counts in throughput (tokens per sequence
      for language models, 1 for recommenders).
    - `validation_batches` are fixed, held-out batches for the validation loss.
    - `flops_per_item` is the training FLOPs (forward+backward) per item, for MFU.
    - `validation_metrics(model, batches, val_loss)` returns the workload's task metrics
      on the same validation batches (gpt: perplexity, recsys: AUC), in eval mode.
    """

    model: nn.Module
    make_batch: Callable[[int, torch.Generator], Any]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    items_per_sample: int
    blocks: Sequence[nn.Module] = ()
    validation_batches: Sequence[Any] = ()
    flops_per_item: float | None = None
    set_activation_checkpointing: Callable[[bool], None] | None = None
    notes: list[str] = field(default_factory=list)
    validation_metrics: Callable[[nn.Module, Sequence[Any], float | None], dict[str, float]] | None = None


class Trainable(Protocol):
    """What the trial runner needs of a workload: its throughput unit and `build`.

    `tuner.workloads.base.TrainableWorkload` satisfies it. The runner depends on this
    protocol rather than on the workload classes, so workloads may call the runner
    without an import cycle between the two packages.
    """

    item_unit: ClassVar[str]

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        """Build model, data and loss on `device` for `config`; `params` are resolved."""
        ...

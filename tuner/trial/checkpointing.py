"""Activation checkpointing, and a meter of the bytes autograd saves for backward.

A workload either installs checkpointing itself (`TrainingSetup.set_activation_checkpointing`,
which the built-in models implement) or lists its `blocks`; for the latter we replace each
block's `forward` on the instance with a non-reentrant `torch.utils.checkpoint` call.
Non-reentrant checkpointing works with autocast, torch.compile and inputs that do not
require grad, which the reentrant variant does not.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuner.trial.setup import TrainingSetup


def enable_activation_checkpointing(setup: TrainingSetup) -> list[str]:
    """Turn checkpointing on for `setup`; returns notes for the trial result."""
    if setup.set_activation_checkpointing is not None:
        setup.set_activation_checkpointing(True)
        return []
    if not setup.blocks:
        return [
            "activation checkpointing had no effect: the workload exposes no blocks "
            "and no set_activation_checkpointing hook"
        ]
    for block in setup.blocks:
        checkpoint_block_forward(block)
    return []


def checkpoint_block_forward(block: nn.Module) -> None:
    """Make `block` recompute its forward in backward instead of keeping activations.

    Patching the instance (not the class) leaves other instances of the block's class alone.
    The recomputation only happens when grad is enabled, so eval stays a plain forward.
    """
    if getattr(block, "_tuner_checkpointed", False):
        return
    original = block.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(original, *args, use_reentrant=False, **kwargs)
        return original(*args, **kwargs)

    block.forward = forward  # type: ignore[method-assign]
    block._tuner_checkpointed = True  # type: ignore[assignment]


class SavedActivationMeter:
    """Sums the bytes of distinct non-parameter tensors autograd saves for backward.

    Under non-reentrant checkpointing the checkpointed blocks save through their own
    hooks (innermost wins), so only what is kept outside them is counted: exactly the
    memory checkpointing saves. Tensors a checkpointed block keeps as inputs for its
    recomputation are not saved through autograd and are not counted.
    """

    def __init__(self, parameters: Iterable[torch.Tensor]) -> None:
        self._parameter_storages = {_storage_key(p) for p in parameters}
        self._seen: set[tuple[int, int]] = set()
        self.saved_bytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            key = _storage_key(tensor)
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
            self.saved_bytes += tensor.numel() * tensor.element_size()
            return tensor
        if key not in self._parameter_storages and key not in self._seen:
            self._seen.add(key)
            self.saved_bytes += key[1]
        return tensor

    @contextlib.contextmanager
    def measuring(self) -> Iterator[SavedActivationMeter]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return (storage.data_ptr(), storage.nbytes())

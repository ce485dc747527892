"""A tiny trainable workload for tests/test_distributed.py, importable by rank processes.

Rank processes unpickle the workload by its class, so it must live in a module they can
import (the test process's sys.path travels to them), not inside a test file.

Besides training a small residual MLP on a planted classification signal, it can make
one rank fail in a chosen way at a chosen micro batch, as real trials fail:
`raise` (an exception), `oom` (a real allocation the allocator refuses), `oom_error`
(the `torch.OutOfMemoryError` CUDA's allocator raises), `exit` (the
process dies without a word) and `hang` (the step never finishes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner.types import TrialConfig
from tuner.workloads import TrainableWorkload, WorkloadParam, register_workload

CLASSES = 10
#: Larger than any 64-bit process's address space: every allocator must refuse it.
IMPOSSIBLE_BYTES = 1 << 52


@register_workload
class TinyStackWorkload(TrainableWorkload):
    name = "dist_tiny"
    item_unit = "samples"
    params = (
        WorkloadParam("layers", "int", 2, "residual MLP blocks", low=1),
        WorkloadParam("width", "int", 64, "hidden width", low=2),
        WorkloadParam(
            "fail_mode",
            "str",
            "none",
            "how fail_rank fails",
            choices=("none", "raise", "oom", "oom_error", "exit", "hang"),
        ),
        WorkloadParam("fail_rank", "int", 1, "the rank that fails", low=0),
        WorkloadParam("fail_at_call", "int", 3, "training micro batch (1-based) at which it fails", low=1),
        WorkloadParam("pid_dir", "str", "", "where each rank writes its pid (for orphan checks)"),
    )

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> Any:
        import torch
        import torch.distributed as dist
        from torch import nn
        from torch.nn import functional as F

        from tuner.trial.setup import TrainingSetup

        rank = dist.get_rank() if dist.is_initialized() else 0
        if params["pid_dir"]:
            Path(params["pid_dir"], f"rank{rank}.pid").write_text(str(os.getpid()))
        width = int(params["width"])

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm = nn.LayerNorm(width)
                self.up = nn.Linear(width, 2 * width)
                self.down = nn.Linear(2 * width, width)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x + self.down(F.gelu(self.up(self.norm(x))))

        class Stack(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inp = nn.Linear(width, width)
                self.blocks = nn.ModuleList(Block() for _ in range(int(params["layers"])))
                self.head = nn.Linear(width, CLASSES)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = self.inp(x)
                for block in self.blocks:
                    x = block(x)
                return self.head(x)

        model = Stack().to(device)
        # The planted signal is the same for every seed and rank: the label is the
        # argmax of a fixed projection, so the loss really falls as the model learns.
        teacher = torch.randn(width, CLASSES, generator=torch.Generator().manual_seed(99)).to(device)
        failure = _Failure(params, rank, device)

        def make_batch(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(size, width, generator=generator, device=generator.device).to(device)
            return x, (x @ teacher).argmax(dim=1)

        def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            if net.training:
                failure.maybe_fail()
            x, y = batch
            return F.cross_entropy(net(x).float(), y)

        held_out = torch.Generator(device=device).manual_seed(7)
        return TrainingSetup(
            model=model,
            make_batch=make_batch,
            loss_fn=loss_fn,
            items_per_sample=1,
            blocks=tuple(model.blocks),
            validation_batches=[make_batch(16, held_out) for _ in range(2)],
        )


class _Failure:
    def __init__(self, params: Mapping[str, Any], rank: int, device: str) -> None:
        self.mode = params["fail_mode"] if rank == params["fail_rank"] else "none"
        self.at_call = int(params["fail_at_call"])
        self.device = device
        self.calls = 0

    def maybe_fail(self) -> None:
        self.calls += 1
        if self.mode == "none" or self.calls != self.at_call:
            return
        if self.mode == "raise":
            raise ValueError(f"injected failure at training micro batch {self.calls}")
        if self.mode == "oom":
            import torch

            # A real allocation failure: torch.OutOfMemoryError on CUDA, the CPU
            # allocator's "can't allocate memory" RuntimeError on the CPU.
            torch.empty(IMPOSSIBLE_BYTES, dtype=torch.uint8, device=self.device)
        if self.mode == "oom_error":
            import torch

            # The exception type CUDA's caching allocator raises, with its message shape.
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 1 has a total capacity of 139.80 GiB"
            )
        if self.mode == "exit":
            os._exit(7)
        if self.mode == "hang":
            while True:
                time.sleep(1)

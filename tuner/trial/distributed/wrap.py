"""Applying `sharding_stage` (and the DDP communication knobs) to a built model.

| stage | wrapper | what each rank keeps |
| --- | --- | --- |
| 0 | DistributedDataParallel | full params, grads, optimizer state |
| 1 | DDP + ZeroRedundancyOptimizer(AdamW) | full params and grads, 1/N of optimizer state |
| 2 | FSDP2 `fully_shard(reshard_after_forward=False)` per block, then the root | 1/N of grads and optimizer state; params gathered in forward stay until backward |
| 3 | FSDP2 `fully_shard(reshard_after_forward=True)` | 1/N of everything; params re-gathered in backward |

Precision with FSDP2: the same autocast as stages 0-1 (so a precision name means the
same op-level numerics at every stage) plus a `MixedPrecisionPolicy` whose param dtype is
the autocast dtype, so parameters are all-gathered in bf16/fp16 (half the bytes); the
gradients are reduced in fp32, as DDP does. `bucket_cap_mb` and `grad_compression` are
DDP knobs: at stages 2-3 they do nothing, and the result notes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from tuner.knobs import KNOBS
from tuner.trial.precision import PrecisionPlan
from tuner.trial.setup import TrainingSetup
from tuner.trial.train_step import build_optimizer
from tuner.types import TrialConfig

#: PowerSGD's low rank: rank 1 is the compression the PowerSGD paper starts from.
POWERSGD_RANK = 1
#: Optimizer steps of plain all-reduce before PowerSGD compresses (it must be >= 2 with
#: error feedback); trials are short, so compression has to start almost at once.
POWERSGD_START_STEP = 2


@dataclass
class ShardedTraining:
    """A model wrapped for one sharding stage, with its optimizer and loss scaler."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    set_gradient_sync: Callable[[bool], None]
    notes: list[str] = field(default_factory=list)

    def optimizer_state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (its shard at stages 1-3)."""
        optimizer = self.optimizer
        local = optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
        return sum(
            local_bytes(value)
            for state in local.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )

    def parameter_bytes(self) -> int:
        """Bytes of the parameters this rank holds right now (local shards for DTensors)."""
        return sum(local_bytes(p) for p in self.model.parameters())


def local_bytes(tensor: torch.Tensor) -> int:
    if isinstance(tensor, DTensor):
        tensor = tensor.to_local()
    return tensor.numel() * tensor.element_size()


def wrap_for_stage(
    setup: TrainingSetup, config: TrialConfig, device: torch.device, plan: PrecisionPlan
) -> ShardedTraining:
    if config.sharding_stage <= 1:
        return _data_parallel(setup, config, device, plan)
    return _fully_sharded(setup, config, device, plan)


def _data_parallel(
    setup: TrainingSetup, config: TrialConfig, device: torch.device, plan: PrecisionPlan
) -> ShardedTraining:
    ddp = DistributedDataParallel(
        setup.model,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=config.bucket_cap_mb,
    )
    register_compression_hook(ddp, config.grad_compression)
    plain = build_optimizer(
        setup.model, learning_rate=config.learning_rate, weight_decay=config.weight_decay, device=device
    )
    optimizer: torch.optim.Optimizer = plain
    if config.sharding_stage == 1:
        # Same parameter groups (decay on matrices only) and kernel choice as stage 0, so
        # the two stages differ only in where the state lives.
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in plain.param_groups]
        extra = {"fused": True} if device.type == "cuda" else {}
        optimizer = ZeroRedundancyOptimizer(
            groups, optimizer_class=torch.optim.AdamW, lr=config.learning_rate, **extra
        )

    def set_gradient_sync(enabled: bool) -> None:
        # What `DDP.no_sync()` toggles; settable per micro batch without a context.
        ddp.require_backward_grad_sync = enabled

    return ShardedTraining(
        model=ddp,
        optimizer=optimizer,
        scaler=plan.make_grad_scaler(config.loss_scale, config.loss_scale_growth_interval),
        set_gradient_sync=set_gradient_sync,
    )


def register_compression_hook(ddp: DistributedDataParallel, compression: str) -> None:
    """Install the DDP communication hook for `grad_compression` ("none" keeps all-reduce)."""
    if compression == "none":
        return
    if compression == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif compression == "bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif compression == "powersgd":
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=POWERSGD_RANK,
            start_powerSGD_iter=POWERSGD_START_STEP,
        )
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    else:  # TrialConfig validates the knob; this guards direct callers
        raise ValueError(f"grad_compression={compression!r} is not one of none, fp16, bf16, powersgd")


def _fully_sharded(
    setup: TrainingSetup, config: TrialConfig, device: torch.device, plan: PrecisionPlan
) -> ShardedTraining:
    reshard = config.sharding_stage == 3
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = (
        MixedPrecisionPolicy(param_dtype=plan.autocast_dtype, reduce_dtype=torch.float32)
        if plan.autocast_dtype is not None
        else MixedPrecisionPolicy()
    )
    notes = _ignored_ddp_knob_notes(config)
    if not setup.blocks:
        notes.append("the workload lists no blocks: FSDP2 shards the whole model as one unit")
    # Blocks first, then the root: each block becomes its own all-gather unit, so only
    # one block's full parameters need to exist at a time (stage 3).
    for block in setup.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
    fully_shard(setup.model, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
    optimizer = build_optimizer(
        setup.model, learning_rate=config.learning_rate, weight_decay=config.weight_decay, device=device
    )
    scaler = None
    if plan.uses_loss_scaling:
        # Each rank sees only its gradient shard; this scaler all-reduces "found inf" so
        # every rank skips the same steps.
        scaler = ShardedGradScaler(
            device.type, init_scale=config.loss_scale, growth_interval=config.loss_scale_growth_interval
        )
    model = setup.model
    return ShardedTraining(
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        set_gradient_sync=model.set_requires_gradient_sync,  # type: ignore[operator]
        notes=notes,
    )


def _ignored_ddp_knob_notes(config: TrialConfig) -> list[str]:
    notes = []
    if config.grad_compression != "none":
        notes.append(
            f"grad_compression={config.grad_compression} is a DDP hook (stages 0-1); "
            f"it has no effect at sharding_stage {config.sharding_stage}"
        )
    if config.bucket_cap_mb != KNOBS["bucket_cap_mb"].default:
        notes.append(
            f"bucket_cap_mb is a DDP knob (stages 0-1); it has no effect at sharding_stage {config.sharding_stage}"
        )
    return notes

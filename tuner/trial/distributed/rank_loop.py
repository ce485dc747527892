"""The training loop of one rank: the single-process step, wrapped for a sharding stage.

The step itself (forward/backward over micro batches, optimizer step, LR schedule,
precision) is `train_step`'s, shared with the single-process runner. What this loop adds:

- each rank draws its own micro batches from a generator seeded with (seed, rank), so
  the global batch is `world_size` different, reproducible shards, whatever the stage;
- the step's loss is averaged over ranks (the loss of the global batch), and every stop
  decision (divergence, the time budget, the pruner's answer to rank 0) is made the
  same on all ranks through a collective, so they always stop at the same step;
- one warm-up step is profiled for the communication share (`comm`);
- a quality budget (items or training seconds, validation checkpoints, a target loss;
  `tuner.trial.quality_budget`) runs as in the single-process runner: every rank
  evaluates the same validation batches at each checkpoint (FSDP2 needs all ranks in
  each forward), the loss is averaged over ranks, rank 0 asks the pruner, and all ranks
  stop together at the target. The seconds of a time budget are the mean over ranks of
  each step's time, so every rank follows the same LR schedule and stops at the same step.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from tuner.trial.checkpointing import enable_activation_checkpointing
from tuner.trial.device import device_clock
from tuner.trial.distributed.comm import CommMeasurement, profiled_communication
from tuner.trial.distributed.wrap import ShardedTraining, wrap_for_stage
from tuner.trial.memory_meter import MemoryMeter
from tuner.trial.precision import PrecisionPlan
from tuner.trial.progress import TrialProgress
from tuner.trial.quality_budget import BudgetRun
from tuner.trial.target import target_metrics
from tuner.trial.train_step import (
    accumulate_gradients,
    apply_optimizer_step,
    record_validation,
    set_learning_rate,
)
from tuner.types import TrialResult, TrialStatus

if TYPE_CHECKING:
    from tuner.trial.distributed.rank_spec import RankChannel, RankSpec
    from tuner.trial.setup import TrainingSetup

#: Keeps the data seeds of different ranks (and of nearby trial seeds) apart.
RANK_SEED_STRIDE = 1_000_003


class RankTraining:
    def __init__(
        self,
        *,
        rank: int,
        spec: RankSpec,
        device: torch.device,
        plan: PrecisionPlan,
        progress: TrialProgress,
        meter: MemoryMeter,
        channel: RankChannel,
        started: float,
    ) -> None:
        self.rank = rank
        self.spec = spec
        self.config = spec.request.config
        self.budget = spec.request.budget
        self.device = device
        self.plan = plan
        self.progress = progress
        self.meter = meter
        self.channel = channel
        self.started = started
        self.world_size = spec.request.config.world_size
        self.budget_run: BudgetRun | None = None

    def execute(self) -> TrialResult:
        config, progress = self.config, self.progress
        # The same seed on every rank before build: identical initial weights, which
        # FSDP2 relies on (it shards each rank's copy) and DDP would broadcast anyway.
        torch.manual_seed(self.spec.request.seed)
        setup = self.spec.workload.build(
            self.spec.request.params, config, str(self.device), self.spec.request.seed
        )
        torch.manual_seed(self.spec.request.seed + RANK_SEED_STRIDE * self.rank)  # per-rank dropout
        for note in setup.notes:
            progress.note(note)
        progress.items_per_step = (
            config.micro_batch_size
            * config.gradient_accumulation_steps
            * setup.items_per_sample
            * self.world_size
        )
        progress.flops_per_item = setup.flops_per_item
        progress.metrics["model_parameters"] = float(sum(p.numel() for p in setup.model.parameters()))
        progress.metrics["world_size"] = float(self.world_size)
        progress.metrics["sharding_stage"] = float(config.sharding_stage)
        if config.activation_checkpointing:
            for note in enable_activation_checkpointing(setup):
                progress.note(note)
        setup.model.train()
        training = wrap_for_stage(setup, config, self.device, self.plan)
        for note in training.notes:
            progress.note(note)
        generator = torch.Generator(device=self.device).manual_seed(
            self.spec.request.seed + RANK_SEED_STRIDE * self.rank
        )
        with self.plan.matmul_mode():
            stopped = self._train(setup, training, generator)
            if stopped is not None:
                return stopped
            self._validate(setup, training)
        return self._result(TrialStatus.OK)

    def _train(
        self, setup: TrainingSetup, training: ShardedTraining, generator: torch.Generator
    ) -> TrialResult | None:
        config, budget, progress = self.config, self.budget, self.progress
        train_model = torch.compile(training.model) if config.compile else training.model
        if not config.compile:
            self._measure_parameters_after_first_forward(training)
        accumulation = config.gradient_accumulation_steps
        micro_index = 0

        def next_batch() -> Any:
            # Called at the start of each micro batch: only the last one of a step
            # synchronises gradients (DDP no_sync / FSDP2 requires_gradient_sync).
            nonlocal micro_index
            training.set_gradient_sync(micro_index % accumulation == accumulation - 1)
            micro_index += 1
            return setup.make_batch(config.micro_batch_size, generator)

        # Steps, LR schedule and checkpoints of a step budget or a quality budget; the
        # same on every rank (items are global, seconds agreed in `_agree`).
        run = BudgetRun(
            budget, items_per_step=progress.items_per_step, peak_lr=config.learning_rate,
            warmup_ratio=config.warmup_ratio,
        )
        checkpoints = budget.eval_every_items is not None
        if budget.quality_budget or checkpoints:
            self.budget_run = run
        # The last warm-up step is profiled: warmed up, yet not part of the throughput.
        profiled_step = max(budget.warmup_steps - 1, 0)
        for step in range(run.total_steps):
            lr = run.lr(step)
            set_learning_rate(training.optimizer, lr)
            profiling = (
                profiled_communication(self.device) if step == profiled_step else contextlib.nullcontext()
            )
            with profiling as comm:
                began = device_clock(self.device)
                loss = accumulate_gradients(
                    train_model, setup.loss_fn, next_batch, accumulation, self.plan, training.scaler
                )
                # Always step, even on a non-finite loss: the ranks must run the same
                # collectives (ZeRO broadcasts in step) before they can agree to stop.
                outcome = apply_optimizer_step(training.optimizer, training.scaler)
                skipped = outcome.skipped
                elapsed = device_clock(self.device) - began
            progress.timer.record(elapsed)
            if isinstance(comm, CommMeasurement):
                comm.step_s = elapsed
                self._record_communication(comm, step)
            if step == 0:
                progress.metrics["optimizer_state_bytes_per_rank"] = float(training.optimizer_state_bytes())
                progress.metrics["param_bytes_per_rank_between_steps"] = float(training.parameter_bytes())

            loss_value, budget_spent, step_seconds = self._agree(loss, progress.timer.budget_spent(), elapsed)
            run.advance(step_seconds)
            progress.steps_run = step + 1
            progress.loss_curve.append(loss_value)
            progress.lr_trace.append(lr)
            self.channel.step_done(step + 1)
            if training.scaler is not None:
                progress.final_loss_scale = outcome.loss_scale
                progress.skipped_steps += int(skipped)
            if not math.isfinite(loss_value) and (training.scaler is None or not skipped):
                kind = "nan" if math.isnan(loss_value) else "inf"
                return self._result(TrialStatus.FAILED, reason=f"loss diverged ({kind}) at step {step + 1}")
            if checkpoints and run.checkpoint_due():
                # Validation values at fixed item checkpoints go to the pruner, as in the
                # single-process runner: comparable across configs.
                value = self._validation_loss(setup, training)
                index = run.record(value)
                progress.val_curve = list(run.curve)
                if value is not None and self._prune_decision(index, value):
                    return self._result(
                        TrialStatus.PRUNED,
                        reason=f"pruned by the search's pruner at validation checkpoint {index} ({run.items} items)",
                    )
                if run.reached_target(value):
                    progress.note(
                        f"stopped at {run.items} items: validation loss reached the target {budget.target_val_loss:g}"
                    )
                    break
            elif not checkpoints and (step + 1) % budget.report_every == 0 and math.isfinite(loss_value):
                if self._prune_decision(step + 1, loss_value):
                    return self._result(
                        TrialStatus.PRUNED, reason=f"pruned by the search's pruner after step {step + 1}"
                    )
            if run.spent():
                break
            if budget_spent:
                if step + 1 < budget.max_steps:
                    progress.note(
                        f"stopped after {step + 1} of {budget.max_steps} steps: "
                        f"max_seconds={budget.max_seconds:g} of timed steps reached"
                    )
                break
        return None

    def _agree(self, loss: torch.Tensor, budget_spent: bool, seconds: float) -> tuple[float, bool, float]:
        """The global batch's mean loss, whether any rank's time budget is spent, and the
        step's mean seconds over ranks (what a time budget counts, the same on every rank)."""
        extra = torch.tensor([float(budget_spent), float(seconds)], device=loss.device)
        packed = torch.cat([loss.detach().float().reshape(1), extra])
        dist.all_reduce(packed)  # SUM: gloo has no AVG
        total, spent, seconds_sum = packed.tolist()
        return total / self.world_size, spent > 0, seconds_sum / self.world_size

    def _validation_loss(self, setup: TrainingSetup, training: ShardedTraining) -> float | None:
        """The validation loss averaged over ranks (they hold the same weights; averaging
        makes every rank's stop decision read the same number); None when not finite."""
        # Every rank evaluates the same batches: FSDP2 needs all ranks in each forward.
        batches = list(setup.validation_batches)[: self.budget.eval_batches]
        value = record_validation(self.progress, training.model, setup.loss_fn, batches, self.plan)
        packed = torch.tensor([value if value is not None else 0.0, float(value is None)], device=self.device)
        dist.all_reduce(packed)
        total, missing = packed.tolist()
        agreed = None if missing > 0 else total / self.world_size
        self.progress.val_loss = agreed
        return agreed

    def _prune_decision(self, steps_done: int, loss_value: float) -> bool:
        """Rank 0 asks the pruner (through the launching process); all ranks get its answer."""
        decision = self.channel.ask_prune(steps_done, loss_value) if self.rank == 0 else False
        flag = torch.tensor([int(decision)], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _measure_parameters_after_first_forward(self, training: ShardedTraining) -> None:
        """Parameter bytes held right after the first forward: full at stage 2, shards at 3.

        Registered after FSDP2's own hooks, so it runs once the sharded units have (stage
        3) or have not (stage 2) freed their gathered parameters.
        """

        def record(*_: Any) -> None:
            self.progress.metrics["param_bytes_per_rank_after_forward"] = float(training.parameter_bytes())
            handle.remove()

        handle = training.model.register_forward_hook(record)

    def _record_communication(self, comm: CommMeasurement, step: int) -> None:
        share = comm.share
        metrics = self.progress.metrics
        metrics["comm_s"] = comm.comm_s
        metrics["comm_profiled_step_s"] = comm.step_s
        metrics["comm_events"] = float(comm.collectives)
        if share is not None:
            metrics["comm_share"] = share
        if step >= self.budget.warmup_steps:
            self.progress.note(
                f"communication was profiled on step {step + 1}, a timed step (warmup_steps=0): "
                "the profiler's overhead is in the throughput"
            )

    def _validate(self, setup: TrainingSetup, training: ShardedTraining) -> None:
        run = self.budget_run
        if run is None:
            # Every rank evaluates the same batches: FSDP2 needs all ranks in each forward.
            batches = list(setup.validation_batches)[: self.budget.eval_batches]
            record_validation(self.progress, training.model, setup.loss_fn, batches, self.plan)
            return
        if run.curve and run.last_items == run.items:
            value = run.curve[-1][2]  # the last checkpoint is the end of training
        else:
            value = self._validation_loss(setup, training)
            run.curve.append((float(run.items), run.train_seconds, value))
        progress = self.progress
        progress.val_loss = value
        if setup.validation_metrics is not None:
            batches = list(setup.validation_batches)[: self.budget.eval_batches]
            if batches:
                progress.val_metrics.update(setup.validation_metrics(training.model, batches, value))
        progress.val_curve = list(run.curve)
        progress.metrics["train_seconds"] = run.train_seconds
        progress.metrics["items_trained"] = float(run.items)
        if self.budget.target_val_loss is not None:
            progress.val_metrics.update(target_metrics(run.curve, self.budget.target_val_loss))

    def _result(self, status: TrialStatus, *, reason: str | None = None) -> TrialResult:
        return self.progress.finish(
            status, self.meter, started=self.started, reason=reason, peak_flops=self.spec.total_peak_flops
        )

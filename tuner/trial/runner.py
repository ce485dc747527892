"""`run_training_trial`: train one config of a workload for real and measure it.

The workload builds model, data and loss (`TrainingSetup`); this module applies every
knob the same way for all workloads: precision (autocast, GradScaler, TF32), the LR
schedule, gradient accumulation, activation checkpointing, torch.compile. It times the
steps after warm-up, tracks peak memory, reports to the pruner, and always returns a
`TrialResult` (an OOM is a result, not an exception).

Shared pieces live in their own modules so an inference trial kind can reuse them:
`device` (placement, synchronised clock), `precision`, `memory_meter`, `timing`,
`oom` + `guard` (failure -> result), `progress` (partial measurements -> result).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from tuner.errors import ValidationError
from tuner.hardware.telemetry import TelemetrySampler, telemetry_for_device
from tuner.hardware.telemetry_summary import summary_metrics, telemetry_record
from tuner.trial.checkpointing import SavedActivationMeter, enable_activation_checkpointing
from tuner.trial.device import activate_device, device_clock, resolve_device
from tuner.trial.guard import run_guarded
from tuner.trial.memory_meter import MemoryMeter
from tuner.trial.precision import PrecisionPlan, precision_plan
from tuner.trial.progress import TrialProgress
from tuner.trial.quality_budget import BudgetRun
from tuner.trial.target import target_metrics
from tuner.trial.timing import StepTimer
from tuner.trial.train_step import (
    accumulate_gradients,
    apply_optimizer_step,
    build_optimizer,
    record_validation,
    set_learning_rate,
)
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus

if TYPE_CHECKING:
    from tuner.trial.setup import Trainable, TrainingSetup
    from tuner.trial_request import Reporter, TrialRequest

__all__ = ["run_training_trial", "train_on_device"]


def run_training_trial(workload: Trainable, request: TrialRequest, reporter: Reporter) -> TrialResult:
    """Train `workload` with `request.config` for at most `request.budget`; return what was measured.

    `request.params` are the workload's resolved params (resolved once, where the study's
    spec was created). `request.peak_flops` is the device's peak FLOP/s for this
    precision; with it the result has an MFU. Reports go to `reporter.report(steps_done,
    loss)` every `budget.report_every` optimizer steps; a True answer ends the trial as
    `pruned`.
    """
    started = time.perf_counter()
    config = request.config
    if config.world_size > 1:
        # Quality budgets too: the rank loop runs the same BudgetRun (tuner.trial.distributed.rank_loop).
        return _run_multi_process(workload, request, reporter)
    try:
        torch_device = resolve_device(request.device)
        plan = precision_plan(config.precision, torch_device)
    except ValidationError as exc:
        return TrialResult.failed(
            f"invalid trial input: {exc}",
            item_unit=workload.item_unit,
            duration_s=time.perf_counter() - started,
        )
    return train_on_device(workload, request, reporter, torch_device, plan, started=started)


def train_on_device(
    workload: Trainable,
    request: TrialRequest,
    reporter: Reporter,
    torch_device: torch.device,
    plan: PrecisionPlan,
    *,
    started: float,
) -> TrialResult:
    """The single-process trial on a resolved device. Everything that touches the device
    (making it current, the memory meter, NVML) runs inside the trial guard, so a CUDA
    error there is a failed result, not an exception out of the worker."""
    config, budget = request.config, request.budget
    progress = TrialProgress(
        item_unit=workload.item_unit,
        timer=StepTimer(warmup_steps=budget.warmup_steps, max_seconds=budget.max_seconds),
    )
    for note in plan.notes:
        progress.note(note)
    if torch_device.type == "cpu":
        progress.metrics["cpu_threads"] = float(torch.get_num_threads())  # with cpu_s_per_step: what it cost
    meter = MemoryMeter(torch_device)
    run = _TrainingRun(
        workload=workload,
        params=request.params,
        config=config,
        budget=budget,
        reporter=reporter,
        device=torch_device,
        seed=request.seed,
        plan=plan,
        progress=progress,
        meter=meter,
        started=started,
        peak_flops=request.peak_flops,
        peak_memory_bandwidth=request.peak_memory_bandwidth,
    )
    result = run_guarded(
        run.execute,
        progress=progress,
        meter=meter,
        device=torch_device,
        started=started,
        peak_flops=request.peak_flops,
        cleanup=_reset_compiler if config.compile else None,
    )
    return with_nvml_telemetry(result, run.sampler) if run.sampler is not None else result


def with_nvml_telemetry(result: TrialResult, sampler: TelemetrySampler) -> TrialResult:
    """`result` with the sampler's record under `telemetry["nvml"]` and its flat summary
    (`gpu_util_gpu_mean`, `gpu_power_capped_share`, ...) added to `metrics`."""
    summary = sampler.summary()
    telemetry = {**result.telemetry, "nvml": telemetry_record(summary, sampler.samples)}
    metrics = dict(result.metrics)
    if sampler.available and summary["samples"]:
        metrics.update(summary_metrics(summary))
    return dataclasses.replace(result, telemetry=telemetry, metrics=metrics)


class _TrainingRun:
    """One single-process training trial; `execute` returns its result or raises."""

    def __init__(
        self,
        *,
        workload: Trainable,
        params: Mapping[str, Any],
        config: TrialConfig,
        budget: TrialBudget,
        reporter: Reporter,
        device: torch.device,
        seed: int,
        plan: PrecisionPlan,
        progress: TrialProgress,
        meter: MemoryMeter,
        started: float,
        peak_flops: float | None,
        peak_memory_bandwidth: float | None = None,
    ) -> None:
        self.workload = workload
        self.params = params
        self.config = config
        self.budget = budget
        self.reporter = reporter
        self.device = device
        self.seed = seed
        self.plan = plan
        self.progress = progress
        self.meter = meter
        self.started = started
        self.peak_flops = peak_flops
        self.peak_memory_bandwidth = peak_memory_bandwidth
        self.sampler: TelemetrySampler | None = None
        self.budget_run: BudgetRun | None = None

    def execute(self) -> TrialResult:
        # An explicit cuda:N must be the current device, with CUDA initialised, before the
        # meter resets its peak counter (and before anything allocates on it).
        activate_device(self.device)
        self.meter.start()
        # NVML samples the GPU while it trains (None on the CPU): utilisation, power, clocks
        # and throttle reasons say *why* a config is slow, which throughput alone cannot.
        # Made after activation: with CUDA initialised it finds the GPU by its UUID.
        self.sampler = telemetry_for_device(str(self.device), probed_memory_bandwidth=self.peak_memory_bandwidth)
        with self.sampler if self.sampler is not None else contextlib.nullcontext():
            return self._train_and_validate()

    def _train_and_validate(self) -> TrialResult:
        config, progress = self.config, self.progress
        # Seed before build so weight init, dropout and data are the same for the same seed.
        torch.manual_seed(self.seed)
        setup = self.workload.build(self.params, config, str(self.device), self.seed)
        for note in setup.notes:
            progress.note(note)
        progress.items_per_step = (
            config.micro_batch_size * config.gradient_accumulation_steps * setup.items_per_sample
        )
        progress.flops_per_item = setup.flops_per_item
        progress.metrics["model_parameters"] = float(sum(p.numel() for p in setup.model.parameters()))
        if config.activation_checkpointing:
            for note in enable_activation_checkpointing(setup):
                progress.note(note)
        setup.model.train()
        optimizer = build_optimizer(
            setup.model,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            device=self.device,
        )
        train_model = torch.compile(setup.model) if config.compile else setup.model
        scaler = self.plan.make_grad_scaler(config.loss_scale, config.loss_scale_growth_interval)
        # The generator lives on the trial's device so workloads can draw batches there
        # without a host round trip (which would cap GPU throughput for small steps).
        generator = torch.Generator(device=self.device).manual_seed(self.seed)

        with self.plan.matmul_mode():
            stopped = self._train(setup, train_model, optimizer, scaler, generator)
            if stopped is not None:
                return stopped
            if config.compile and progress.timer.warmup_steps_run:
                overhead = progress.timer.warmup_overhead_s()
                if overhead is not None:
                    progress.metrics["compile_s"] = overhead
            elif config.compile:
                progress.note("compile with warmup_steps=0: the first timed step includes compilation")
            self._validate(setup)
        return self._result(TrialStatus.OK)

    def _train(
        self,
        setup: TrainingSetup,
        train_model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        generator: torch.Generator,
    ) -> TrialResult | None:
        """The step loop; returns a result when the trial ends early (pruned, diverged)."""
        config, budget, progress = self.config, self.budget, self.progress
        saved_meter = None if config.compile else SavedActivationMeter(setup.model.parameters())
        # Steps, LR schedule and checkpoints: of a step budget, or of a quality budget
        # (items or training seconds, tuner.trial.quality_budget).
        run = BudgetRun(
            budget,
            items_per_step=progress.items_per_step,
            peak_lr=config.learning_rate,
            warmup_ratio=config.warmup_ratio,
        )
        checkpoints = budget.eval_every_items is not None
        if budget.quality_budget or checkpoints:
            self.budget_run = run

        def next_batch() -> Any:
            return setup.make_batch(config.micro_batch_size, generator)

        for step in range(run.total_steps):
            lr = run.lr(step)
            set_learning_rate(optimizer, lr)
            began = device_clock(self.device)
            loss = accumulate_gradients(
                train_model,
                setup.loss_fn,
                next_batch,
                config.gradient_accumulation_steps,
                self.plan,
                scaler,
                # Measured once, on the first (warm-up) micro batch: hooks cost time.
                first_micro_batch_context=saved_meter.measuring if (saved_meter and step == 0) else None,
            )
            if scaler is None:
                loss_value = float(loss)  # the step's one host sync
                if not math.isfinite(loss_value):
                    return self._diverged(loss_value, step + 1)
                outcome = apply_optimizer_step(optimizer, None)
            else:
                # Loss and loss scale come back together: one host sync, as for bf16.
                outcome = apply_optimizer_step(optimizer, scaler, loss)
                assert outcome.loss is not None
                loss_value = outcome.loss
            skipped = outcome.skipped
            step_seconds = device_clock(self.device) - began
            progress.timer.record(step_seconds)
            run.advance(step_seconds)

            progress.steps_run = step + 1
            progress.loss_curve.append(loss_value)
            progress.lr_trace.append(lr)
            if scaler is not None:
                progress.final_loss_scale = outcome.loss_scale
                progress.skipped_steps += int(skipped)
                if not math.isfinite(loss_value) and not skipped:
                    return self._diverged(loss_value, step + 1)
            if step == 0 and saved_meter is not None:
                progress.metrics["saved_activation_bytes"] = float(saved_meter.saved_bytes)

            if checkpoints and run.checkpoint_due():
                # Validation values at fixed item checkpoints go to the pruner, not the
                # training loss: comparable across configs, and what the objective measures.
                stopped = self._checkpoint(setup, run)
                if stopped is not None:
                    return stopped
                if run.reached_target(progress.val_loss):
                    progress.note(f"stopped at {run.items} items: validation loss reached the target {budget.target_val_loss:g}")
                    break
            elif not checkpoints and (step + 1) % budget.report_every == 0 and math.isfinite(loss_value):
                if self.reporter.report(step + 1, loss_value):
                    return self._result(
                        TrialStatus.PRUNED, reason=f"pruned by the search's pruner after step {step + 1}"
                    )
            if run.spent():
                break
            if progress.timer.budget_spent():
                if step + 1 < budget.max_steps:
                    progress.note(
                        f"stopped after {step + 1} of {budget.max_steps} steps: "
                        f"max_seconds={budget.max_seconds:g} of timed steps reached"
                    )
                break
        return None

    def _validate(self, setup: TrainingSetup) -> None:
        # The eager module shares the compiled one's weights; evaluating it avoids a
        # recompile for eval mode that would cost more than the evaluation itself.
        batches = list(setup.validation_batches)[: self.budget.eval_batches]
        run = self.budget_run
        if run is not None and run.curve and run.last_items == run.items:
            value = run.curve[-1][2]  # the last checkpoint is the end of training
        else:
            value = record_validation(self.progress, setup.model, setup.loss_fn, batches, self.plan)
            if run is not None:
                run.curve.append((float(run.items), run.train_seconds, value))
        self.progress.val_loss = value
        if setup.validation_metrics is not None and batches:
            self.progress.val_metrics.update(setup.validation_metrics(setup.model, batches, value))
        if run is not None:
            self.progress.val_curve = list(run.curve)
            self.progress.metrics["train_seconds"] = run.train_seconds
            self.progress.metrics["items_trained"] = float(run.items)
            if self.budget.target_val_loss is not None:
                self.progress.val_metrics.update(target_metrics(run.curve, self.budget.target_val_loss))

    def _checkpoint(self, setup: TrainingSetup, run: BudgetRun) -> TrialResult | None:
        """Validate at a checkpoint and report it to the pruner; the pruned result, or None."""
        batches = list(setup.validation_batches)[: self.budget.eval_batches]
        value = record_validation(self.progress, setup.model, setup.loss_fn, batches, self.plan)
        index = run.record(value)
        self.progress.val_curve = list(run.curve)
        if value is not None and self.reporter.report(index, value):
            return self._result(
                TrialStatus.PRUNED,
                reason=f"pruned by the search's pruner at validation checkpoint {index} ({run.items} items)",
            )
        return None

    def _diverged(self, loss_value: float, step: int) -> TrialResult:
        kind = "nan" if math.isnan(loss_value) else "inf"
        return self._result(TrialStatus.FAILED, reason=f"loss diverged ({kind}) at step {step}")

    def _result(self, status: TrialStatus, *, reason: str | None = None) -> TrialResult:
        return self.progress.finish(
            status, self.meter, started=self.started, reason=reason, peak_flops=self.peak_flops
        )


def _reset_compiler() -> None:
    # Compiled graphs of a finished trial only hold memory and count against the
    # recompile limit of the next trial in this worker process.
    torch.compiler.reset()


def _run_multi_process(workload: Trainable, request: TrialRequest, reporter: Reporter) -> TrialResult:
    started = time.perf_counter()
    world_size = request.config.world_size
    try:
        from tuner.trial.distributed.run import run_distributed_trial
    except ImportError as exc:
        return TrialResult.failed(
            f"multi-process trials (world_size={world_size}) are not available: "
            f"tuner.trial.distributed.run could not be imported ({exc}); use world_size: 1",
            item_unit=workload.item_unit,
            duration_s=time.perf_counter() - started,
        )
    try:
        return run_distributed_trial(workload, request, reporter)
    except Exception as exc:  # the distributed runner should not raise; never let it reach the caller
        return TrialResult.failed(
            f"{type(exc).__name__}: {exc}"[:500],
            item_unit=workload.item_unit,
            duration_s=time.perf_counter() - started,
        )

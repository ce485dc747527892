"""The trial runner trains for real on CPU and applies every knob it is given.

Models are tiny (1-2 blocks, d_model 32, 32 tokens) so the whole file runs in well under
a minute on two cores; each test checks behaviour that would change if a knob were
ignored or mis-wired.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn

from tests.trial_requests import trial_request
from tuner.trial.checkpointing import enable_activation_checkpointing
from tuner.trial.precision import PrecisionPlan, precision_plan
from tuner.trial.runner import run_training_trial
from tuner.trial.schedule import lr_at
from tuner.trial.setup import TrainingSetup
from tuner.trial.train_step import accumulate_gradients
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import NullReporter, TrainableWorkload
from tuner.workloads.gpt import GPTWorkload
from tuner.workloads.recsys import RecsysWorkload

TINY_GPT = {"layers": 2, "d_model": 32, "heads": 2}
ONE_BLOCK_GPT = {"layers": 1, "d_model": 32, "heads": 2}
TINY_RECSYS = {"tables": 3, "rows": 500, "dim": 8}


def gpt_config(**changes: Any) -> TrialConfig:
    base: dict[str, Any] = {"micro_batch_size": 4, "max_sequence_length": 32, "learning_rate": 3e-3}
    return TrialConfig(**{**base, **changes})


def run(
    workload: TrainableWorkload,
    config: TrialConfig,
    *,
    params: Mapping[str, Any] | None = None,
    steps: int = 4,
    warmup: int = 1,
    seed: int = 0,
    **budget: Any,
) -> TrialResult:
    return run_training_trial(
        workload,
        trial_request(
            workload,
            config,
            TINY_GPT if params is None else params,
            TrialBudget(max_steps=steps, warmup_steps=warmup, **budget),
            device="cpu",
            seed=seed,
        ),
        NullReporter(),
    )


def head_tail_means(curve: tuple[float, ...], n: int = 5) -> tuple[float, float]:
    return sum(curve[:n]) / n, sum(curve[-n:]) / n


# --- learning and the result record -------------------------------------------------


def test_gpt_learns_real_text_and_reports_a_complete_result() -> None:
    config = gpt_config(micro_batch_size=8)
    result = run_training_trial(
        GPTWorkload(),
        trial_request(
            GPTWorkload(),
            config,
            TINY_GPT,
            TrialBudget(max_steps=30, warmup_steps=3),
            device="cpu",
            peak_flops=1e12,
        ),
        NullReporter(),
    )
    assert result.status is TrialStatus.OK, result.reason
    first, last = head_tail_means(result.loss_curve)
    assert result.loss_curve[0] > math.log(256) - 0.3  # starts near uniform over bytes
    assert last < first - 1.0, result.loss_curve
    assert result.val_loss is not None and result.val_loss < math.log(256) - 1.0
    assert (result.steps_run, result.timed_steps, result.warmup_steps) == (30, 27, 3)
    assert len(result.loss_curve) == len(result.lr_trace) == 30
    assert result.item_unit == "tokens"
    tokens_per_step = 8 * 32
    assert result.metrics["items_per_optimizer_step"] == tokens_per_step
    assert result.items_per_s == pytest.approx(tokens_per_step / result.step_time_s)
    assert result.memory_kind == "process_rss"
    model_bytes = result.metrics["model_parameters"] * 4
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > model_bytes
    flops_per_token = 6 * result.metrics["model_parameters"] + 12 * 2 * 32 * 32  # 6N + 12·L·d·seq
    assert result.mfu == pytest.approx(result.items_per_s * flops_per_token / 1e12, rel=1e-6)
    assert result.duration_s is not None and result.duration_s >= sum(
        [result.step_time_s] * result.timed_steps
    )
    # what the steps cost this process: its intra-op threads and CPU seconds per timed step
    assert result.metrics["cpu_threads"] == torch.get_num_threads()
    assert 0 < result.metrics["cpu_s_per_step"] < 60


def test_recsys_learns_the_planted_click_signal() -> None:
    result = run(
        RecsysWorkload(), TrialConfig(micro_batch_size=256, learning_rate=2e-2), params=TINY_RECSYS, steps=30
    )
    assert result.status is TrialStatus.OK, result.reason
    first, last = head_tail_means(result.loss_curve)
    assert last < first - 0.08, result.loss_curve
    assert result.val_loss is not None and result.val_loss < math.log(2) - 0.1
    assert result.item_unit == "samples"
    assert result.metrics["items_per_optimizer_step"] == 256


def test_same_seed_gives_the_same_losses_and_another_seed_does_not() -> None:
    config = gpt_config()
    a, b = run(GPTWorkload(), config, seed=7), run(GPTWorkload(), config, seed=7)
    c = run(GPTWorkload(), config, seed=8)
    assert a.loss_curve == b.loss_curve and a.val_loss == b.val_loss
    assert c.loss_curve != a.loss_curve


def test_max_seconds_stops_timing_early_after_at_least_one_timed_step() -> None:
    result = run(
        RecsysWorkload(),
        TrialConfig(micro_batch_size=64),
        params=TINY_RECSYS,
        steps=10_000,
        warmup=2,
        max_seconds=0.05,
    )
    assert result.status is TrialStatus.OK
    assert result.timed_steps >= 1 and result.steps_run == result.warmup_steps + result.timed_steps
    assert result.steps_run < 10_000
    assert any("max_seconds" in note for note in result.notes)


# --- precision ----------------------------------------------------------------------


def test_tf32_is_a_noop_on_cpu_and_says_so() -> None:
    fp32 = run(GPTWorkload(), gpt_config(precision="fp32"))
    tf32 = run(GPTWorkload(), gpt_config(precision="tf32"))
    assert tf32.status is TrialStatus.OK
    assert tf32.loss_curve == fp32.loss_curve
    assert any("tf32 is a no-op on CPU" in note for note in tf32.notes)
    assert not any("tf32" in note for note in fp32.notes)


def test_bf16_trains_under_autocast() -> None:
    fp32 = run(GPTWorkload(), gpt_config(precision="fp32"), params=ONE_BLOCK_GPT)
    bf16 = run(GPTWorkload(), gpt_config(precision="bf16"), params=ONE_BLOCK_GPT)
    assert bf16.status is TrialStatus.OK, bf16.reason
    assert bf16.loss_curve != fp32.loss_curve  # autocast really changed the arithmetic
    assert bf16.loss_curve == pytest.approx(fp32.loss_curve, abs=0.05)
    assert bf16.skipped_steps == 0 and bf16.final_loss_scale is None  # no loss scaling for bf16


def test_fp16_grad_scaler_starts_at_the_configured_scale_and_grows_on_schedule() -> None:
    # fp16 autocast is emulated (slow) on CPU: two sequences of 16 tokens suffice.
    small = {"micro_batch_size": 2, "max_sequence_length": 16}
    config = gpt_config(precision="fp16", loss_scale=1024.0, loss_scale_growth_interval=2, **small)
    fp16 = run(GPTWorkload(), config, params=ONE_BLOCK_GPT, steps=6)
    fp32 = run(GPTWorkload(), gpt_config(**small), params=ONE_BLOCK_GPT, steps=6)
    assert fp16.status is TrialStatus.OK, fp16.reason
    assert fp16.skipped_steps == 0
    # 6 clean steps with growth every 2 -> three doublings of 1024.
    assert fp16.final_loss_scale == 1024.0 * 2**3
    assert fp16.loss_curve != fp32.loss_curve
    assert fp16.loss_curve == pytest.approx(fp32.loss_curve, abs=0.05)


@pytest.mark.parametrize(
    ("precision", "matmul", "cudnn_tf32"), [("tf32", "high", True), ("fp32", "highest", False)]
)
def test_cuda_tf32_switches_are_set_for_the_trial_and_restored_after(
    precision: str, matmul: str, cudnn_tf32: bool
) -> None:
    # The switches are process-wide flags, readable without a GPU; only the CUDA plan sets them.
    plan = PrecisionPlan(name=precision, device_type="cuda", autocast_dtype=None, uses_loss_scaling=False)
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("medium")
    try:
        with plan.matmul_mode():
            assert torch.get_float32_matmul_precision() == matmul
            assert torch.backends.cudnn.allow_tf32 is cudnn_tf32
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before[0])
    assert torch.backends.cudnn.allow_tf32 == before[1]


def test_fp16_overflowing_loss_scale_skips_steps_and_backs_off() -> None:
    config = gpt_config(precision="fp16", loss_scale=2.0**40, micro_batch_size=2, max_sequence_length=16)
    result = run(GPTWorkload(), config, params=ONE_BLOCK_GPT, steps=4)
    assert result.status is TrialStatus.OK, result.reason  # skipped steps are not divergence
    assert result.skipped_steps >= 1
    # Each skipped step halves the scale (growth needs 2000 clean steps).
    assert result.final_loss_scale == 2.0**40 / 2**result.skipped_steps


# --- learning-rate schedule ---------------------------------------------------------


class ConstantGradientWorkload(TrainableWorkload):
    """loss = sum(w): every gradient is 1, so each AdamW step moves w by its LR (no decay)."""

    name = "test-constant-gradient"

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        self.model = nn.Linear(1, 4, bias=False).to(device)
        self.initial = self.model.weight.detach().clone()
        return TrainingSetup(
            model=self.model,
            make_batch=lambda size, generator: None,
            loss_fn=lambda model, batch: model.weight.sum(),
            items_per_sample=1,
        )


@pytest.mark.parametrize("warmup_ratio", [0.0, 0.25])
def test_lr_schedule_is_linear_warmup_then_cosine_and_is_applied(warmup_ratio: float) -> None:
    peak, steps = 0.01, 8
    workload = ConstantGradientWorkload()
    result = run(workload, TrialConfig(learning_rate=peak, warmup_ratio=warmup_ratio), params={}, steps=steps)
    assert result.status is TrialStatus.OK, result.reason
    warm = round(warmup_ratio * steps)
    expected = [peak * (s + 1) / warm for s in range(warm)] + [
        peak * 0.5 * (1 + math.cos(math.pi * k / (steps - warm))) for k in range(steps - warm)
    ]
    assert result.lr_trace == pytest.approx(expected, rel=1e-12)
    if warmup_ratio == 0:
        assert result.lr_trace[0] == peak  # cosine from the very first step
    else:
        assert result.lr_trace[:3] == pytest.approx([peak / 2, peak, peak])
    # Adam's normalised update of a constant gradient is exactly lr, so the weights moved
    # by the sum of the traced LRs: the schedule reached the optimizer.
    moved = workload.initial - workload.model.weight.detach()
    assert moved == pytest.approx(torch.full_like(moved, sum(expected)), rel=1e-6)


def test_lr_schedule_with_warmup_covering_every_step_only_rises() -> None:
    lrs = [lr_at(s, peak_lr=1.0, max_steps=20, warmup_ratio=0.99) for s in range(20)]
    assert lrs == pytest.approx([(s + 1) / 20 for s in range(20)])


# --- gradient accumulation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("workload", "params", "config"),
    [
        (GPTWorkload(), TINY_GPT, gpt_config()),
        (RecsysWorkload(), TINY_RECSYS, TrialConfig(micro_batch_size=32)),
    ],
    ids=["gpt", "recsys"],
)
def test_two_accumulated_micro_batches_give_the_gradient_of_one_twice_as_large(
    workload: TrainableWorkload, params: dict[str, Any], config: TrialConfig
) -> None:
    torch.manual_seed(0)
    setup = workload.build(workload.resolve_params(params), config, "cpu", 0)
    generator = torch.Generator().manual_seed(3)
    halves = [setup.make_batch(4, generator) for _ in range(2)]
    whole = tuple(torch.cat(parts) for parts in zip(*halves, strict=True))
    plan = precision_plan("fp32", torch.device("cpu"))
    twin = copy.deepcopy(setup.model)

    accumulated = iter(halves)
    loss_acc = accumulate_gradients(setup.model, setup.loss_fn, lambda: next(accumulated), 2, plan, None)
    loss_one = accumulate_gradients(twin, setup.loss_fn, lambda: whole, 1, plan, None)

    assert float(loss_acc) == pytest.approx(float(loss_one), rel=1e-5)
    grads = [(a.grad, b.grad) for a, b in zip(setup.model.parameters(), twin.parameters(), strict=True)]
    assert all(a is not None and b is not None for a, b in grads)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class CountingGPT(GPTWorkload):
    """The gpt workload, counting how many micro batches the runner draws."""

    name = "test-counting-gpt"
    batches_drawn = 0

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        setup = super().build(params, config, device, seed)
        inner = setup.make_batch

        def counting(size: int, generator: torch.Generator) -> Any:
            assert size == config.micro_batch_size
            self.batches_drawn += 1
            return inner(size, generator)

        setup.make_batch = counting
        return setup


def test_accumulation_draws_micro_batches_per_step_and_counts_items_per_optimizer_step() -> None:
    workload = CountingGPT()
    config = gpt_config(micro_batch_size=2, gradient_accumulation_steps=3, max_sequence_length=16)
    result = run(workload, config, steps=4)
    assert result.status is TrialStatus.OK, result.reason
    assert workload.batches_drawn == 4 * 3
    assert result.metrics["items_per_optimizer_step"] == 2 * 3 * 16  # micro batch x accumulation x tokens
    assert result.items_per_s * result.step_time_s == pytest.approx(2 * 3 * 16)
    assert len(result.loss_curve) == 4  # one loss per optimizer step, not per micro batch


# --- activation checkpointing -------------------------------------------------------


def saved_bytes_and_grads(setup: TrainingSetup, batch: Any) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps for backward during one forward, and the gradients."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    setup.model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = setup.loss_fn(setup.model, batch)
    loss.backward()
    return total, [p.grad.clone() for p in setup.model.parameters()]


@pytest.mark.parametrize(
    ("workload", "params", "config"),
    [
        (GPTWorkload(), TINY_GPT, gpt_config(micro_batch_size=8)),  # the model's own hook
        (RecsysWorkload(), TINY_RECSYS, TrialConfig(micro_batch_size=256)),  # runner wraps `blocks`
    ],
    ids=["gpt", "recsys"],
)
def test_activation_checkpointing_keeps_less_for_backward_with_the_same_gradients(
    workload: TrainableWorkload, params: dict[str, Any], config: TrialConfig
) -> None:
    torch.manual_seed(0)
    setup = workload.build(workload.resolve_params(params), config, "cpu", 0)
    batch = setup.make_batch(config.micro_batch_size, torch.Generator().manual_seed(0))
    plain_bytes, plain_grads = saved_bytes_and_grads(setup, batch)
    assert enable_activation_checkpointing(setup) == []
    ckpt_bytes, ckpt_grads = saved_bytes_and_grads(setup, batch)
    assert ckpt_bytes < 0.7 * plain_bytes, (ckpt_bytes, plain_bytes)
    for a, b in zip(plain_grads, ckpt_grads, strict=True):
        torch.testing.assert_close(a, b)

    # Through the runner: the same losses, and its own meter sees the saving too.
    off = run(workload, config.replace(activation_checkpointing=False), params=params, steps=3)
    on = run(workload, config.replace(activation_checkpointing=True), params=params, steps=3)
    assert on.status is TrialStatus.OK, on.reason
    assert on.loss_curve == pytest.approx(off.loss_curve, rel=1e-6)
    assert on.metrics["saved_activation_bytes"] < 0.7 * off.metrics["saved_activation_bytes"]


# --- torch.compile ------------------------------------------------------------------


class TinyRegressionWorkload(TrainableWorkload):
    """A two-layer MLP fitting a fixed linear map: the smallest model worth compiling."""

    name = "test-tiny-regression"

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).to(device)
        true_weight = torch.linspace(-1, 1, 8, device=device).unsqueeze(1)

        def make_batch(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(size, 8, generator=generator, device=generator.device)
            return x, x @ true_weight

        def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(model(x), y)

        return TrainingSetup(model=model, make_batch=make_batch, loss_fn=loss_fn, items_per_sample=1)


def test_compile_on_and_off_train_the_same_and_compile_time_is_kept_out_of_throughput() -> None:
    config = TrialConfig(micro_batch_size=16, learning_rate=1e-2)
    eager = run(TinyRegressionWorkload(), config, params={}, steps=4, warmup=2)
    compiled = run(TinyRegressionWorkload(), config.replace(compile=True), params={}, steps=4, warmup=2)
    assert eager.status is TrialStatus.OK and compiled.status is TrialStatus.OK, compiled.reason
    assert "compile_s" not in eager.metrics
    assert compiled.metrics["compile_s"] > 0
    # The first step pays for compilation; the timed steps do not.
    assert compiled.metrics["first_step_s"] > 10 * compiled.step_time_s
    assert compiled.loss_curve == pytest.approx(eager.loss_curve, rel=1e-4)
    assert compiled.val_loss is None and compiled.timed_steps == 2


def test_step_timer_counts_the_cpu_of_timed_steps_only() -> None:
    import time as clock

    from tuner.trial.timing import StepTimer

    timer = StepTimer(warmup_steps=1)
    assert timer.cpu_s_per_step is None
    busy_until = clock.process_time() + 0.2
    while clock.process_time() < busy_until:  # a warm-up step that burns CPU: not counted
        pass
    timer.record(0.2)
    assert timer.cpu_s_per_step is None  # no timed step yet
    for _ in range(2):
        clock.sleep(0.02)  # timed steps that wait: almost no CPU
        timer.record(0.02)
    # counted, the warm-up's 0.2 s would make it >= 0.1 per step
    assert timer.cpu_s_per_step is not None and 0 <= timer.cpu_s_per_step < 0.05
    assert StepTimer(warmup_steps=0).cpu_s_per_step is None

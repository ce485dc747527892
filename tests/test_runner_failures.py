"""Trials that go wrong still return a result: oom, failed, pruned — never an exception.

The out-of-memory error is real (an impossible allocation inside a training step), and
the tests check that the trial's model is actually freed afterwards.
"""

from __future__ import annotations

import gc
import math
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch import nn

from tests.trial_requests import trial_request
from tuner.errors import WorkloadError
from tuner.trial.oom import is_out_of_memory
from tuner.trial.runner import run_training_trial
from tuner.trial.setup import TrainingSetup
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import NullReporter, Reporter, TrainableWorkload
from tuner.workloads.gpt import GPTWorkload

Batch = tuple[torch.Tensor, torch.Tensor]


class RegressionWorkload(TrainableWorkload):
    """A small MLP regression whose step number `trouble_at` (1-based) misbehaves.

    `trouble` receives the batch of that step and returns the batch to use (or raises).
    """

    name = "test-regression"
    item_unit = "samples"

    def __init__(
        self, trouble_at: int | None = None, trouble: Callable[[Batch], Batch] | None = None
    ) -> None:
        self.trouble_at, self.trouble = trouble_at, trouble
        self.model_ref: weakref.ref[nn.Module] | None = None

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 1)).to(device)
        self.model_ref = weakref.ref(model)
        calls = 0

        def make_batch(size: int, generator: torch.Generator) -> Batch:
            nonlocal calls
            calls += 1
            x = torch.randn(size, 8, generator=generator, device=generator.device)
            batch = (x, x.sum(dim=1, keepdim=True))
            if self.trouble is not None and calls == self.trouble_at:
                return self.trouble(batch)
            return batch

        def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(model(x), y)

        return TrainingSetup(model=model, make_batch=make_batch, loss_fn=loss_fn, items_per_sample=1)


def run(
    workload: TrainableWorkload,
    config: TrialConfig | None = None,
    *,
    steps: int = 5,
    reporter: Reporter | None = None,
    report_every: int = 1,
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> TrialResult:
    return run_training_trial(
        workload,
        trial_request(
            workload,
            config or TrialConfig(micro_batch_size=16),
            params or {},
            TrialBudget(max_steps=steps, warmup_steps=1, report_every=report_every),
            device=device,
        ),
        reporter or NullReporter(),
    )


def impossible_allocation(batch: Batch) -> Batch:
    torch.empty(2**62, dtype=torch.uint8)  # 4 EiB: no machine has it
    return batch


def assert_model_freed(workload: RegressionWorkload) -> None:
    gc.collect()
    assert workload.model_ref is not None and workload.model_ref() is None, "the trial's model is still alive"


def test_an_impossible_allocation_raises_a_real_out_of_memory_error() -> None:
    with pytest.raises((torch.OutOfMemoryError, RuntimeError)) as caught:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_out_of_memory(caught.value)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocator error types count


def test_out_of_memory_in_a_step_is_an_oom_result_with_the_peak_and_frees_the_model() -> None:
    workload = RegressionWorkload(trouble_at=3, trouble=impossible_allocation)
    result = run(workload)
    assert result.status is TrialStatus.OOM, result.reason
    assert result.reason is not None and result.reason.startswith("out of memory: ")
    assert "allocate" in result.reason
    assert result.steps_run == 2 and len(result.loss_curve) == 2  # what ran before the failure is kept
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 0
    assert result.memory_kind == "process_rss"
    assert result.item_unit == "samples"
    assert_model_freed(workload)


def test_any_other_exception_is_a_failed_result_with_type_and_message() -> None:
    def bad_batch(batch: Batch) -> Batch:
        raise ValueError("corrupt record 17 in shard 3")

    workload = RegressionWorkload(trouble_at=2, trouble=bad_batch)
    result = run(workload)
    assert result.status is TrialStatus.FAILED
    assert result.reason == "ValueError: corrupt record 17 in shard 3"
    assert result.steps_run == 1
    assert_model_freed(workload)


def test_an_exception_while_building_is_a_failed_result() -> None:
    class BrokenBuild(TrainableWorkload):
        name = "test-broken-build"

        def build(
            self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int
        ) -> TrainingSetup:
            raise FileNotFoundError("checkpoint.pt")

    result = run(BrokenBuild())
    assert result.status is TrialStatus.FAILED
    assert (
        result.reason is not None
        and "FileNotFoundError" in result.reason
        and "checkpoint.pt" in result.reason
    )
    assert result.steps_run == 0


def with_nan(batch: Batch) -> Batch:
    x, y = batch
    return x, torch.full_like(y, math.nan)


def test_a_nan_loss_ends_the_trial_as_diverged() -> None:
    result = run(RegressionWorkload(trouble_at=3, trouble=with_nan), steps=6)
    assert result.status is TrialStatus.FAILED
    assert result.reason == "loss diverged (nan) at step 3"
    assert result.steps_run == 2 and all(math.isfinite(v) for v in result.loss_curve)


def test_an_fp16_step_skipped_by_the_grad_scaler_is_not_divergence() -> None:
    config = TrialConfig(micro_batch_size=16, precision="fp16", loss_scale=256.0)
    result = run(RegressionWorkload(trouble_at=2, trouble=with_nan), config, steps=4)
    assert result.status is TrialStatus.OK, result.reason
    assert result.skipped_steps == 1 and result.final_loss_scale == 128.0
    assert math.isnan(result.loss_curve[1]) and all(
        math.isfinite(v) for i, v in enumerate(result.loss_curve) if i != 1
    )


class PruneAt:
    """A pruner stand-in with a real decision rule: stop once `step` is reached."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.seen: list[tuple[int, float]] = []

    def report(self, step: int, value: float) -> bool:
        self.seen.append((step, value))
        return step >= self.step


def test_the_reporter_sees_every_step_and_can_prune() -> None:
    reporter = PruneAt(2)
    result = run(RegressionWorkload(), steps=20, reporter=reporter)
    assert result.status is TrialStatus.PRUNED
    assert result.reason is not None and "step 2" in result.reason
    assert result.steps_run == 2
    assert [step for step, _ in reporter.seen] == [1, 2]
    assert [value for _, value in reporter.seen] == list(result.loss_curve)
    assert result.val_loss is None  # a pruned trial skips evaluation


def test_report_every_spaces_the_reports() -> None:
    reporter = PruneAt(10**9)
    result = run(RegressionWorkload(), steps=7, reporter=reporter, report_every=3)
    assert result.status is TrialStatus.OK
    assert [step for step, _ in reporter.seen] == [3, 6]


def test_multi_process_trial_without_the_distributed_runner_is_a_clear_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry makes `import tuner.trial.distributed.run` raise ImportError, as when the
    # module is absent, whether or not it has been written yet.
    monkeypatch.setitem(sys.modules, "tuner.trial.distributed.run", None)
    result = run(RegressionWorkload(), TrialConfig(world_size=2))
    assert result.status is TrialStatus.FAILED
    assert result.reason is not None and "world_size=2" in result.reason and "not available" in result.reason


def test_bad_workload_params_are_refused_naming_the_field_before_any_trial() -> None:
    # Params are resolved once, where the request (the study's spec) is made, not by the
    # runner: a bad one never reaches a trial.
    with pytest.raises(WorkloadError) as info:
        run(GPTWorkload(), params={"d_model": 30, "heads": 4})
    reason = str(info.value)
    assert "params.heads" in reason and "d_model=30" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's answer")
def test_asking_for_cuda_without_a_gpu_is_a_failed_result_naming_the_device() -> None:
    result = run(RegressionWorkload(), device="cuda")
    assert result.status is TrialStatus.FAILED
    assert (
        result.reason is not None and "device='cuda'" in result.reason and "use auto or cpu" in result.reason
    )

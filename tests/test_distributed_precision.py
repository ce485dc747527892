"""Multi-process trials in fp16 and bf16 at the FSDP2 stages (2 and 3), on the CPU with gloo.

At stages 2-3 each rank holds only its shard of the gradients, so fp16 needs FSDP's
`ShardedGradScaler`, which all-reduces "found inf" so that every rank skips the same
steps; bf16 needs no loss scaling. Real two-rank trials of the tiny residual MLP
(tests/distributed_test_workloads.py); fp16 runs emulated on the CPU, so the model is
kept very small (1 block, width 32).

What each rank reported is read from the results the launching process received (the
`trial` fixture: a pass-through spy on the real `combine`), so skipped steps and loss
scales are checked on every rank, not only on rank 0, whose result the trial reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from distributed_test_workloads import TinyStackWorkload

import tuner.trial.distributed.run as distributed
from tests.trial_requests import trial_request
from tuner.trial.distributed import run_distributed_trial
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import NullReporter

STEPS = 6
BUDGET = TrialBudget(max_steps=STEPS, warmup_steps=1, eval_batches=1)
PARAMS = {"layers": 1, "width": 32}
SEED = 3
DEFAULT_SCALE = 65536.0
#: Far above what this model's fp16 gradients survive (they overflow from ~2**18 on):
#: every step of the trial overflows, and the scale halves on each, never reaching a
#: usable value within STEPS.
HUGE_SCALE = 2.0**40
#: Overflows for the first few steps only: the scale backs off, then training proceeds.
HIGH_SCALE = 2.0**20

STAGES = pytest.mark.parametrize("stage", [2, 3])


def _run(stage: int, precision: str, **changes: object) -> TrialResult:
    config = TrialConfig(
        **{  # type: ignore[arg-type]
            "world_size": 2,
            "micro_batch_size": 8,
            "learning_rate": 1e-2,
            "sharding_stage": stage,
            "precision": precision,
            **changes,
        }
    )
    workload = TinyStackWorkload()
    request = trial_request(workload, config, PARAMS, BUDGET, device="cpu", seed=SEED)
    return run_distributed_trial(workload, request, NullReporter(), timeout_s=60)


Trial = Callable[..., tuple[TrialResult, list[TrialResult]]]


@pytest.fixture(scope="module")
def trial() -> Iterator[Trial]:
    """`trial(stage, precision, **knobs)` -> (the trial's result, each rank's own result).

    Each rank's result is taken from what the launching process received, by a
    pass-through spy on the real `combine`. A config is run once per module.
    """
    cache: dict[tuple[Any, ...], tuple[TrialResult, list[TrialResult]]] = {}
    seen: list[TrialResult] = []
    real_combine = distributed.combine

    def spy(supervision, **kwargs):  # type: ignore[no-untyped-def]
        seen[:] = [state.result for state in supervision.states]
        return real_combine(supervision, **kwargs)

    def run(stage: int, precision: str, **changes: object) -> tuple[TrialResult, list[TrialResult]]:
        key = (stage, precision, tuple(sorted(changes.items())))
        if key not in cache:
            seen.clear()
            result = _run(stage, precision, **changes)
            assert len(seen) == 2 and all(r is not None for r in seen), seen
            cache[key] = (result, list(seen))
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distributed, "combine", spy)
        yield run


def assert_trained_ok(result: TrialResult) -> None:
    assert result.status is TrialStatus.OK, result.reason
    assert result.steps_run == STEPS and len(result.loss_curve) == STEPS
    assert all(math.isfinite(loss) for loss in result.loss_curve), result.loss_curve
    assert result.val_loss is not None and math.isfinite(result.val_loss)


def scalers_of(ranks: list[TrialResult]) -> list[tuple[int, float | None]]:
    """(skipped steps, final loss scale) as each rank counted them."""
    return [(r.skipped_steps, r.final_loss_scale) for r in ranks]


@STAGES
def test_bf16_trains_close_to_fp32_without_loss_scaling(stage, trial) -> None:
    result, ranks = trial(stage, "bf16")
    reference, _ = trial(stage, "fp32")
    assert_trained_ok(reference)
    assert_trained_ok(result)
    assert result.metrics["sharding_stage"] == stage and result.metrics["world_size"] == 2
    # bf16 has fp32's exponent range: no scaler, nothing skipped, on any rank.
    assert result.final_loss_scale is None and result.skipped_steps == 0
    assert scalers_of(ranks) == [(0, None), (0, None)]
    # Really computed in bf16 (autocast plus FSDP's bf16 parameters), yet the same training.
    assert list(result.loss_curve) != list(reference.loss_curve)
    assert result.loss_curve == pytest.approx(reference.loss_curve, rel=2e-2)
    assert result.val_loss == pytest.approx(reference.val_loss, rel=2e-2)


@STAGES
def test_fp16_reports_the_loss_scale_of_every_rank(stage, trial) -> None:
    result, ranks = trial(stage, "fp16")
    reference, _ = trial(stage, "fp32")
    assert_trained_ok(result)
    # The default scale fits this model's gradients: no overflow, no growth in 6 steps.
    assert result.final_loss_scale == DEFAULT_SCALE and result.skipped_steps == 0
    assert scalers_of(ranks) == [(0, DEFAULT_SCALE), (0, DEFAULT_SCALE)]
    assert list(result.loss_curve) != list(reference.loss_curve)  # fp16 autocast really applied
    assert result.loss_curve == pytest.approx(reference.loss_curve, rel=2e-2)


@STAGES
def test_fp16_scale_grows_after_each_growth_interval(stage, trial) -> None:
    # From 1.0, doubling after every step without overflow: 2**STEPS at the end.
    result, ranks = trial(stage, "fp16", loss_scale=1.0, loss_scale_growth_interval=1)
    assert_trained_ok(result)
    assert result.skipped_steps == 0
    assert result.final_loss_scale == 2.0**STEPS
    assert scalers_of(ranks) == [(0, 2.0**STEPS)] * 2
    # A growth interval longer than the trial never grows it.
    slow, ranks = trial(stage, "fp16", loss_scale=1.0, loss_scale_growth_interval=STEPS + 1)
    assert_trained_ok(slow)
    assert scalers_of(ranks) == [(0, 1.0)] * 2


@STAGES
def test_fp16_overflowing_steps_are_skipped_and_leave_the_weights_alone(stage, trial) -> None:
    result, ranks = trial(stage, "fp16", loss_scale=HUGE_SCALE)
    # Every step overflowed, was skipped and halved the scale; the trial still ends ok,
    # with finite losses (no inf/NaN gradient reached the weights).
    assert_trained_ok(result)
    assert result.skipped_steps == STEPS
    assert result.final_loss_scale == HUGE_SCALE / 2**STEPS
    # Every rank counted the same skipped steps and holds the same scale.
    assert scalers_of(ranks) == [(STEPS, HUGE_SCALE / 2**STEPS)] * 2
    # Skipped means not applied: a 100x learning rate changes nothing at all.
    wild, _ = trial(stage, "fp16", loss_scale=HUGE_SCALE, learning_rate=1.0)
    assert_trained_ok(wild)
    assert list(wild.loss_curve) == list(result.loss_curve)
    assert wild.val_loss == result.val_loss


@STAGES
def test_fp16_backs_off_after_overflow_then_trains(stage, trial) -> None:
    stuck, _ = trial(stage, "fp16", loss_scale=HUGE_SCALE)  # the untrained model's losses
    result, ranks = trial(stage, "fp16", loss_scale=HIGH_SCALE)
    assert_trained_ok(result)
    skipped = result.skipped_steps
    assert 0 < skipped < STEPS, skipped
    # Halved once per skipped step (the growth interval, 2000, is never reached).
    assert result.final_loss_scale == HIGH_SCALE / 2**skipped
    assert scalers_of(ranks) == [(skipped, HIGH_SCALE / 2**skipped)] * 2
    # The steps that were not skipped were applied: the weights moved away from the
    # untrained model's, whose losses the all-skipped trial records.
    assert list(result.loss_curve[: skipped + 1]) == list(stuck.loss_curve[: skipped + 1])
    assert list(result.loss_curve[skipped + 1 :]) != list(stuck.loss_curve[skipped + 1 :])

"""Quality-safe throughput studies (tuner.study.quality): held knobs and the divergence guard.

The real studies train the README demo's tiny GPT for a few steps on the CPU; the fake
workload makes a diverging config the fastest on purpose, which real training on a busy
2-core machine cannot promise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest

from tuner.errors import SearchSpaceError, ValidationError
from tuner.executors.inline import InlineExecutor
from tuner.space.params import FixedParam
from tuner.space.search_space import SearchSpace, load_space
from tuner.study import create_study, run_study
from tuner.study.attrs import StudyAttr, TrialAttr
from tuner.study.quality import (
    LOSS_MARGIN,
    QUALITY_PREFIX,
    hold_quality_knobs,
    quality_problem,
    reference_config,
)
from tuner.study.results import TrialRecord, best_record, load_best, records_of
from tuner.study.spec import StudySpec
from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import Workload, get_workload, register_workload

TINY_BUDGET = TrialBudget(max_steps=3, warmup_steps=1, eval_batches=1)
GPT_DEFAULT = get_workload("gpt").default_config({})


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def demo_spec(name: str, *, space: SearchSpace | None = None, **changes: Any) -> StudySpec:
    preset = space or load_space("gpt_tiny_system")
    fields: dict[str, Any] = {
        "name": name,
        "workload": "gpt",
        "space": preset,
        "workload_params": dict(preset.workload_params),
        "n_trials": 3,
        "budget": TINY_BUDGET,
        "device": "cpu",
    }
    fields.update(changes)
    return StudySpec(**fields)


def trial_configs(storage: str, name: str) -> list[TrialConfig]:
    return [r.config for r in records_of(optuna.load_study(study_name=name, storage=storage)) if r.config]


# -- held knobs -----------------------------------------------------------------------------------


def test_the_demo_preset_holds_sequence_length_and_effective_batch():
    space = load_space("gpt_tiny_system")
    hold = hold_quality_knobs(space, ("throughput",), reference_config(GPT_DEFAULT, space))
    assert hold.held == ("max_sequence_length", "effective_batch")
    assert hold.space.get("max_sequence_length") == FixedParam("max_sequence_length", 128)
    # micro batches that divide the default's 8 (within the preset's accumulation 1-4) ...
    assert hold.space.get("micro_batch_size").finite_values() == (2, 4, 8)
    # ... and the accumulation is derived from them, never sampled
    assert "gradient_accumulation_steps" not in hold.space
    derived = hold.apply(GPT_DEFAULT.replace(micro_batch_size=2))
    assert derived.gradient_accumulation_steps == 4 and derived.global_batch_size == 8
    assert any("held max_sequence_length at the default 128" in line for line in hold.reasoning)
    # Still tuned: precision, checkpointing, the fp16 scale.
    assert {"precision", "activation_checkpointing", "loss_scale"} <= set(hold.space.names)


def test_nothing_is_held_when_freed_with_a_quality_objective_or_for_a_replayed_table():
    space = load_space("gpt_tiny_system")
    reference = reference_config(GPT_DEFAULT, space)
    for free in (("all",), ("max_sequence_length", "effective_batch")):
        freed = dataclasses.replace(space, free_knobs=free)
        hold = hold_quality_knobs(freed, ("throughput",), reference)
        assert hold.held == () and hold.space == freed and hold.effective_batch is None
    partly = hold_quality_knobs(dataclasses.replace(space, free_knobs=("effective_batch",)), ("throughput",), reference)
    assert partly.held == ("max_sequence_length",) and "gradient_accumulation_steps" in partly.space
    assert hold_quality_knobs(space, ("throughput", "val_loss"), reference).held == ()
    assert hold_quality_knobs(space, ("throughput",), reference, learns=False).held == ()


def test_a_sampled_world_size_that_cannot_keep_the_product_is_refused_not_run():
    space = load_space(
        {
            "name": "ws",
            "params": {
                "micro_batch_size": {"type": "categorical", "choices": [2, 4, 8, 16]},
                "world_size": {"type": "categorical", "choices": [1, 2]},
            },
        }
    )
    hold = hold_quality_knobs(space, ("throughput",), GPT_DEFAULT)
    assert hold.space.get("micro_batch_size").finite_values() == (2, 4, 8)  # 16 fits no world size
    assert hold.apply(GPT_DEFAULT.replace(micro_batch_size=4, world_size=2)).gradient_accumulation_steps == 1
    why = hold.apply(GPT_DEFAULT.replace(micro_batch_size=8, world_size=2))
    assert isinstance(why, str) and "effective batch 8" in why


def test_held_knob_errors_name_field_value_and_fix():
    space = load_space("gpt_tiny_system")
    short = space.restrict("max_sequence_length", choices=[64])
    with pytest.raises(ValidationError) as err:
        hold_quality_knobs(short, ("throughput",), reference_config(GPT_DEFAULT, short))
    [problem] = err.value.problems
    assert problem.field == "params.max_sequence_length"
    assert problem.value == {"type": "categorical", "choices": [64]}
    assert "128" in problem.problem and "free_knobs: [max_sequence_length]" in problem.fix

    big = space.restrict("micro_batch_size", low=16)
    with pytest.raises(ValidationError) as err:
        hold_quality_knobs(big, ("throughput",), reference_config(GPT_DEFAULT, big))
    [problem] = err.value.problems
    assert problem.field == "params.micro_batch_size" and problem.value["low"] == 16
    assert "effective batch 8" in problem.problem and "free_knobs: [effective_batch]" in problem.fix

    data = space.to_dict() | {"free_knobs": ["seq_len", "learning_rate"]}
    with pytest.raises(SearchSpaceError) as err:
        SearchSpace.from_dict(data)
    [problem] = err.value.problems
    assert (problem.field, problem.value) == ("free_knobs[0]", "seq_len")
    assert "max_sequence_length" in problem.fix
    assert SearchSpace.from_dict(space.to_dict() | {"free_knobs": "all"}).free_knobs == ("all",)


def test_run_study_refuses_a_space_without_the_held_value_before_writing(storage):
    short = load_space("gpt_tiny_system").restrict("max_sequence_length", choices=[64])
    with pytest.raises(ValidationError, match="free_knobs"):
        run_study(demo_spec("short", space=short), storage=storage, executor=InlineExecutor())
    assert "short" not in {s.study_name for s in optuna.get_all_study_summaries(storage)}


def test_cli_free_knobs_flag_frees_and_validates():
    from tuner.cli.cmd_tune import build_spec
    from tuner.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["tune", "gpt_tiny_system", "--free-knobs", "max_sequence_length, effective_batch"])
    assert build_spec(args).space.free_knobs == ("max_sequence_length", "effective_batch")
    args = parser.parse_args(["tune", "gpt_tiny_system", "--free-knobs", "sequence"])
    with pytest.raises(ValidationError) as err:
        build_spec(args)
    assert err.value.problems[0].field == "--free-knobs[0]" and err.value.problems[0].value == "sequence"


def test_the_demo_preset_best_config_keeps_the_default_sequence_and_effective_batch(storage):
    # The generator's starting configs go first; unheld, its first is the largest micro
    # batch predicted to fit (64 here), at 8x the default's effective batch.
    with InlineExecutor() as executor:
        outcome = run_study(demo_spec("demo-held"), storage=storage, executor=executor, confirm=0)
    configs = trial_configs(storage, "demo-held")
    assert len(configs) == 3
    assert {(c.max_sequence_length, c.global_batch_size) for c in configs} == {(128, 8)}
    assert outcome.best_config.max_sequence_length == 128 and outcome.best_config.global_batch_size == 8
    assert outcome.baseline_config.global_batch_size == 8
    assert any("held the effective batch at the default 8" in line for line in outcome.held_knobs)
    stored = optuna.load_study(study_name="demo-held", storage=storage).user_attrs
    assert stored[StudyAttr.QUALITY]["held"] == ["max_sequence_length", "effective_batch"]
    assert stored[StudyAttr.GENERATOR][: len(outcome.held_knobs)] == list(outcome.held_knobs)


def test_freed_knobs_are_searched(storage):
    freed = dataclasses.replace(load_space("gpt_tiny_system"), free_knobs=("all",))
    with InlineExecutor() as executor:
        outcome = run_study(demo_spec("demo-free", space=freed, n_trials=1), storage=storage, executor=executor, confirm=0)
    [config] = trial_configs(storage, "demo-free")
    assert config.global_batch_size > 8  # the generator's largest fitting micro batch, unheld
    assert outcome.held_knobs == ()


# -- the divergence guard ---------------------------------------------------------------------------


def _result(curve: list[float], **extra: Any) -> TrialResult:
    return TrialResult(status=TrialStatus.OK, items_per_s=1.0, loss_curve=tuple(curve), steps_run=len(curve), **extra)


def test_quality_problem_checks_nan_skipped_steps_and_the_margin_at_equal_tokens():
    base = _result([5.0, 4.0, 3.0, 2.0, 2.0, 2.0])
    cfg = GPT_DEFAULT
    assert quality_problem(_result([5.0, 4.0, 3.0, 2.0, 2.1, 2.1]), cfg, base, cfg) is None  # within the margin
    worse = quality_problem(_result([5.0, 4.0, 3.0, 2.5, 2.5, 2.5]), cfg, base, cfg)
    assert worse is not None and worse.startswith(QUALITY_PREFIX) and f"{LOSS_MARGIN:.0%}" in worse
    assert "nan" in quality_problem(_result([5.0, 4.0, math.nan]), cfg, base, cfg)
    assert "nan" in quality_problem(_result([5.0, 4.0, None]), cfg, base, cfg)  # as stored in JSON
    skipped = quality_problem(_result([5.0] * 4, skipped_steps=2), cfg, None, None)
    assert skipped is not None and "skipped 2 of 4" in skipped
    assert quality_problem(_result([5.0] * 4, skipped_steps=1), cfg, None, None) is None
    # No baseline, or another sequence length (another task): the margin is not checked.
    assert quality_problem(_result([9.0] * 6), cfg, None, None) is None
    assert quality_problem(_result([9.0] * 6), cfg.replace(max_sequence_length=64), base, cfg) is None
    # A max_seconds budget stopped the trial after 3 steps: compared at step 3 on both sides.
    assert quality_problem(_result([5.0, 4.0, 3.0]), cfg, base, cfg) is None
    # Freed effective batch (2x the tokens per step): its step 3 is the baseline's step 6.
    double = cfg.replace(gradient_accumulation_steps=2)
    assert quality_problem(_result([4.0, 3.0, 2.0]), double, base, cfg) is None
    assert quality_problem(_result([4.0, 3.0, 2.0, 2.6, 2.6, 2.6]), double, base, cfg) is None
    assert quality_problem(_result([4.0, 3.0, 2.6]), double, base, cfg) is not None


def test_best_record_skips_a_completed_trial_whose_loss_ended_non_finite():
    def record(number: int, speed: float, curve: list[float | None]) -> TrialRecord:
        result = TrialResult(status=TrialStatus.OK, items_per_s=speed, loss_curve=tuple(curve), steps_run=len(curve))
        return TrialRecord(number, "COMPLETE", TrialStatus.OK, "trial", GPT_DEFAULT, result, (speed,), True, 1.0)

    # e.g. told by an ask/tell client, or written by an older tuner
    records = [record(0, 100.0, [3.0, 2.0]), record(1, 900.0, [3.0, None])]
    assert best_record(records, ("throughput",)).number == 0


@register_workload
class FastWhenDiverging(Workload):
    """Training numbers without training: a learning rate above 1 diverges and is by far the fastest."""

    name = "quality-fake"
    item_unit = "samples"
    learns = True  # stands for a training workload (a plain Workload does not hold knobs)

    def default_config(self, params: Mapping[str, Any]) -> TrialConfig:
        return TrialConfig(micro_batch_size=8, learning_rate=1e-3)

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        config, steps = request.config, request.budget.max_steps
        if config.learning_rate > 1:
            curve, speed = [2.0 * 1.5**i for i in range(steps)], 1e6
        else:
            curve, speed = [2.0 * 0.9**i for i in range(steps)], 100.0 * config.micro_batch_size
        return TrialResult(
            status=TrialStatus.OK, items_per_s=speed, item_unit="samples", loss_curve=tuple(curve), steps_run=steps
        )


def test_a_diverging_config_is_never_best_even_when_it_is_the_fastest(storage):
    space = load_space(
        {
            "name": "fake",
            "free_knobs": ["learning_rate"],
            "params": {
                "micro_batch_size": {"type": "categorical", "choices": [4, 8]},
                "learning_rate": {"type": "float", "low": 1e-4, "high": 10.0, "log": True},
            },
        }
    )
    spec = StudySpec(
        name="fake-diverge", workload="quality-fake", space=space, n_trials=3, sampler="random",
        budget=TrialBudget(max_steps=8, warmup_steps=1), use_generator=False,
    )
    study = create_study(spec, storage)
    for values in ({"micro_batch_size": 8, "learning_rate": 5.0}, {"micro_batch_size": 8, "learning_rate": 1e-3}, {"micro_batch_size": 4, "learning_rate": 1e-3}):
        study.enqueue_trial(values)
    with InlineExecutor() as executor:
        outcome = run_study(spec, storage=storage, executor=executor, confirm=0)
    records = records_of(optuna.load_study(study_name="fake-diverge", storage=storage))
    diverging = next(r for r in records if r.config.learning_rate == 5.0)
    assert diverging.result.items_per_s == 1e6  # measured and kept, by far the fastest ...
    assert diverging.state == "FAIL" and diverging.status is TrialStatus.FAILED
    assert diverging.result.reason.startswith(QUALITY_PREFIX) and "above the default config's" in diverging.result.reason
    # ... and never the best: not in the outcome, `tuner best`, nor the service's best_record
    assert outcome.best_trial != diverging.number and outcome.best_config.learning_rate == 1e-3
    assert outcome.best_result.items_per_s == 800.0 and outcome.n_failed == 1
    assert load_best(storage, "fake-diverge")[0].learning_rate == 1e-3
    assert best_record(records, ("throughput",)).number == outcome.best_trial


def test_fp16_that_skips_every_step_fails_in_a_real_study(storage):
    spec = demo_spec("demo-fp16", n_trials=2, sampler="random", use_generator=False)
    study = create_study(spec, storage)
    # A scale no fp16 gradient survives: every step overflows and is skipped (outside the
    # preset's loss_scale range; Optuna warns and runs it as enqueued).
    study.enqueue_trial({"micro_batch_size": 8, "precision": "fp16", "loss_scale": 1e30, "activation_checkpointing": False})
    study.enqueue_trial({"micro_batch_size": 8, "precision": "fp32", "activation_checkpointing": False})
    with pytest.warns(UserWarning), InlineExecutor() as executor:
        outcome = run_study(spec, storage=storage, executor=executor, confirm=0)
    records = records_of(optuna.load_study(study_name="demo-fp16", storage=storage))
    fp16 = next(r for r in records if r.config.precision == "fp16")
    assert fp16.status is TrialStatus.FAILED and fp16.state == "FAIL"
    assert fp16.result.reason.startswith(QUALITY_PREFIX) and "skipped 3 of 3" in fp16.result.reason
    assert outcome.best_config.precision == "fp32"
    stored = optuna.load_study(study_name="demo-fp16", storage=storage)
    assert TrialResult.from_dict(stored.trials[0].user_attrs[TrialAttr.RESULT]).skipped_steps == 3


@pytest.mark.parametrize("name", ["gpt_tiny_system", "gpt_small_system", "gpt_hparams", "recsys_system", "joint"])
def test_every_preset_runs_as_a_throughput_study_with_its_knobs_held(name):
    space = load_space(name)
    workload = get_workload(space.workload)
    default = workload.default_config(workload.resolve_params(space.workload_params))
    hold = hold_quality_knobs(space, ("throughput",), reference_config(default, space))
    base = reference_config(default, hold.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        config = hold.apply(hold.space.to_config(hold.space.suggest(trial), base))
        study.tell(trial, 0.0)
        assert not isinstance(config, str)
        assert config.global_batch_size == base.global_batch_size
        assert config.max_sequence_length == base.max_sequence_length


def test_a_conditional_grid_enqueues_only_points_with_the_knobs_held(storage):
    space = load_space(
        {
            "name": "grid",
            "params": {
                "micro_batch_size": {"type": "categorical", "choices": [4, 8, 16]},
                "gradient_accumulation_steps": {"type": "int", "low": 1, "high": 2},
                "precision": {"type": "categorical", "choices": ["fp32", "fp16"]},
                "loss_scale": {"type": "categorical", "choices": [1024.0, 65536.0], "when": {"precision": "fp16"}},
            },
        }
    )
    spec = StudySpec(name="held-grid", workload="quality-fake", space=space, n_trials=6, sampler="grid", use_generator=False)
    with InlineExecutor() as executor:
        run_study(spec, storage=storage, executor=executor, confirm=0)
    configs = trial_configs(storage, "held-grid")
    # 2 micro batches (16 cannot keep 8) x (fp32 + fp16 at 2 scales); accumulation derived
    assert len(configs) == 6
    assert {(c.micro_batch_size, c.gradient_accumulation_steps) for c in configs} == {(4, 2), (8, 1)}


def test_the_generator_starting_configs_keep_the_held_effective_batch():
    from tests.shared_data import H200_DIR
    from tuner.generator.planner import plan
    from tuner.hardware.profile import load_profile

    h200 = load_profile(str(H200_DIR / "probe.json"))
    space = load_space("gpt_tiny_system")
    gpt = get_workload("gpt")
    params = gpt.resolve_params(space.workload_params)
    hold = hold_quality_knobs(space, ("throughput",), reference_config(GPT_DEFAULT, space))
    held = plan(h200, gpt.shape(params), hold.space, workload="gpt", base_config=GPT_DEFAULT, derive=hold.derive)
    unheld = plan(h200, gpt.shape(params), space, workload="gpt", base_config=GPT_DEFAULT)
    assert max(v["micro_batch_size"] for v in unheld.starting_configs) > 8  # what the hold prevents
    for values in held.starting_configs:
        config = hold.apply(held.config_of(values))
        assert config.global_batch_size == 8 and config.max_sequence_length == 128
    assert held.starting_configs[0]["micro_batch_size"] == 8
    assert "x accumulation 1 (the held effective batch)" in held.starting_reasons()[0]
    # predictions are of the derived config: micro batch 2 runs with accumulation 4
    assert held.config_of({**held.starting_configs[0], "micro_batch_size": 2}).gradient_accumulation_steps == 4

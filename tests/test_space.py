"""Search spaces: strict validation, file round trips, Optuna suggestions, grids, transformations."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from tuner.errors import ConfigError, FieldProblem, SearchSpaceError
from tuner.space import (
    BoolParam,
    CategoricalParam,
    Condition,
    FixedParam,
    FloatParam,
    IntParam,
    SearchSpace,
    load_space,
)
from tuner.types import TrialConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[FieldProblem]:
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.load(path)
    problems = info.value.problems
    assert all(p.source == str(path) for p in problems), problems
    assert str(path) in str(info.value)
    return problems


def problem(problems: list[FieldProblem], field: str) -> FieldProblem:
    matching = [p for p in problems if p.field == field]
    assert matching, f"no problem for {field}; got {[str(p) for p in problems]}"
    return matching[0]


def space_file(tmp_path: Path, params: str, header: str = "name: t\n") -> Path:
    return write(tmp_path, header + "params:\n" + textwrap.indent(textwrap.dedent(params), "  "))


# --------------------------------------------------------------------------- validation


def test_unknown_knob_suggests_the_closest_one(tmp_path):
    path = space_file(tmp_path, "micro_bach_size: {type: int, low: 1, high: 8}\n")
    p = problem(problems_of(path), "params.micro_bach_size")
    assert p.value == "micro_bach_size"
    assert "micro_batch_size" in p.fix


def test_empty_choices_and_wrong_types_are_each_reported(tmp_path):
    path = space_file(
        tmp_path,
        """\
        precision: {type: categorical, choices: []}
        grad_compression: {type: categorical, choices: 5}
        learning_rate: {type: float, low: abc, high: 0.1, log: "yes"}
        """,
    )
    problems = problems_of(path)
    empty = problem(problems, "params.precision.choices")
    assert empty.value == [] and "non-empty" in empty.problem and "choices: [" in empty.fix
    assert problem(problems, "params.grad_compression.choices").value == 5
    low = problem(problems, "params.learning_rate.low")
    assert low.value == "abc" and "number" in low.problem and "number" in low.fix
    log = problem(problems, "params.learning_rate.log")
    assert log.value == "yes" and "log: true" in log.fix


def test_low_above_high(tmp_path):
    p = problem(
        problems_of(space_file(tmp_path, "gradient_accumulation_steps: {type: int, low: 8, high: 2}\n")),
        "params.gradient_accumulation_steps.low",
    )
    assert p.value == 8 and "greater than high" in p.problem and "low: 2, high: 8" in p.fix


def test_log_scale_needs_positive_low(tmp_path):
    p = problem(
        problems_of(space_file(tmp_path, "weight_decay: {type: float, low: 0.0, high: 0.1, log: true}\n")),
        "params.weight_decay.low",
    )
    assert p.value == 0.0 and "log" in p.problem and "log: false" in p.fix


def test_step_cannot_be_combined_with_log(tmp_path):
    path = space_file(
        tmp_path, "learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, step: 1.0e-4}\n"
    )
    p = problem(problems_of(path), "params.learning_rate.step")
    assert p.value == pytest.approx(1e-4) and "log" in p.problem and "drop step" in p.fix


def test_int_step_must_divide_the_range_as_optuna_requires(tmp_path):
    path = space_file(tmp_path, "micro_batch_size: {type: int, low: 4, high: 30, step: 8}\n")
    p = problem(problems_of(path), "params.micro_batch_size.step")
    assert p.value == 8 and "divisible" in p.problem
    assert "set high to 28" in p.fix  # 4 + 3 * 8, the largest reachable value


def test_float_step_must_divide_the_range(tmp_path):
    path = space_file(tmp_path, "warmup_ratio: {type: float, low: 0.0, high: 0.1, step: 0.03}\n")
    p = problem(problems_of(path), "params.warmup_ratio.step")
    assert p.value == pytest.approx(0.03) and "set high to 0.09" in p.fix


def test_float_step_that_divides_is_accepted_despite_rounding():
    FloatParam("warmup_ratio", 0.0, 0.3, step=0.1)  # 0.3 / 0.1 is 2.9999999999999996 in floats


def test_unknown_param_key_and_missing_type(tmp_path):
    path = space_file(
        tmp_path,
        """\
        micro_batch_size: {type: int, lowr: 1, low: 1, high: 8}
        learning_rate: {low: 1.0e-4, high: 1.0e-2}
        precision: {type: categorial, choices: [fp32]}
        """,
    )
    problems = problems_of(path)
    typo = problem(problems, "params.micro_batch_size.lowr")
    assert typo.value == 1 and "did you mean 'low'" in typo.fix
    missing = problem(problems, "params.learning_rate.type")
    assert missing.value is None and "missing" in missing.problem and "type: int or float" in missing.fix
    bad_type = problem(problems, "params.precision.type")
    assert bad_type.value == "categorial" and "categorical" in bad_type.fix


def test_missing_name_and_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "nam: x\nparams:\n  compile: false\n")
    problems = problems_of(path)
    name = problem(problems, "name")
    assert name.value is None and "name:" in name.fix
    assert "params" in problem(problems, "nam").fix


def test_knob_legality_and_kind(tmp_path):
    path = space_file(
        tmp_path,
        """\
        micro_batch_size: {type: int, low: 0, high: 8}
        gradient_accumulation_steps: {type: float, low: 1, high: 4}
        precision: {type: categorical, choices: [fp32, fp8]}
        world_size: 0
        """,
    )
    problems = problems_of(path)
    low = problem(problems, "params.micro_batch_size.low")
    assert low.value == 0 and "[1, inf]" in low.fix
    kind = problem(problems, "params.gradient_accumulation_steps.type")
    assert kind.value == "float" and "type: int" in kind.fix
    choice = problem(problems, "params.precision.choices[1]")
    assert choice.value == "fp8" and "bf16" in choice.fix
    assert problem(problems, "params.world_size.value").value == 0


def test_condition_on_unknown_knob_and_on_knob_missing_from_space(tmp_path):
    path = space_file(
        tmp_path,
        """\
        precision: {type: categorical, choices: [fp32, fp16]}
        loss_scale: {type: float, low: 256, high: 65536, when: {precison: fp16}}
        sharding_stage: {type: int, low: 0, high: 3, when: {world_size: {">": 1}}}
        """,
    )
    problems = problems_of(path)
    typo = problem(problems, "params.loss_scale.when.precison")
    assert typo.value == "precison" and "precision" in typo.fix
    absent = problem(problems, "params.sharding_stage.when.world_size")
    assert absent.value == "world_size" and "not a parameter of this space" in absent.problem
    assert "add world_size under params" in absent.fix


def test_condition_value_must_be_legal_for_its_parameter(tmp_path):
    path = space_file(
        tmp_path,
        """\
        precision: {type: categorical, choices: [fp32, fp16]}
        micro_batch_size: {type: int, low: 1, high: 8}
        loss_scale: {type: float, low: 256, high: 65536, when: {precision: bf16}}
        loss_scale_growth_interval: {type: int, low: 100, high: 200, when: {precision: [fp16, fp8]}}
        activation_checkpointing: {type: bool, when: {precision: {">": 1}}}
        compile: {type: bool, when: {micro_batch_size: {">": 8}}}
        """,
    )
    problems = problems_of(path)
    eq = problem(problems, "params.loss_scale.when.precision")
    assert eq.value == "bf16" and "'fp32', 'fp16'" in eq.fix
    in_list = problem(problems, "params.loss_scale_growth_interval.when.precision")
    assert in_list.value == ["fp8"]
    order = problem(problems, "params.activation_checkpointing.when.precision")
    assert order.value == {">": 1} and "== or a list" in order.fix
    never = problem(problems, "params.compile.when.micro_batch_size")
    assert "never hold" in never.problem and "[1, 8]" in never.problem


def test_condition_cycles_are_reported_once(tmp_path):
    path = space_file(
        tmp_path,
        """\
        sharding_stage: {type: int, low: 0, high: 3, when: {bucket_cap_mb: {">": 1}}}
        bucket_cap_mb: {type: float, low: 1, high: 100, when: {sharding_stage: {"<=": 1}}}
        compile: {type: bool, when: {compile: true}}
        """,
    )
    problems = problems_of(path)
    cycle = problem(problems, "params.sharding_stage.when")
    assert cycle.value == "sharding_stage -> bucket_cap_mb -> sharding_stage" and "remove one" in cycle.fix
    assert problem(problems, "params.compile.when").value == "compile -> compile"
    assert sum("cycle" in p.problem for p in problems) == 2


def test_condition_on_a_fixed_param(tmp_path):
    ok = SearchSpace.load(
        space_file(
            tmp_path,
            "world_size: 2\nsharding_stage: {type: int, low: 0, high: 3, when: {world_size: {'>': 1}}}\n",
        )
    )
    assert ok.is_active("sharding_stage", {"world_size": 2})
    path = space_file(
        tmp_path,
        "world_size: 1\nsharding_stage: {type: int, low: 0, high: 3, when: {world_size: {'>': 1}}}\n",
    )
    p = problem(problems_of(path), "params.sharding_stage.when.world_size")
    assert "never hold" in p.problem


def test_every_problem_is_collected_in_one_error(tmp_path):
    path = space_file(
        tmp_path,
        """\
        micro_bach_size: {type: int, low: 1, high: 8}
        precision: {type: categorical, choices: []}
        loss_scale: {type: float, low: abc, high: 2, when: {precison: fp16}}
        learning_rate: {type: float, low: 0.1, high: 0.01}
        """,
        header="description: no name\n",
    )
    fields = {p.field for p in problems_of(path)}
    assert {
        "name",
        "params.micro_bach_size",
        "params.precision.choices",
        "params.loss_scale.low",
        "params.loss_scale.when.precison",
        "params.learning_rate.low",
    } <= fields


def test_bad_yaml_syntax_names_the_line(tmp_path):
    path = write(
        tmp_path,
        "name: t\nparams:\n  sharding_stage: {type: int, low: 0, high: 3, when: {world_size: {>: 1}}}\n",
    )
    p = problem(problems_of(path), "syntax")
    assert "line 3" in p.problem and "sharding_stage" in p.value and "quote" in p.fix


def test_bad_json_syntax_names_the_line(tmp_path):
    path = write(tmp_path, '{"name": "t",\n "params": {"compile": false,}}\n', name="space.json")
    p = problem(problems_of(path), "syntax")
    assert "line 2" in p.problem and "JSON" in p.fix


def test_a_key_given_twice_is_an_error(tmp_path):
    path = space_file(tmp_path, "compile: false\ncompile: true\n")
    p = problem(problems_of(path), "syntax")
    assert "twice" in p.problem and "line 4" in p.problem


def test_missing_file_and_wrong_suffix(tmp_path):
    missing = tmp_path / "nope.yaml"
    p = problem(problems_of(missing), "path")
    assert p.value == str(missing) and "does not exist" in p.problem and "gpt_tiny_system" in p.fix
    txt = write(tmp_path, "name: t\n", name="space.txt")
    assert ".json" in problem(problems_of(txt), "path").fix


def test_exponents_without_a_dot_are_numbers(tmp_path):
    space = SearchSpace.load(
        space_file(tmp_path, "learning_rate: {type: float, low: 1e-5, high: 1e-2, log: true}\n")
    )
    assert space.get("learning_rate") == FloatParam("learning_rate", 1e-5, 1e-2, log=True)


def test_params_built_in_python_validate_themselves():
    with pytest.raises(SearchSpaceError) as info:
        IntParam("micro_batch_size", 1, 9, step=0)
    assert info.value.problems[0].field == "params.micro_batch_size.step"
    with pytest.raises(SearchSpaceError):
        FloatParam("learning_rate", 0.1, 0.01)
    with pytest.raises(SearchSpaceError):
        SearchSpace("t", params=(BoolParam("compile"), BoolParam("compile")))


# --------------------------------------------------------------------------- round trips

FULL = {
    "name": "full",
    "description": "every kind",
    "workload": "gpt",
    "workload_params": {"layers": 2, "d_model": 64},
    "params": {
        "world_size": 2,
        "sharding_stage": {"type": "int", "low": 0, "high": 3, "when": {"world_size": {">": 1}}},
        "bucket_cap_mb": {
            "type": "float",
            "low": 5.0,
            "high": 50.0,
            "step": 5.0,
            "when": {"sharding_stage": {">=": 0, "<=": 1}},
        },
        "grad_compression": {
            "type": "categorical",
            "choices": ["none", "fp16"],
            "when": {"sharding_stage": [0, 1]},
        },
        "micro_batch_size": {"type": "int", "low": 2, "high": 64, "log": True},
        "gradient_accumulation_steps": {"type": "int", "low": 1, "high": 7, "step": 2},
        "precision": {"type": "categorical", "choices": ["fp32", "fp16"]},
        "loss_scale": {
            "type": "float",
            "low": 256.0,
            "high": 65536.0,
            "log": True,
            "when": {"precision": "fp16"},
        },
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "activation_checkpointing": {"type": "bool", "when": {"precision": {"!=": "fp16"}}},
        "compile": {"type": "fixed", "value": False, "when": {"precision": "fp32"}},
    },
}


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_save_then_load_round_trips_exactly(tmp_path, suffix):
    space = SearchSpace.from_dict(FULL)
    path = space.save(tmp_path / f"full{suffix}")
    again = SearchSpace.load(path)
    assert again == space
    assert again.to_dict() == space.to_dict() == FULL
    text = path.read_text()
    assert (json.loads(text) if suffix == ".json" else yaml.safe_load(text)) == FULL


def test_load_space_accepts_objects_dicts_and_paths(tmp_path):
    space = SearchSpace.from_dict(FULL)
    path = space.save(tmp_path / "full.json")
    assert load_space(space) is space
    assert load_space(FULL) == load_space(path) == load_space(str(path)) == space


# --------------------------------------------------------------------------- sampling


def run_random_study(space: SearchSpace, n: int, seed: int = 0) -> tuple[optuna.Study, list[dict]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    suggested = []
    for _ in range(n):
        trial = study.ask()
        suggested.append(space.suggest(trial))
        study.tell(trial, 0.0)
    return study, suggested


def test_suggest_honours_conditions_bounds_log_and_step():
    space = SearchSpace.from_dict(FULL)
    study, suggested = run_random_study(space, 60)
    assert {v["precision"] for v in suggested} == {"fp32", "fp16"}
    assert len({v["sharding_stage"] for v in suggested}) == 4
    for values, trial in zip(suggested, study.trials, strict=True):
        fp16 = values["precision"] == "fp16"
        assert ("loss_scale" in values) == fp16
        assert ("activation_checkpointing" in values) == (not fp16)
        assert ("compile" in values) == (values["precision"] == "fp32")
        assert ("bucket_cap_mb" in values) == (values["sharding_stage"] <= 1)
        assert ("grad_compression" in values) == (values["sharding_stage"] <= 1)
        assert values["world_size"] == 2
        assert 2 <= values["micro_batch_size"] <= 64
        assert values["gradient_accumulation_steps"] in (1, 3, 5, 7)
        if "bucket_cap_mb" in values:
            assert values["bucket_cap_mb"] in {5.0 * k for k in range(1, 11)}
        if fp16:
            assert 256 <= values["loss_scale"] <= 65536
        # Inactive and fixed params never reach Optuna.
        assert set(trial.params) == set(values) - {"world_size", "compile"}
        assert trial.distributions["micro_batch_size"].log


def test_suggest_replays_a_frozen_trial():
    space = SearchSpace.from_dict(FULL)
    study, suggested = run_random_study(space, 5, seed=3)
    assert [space.suggest(t) for t in study.trials] == suggested


def test_log_scale_reaches_small_values_more_often():
    space = SearchSpace("t", params=(IntParam("micro_batch_size", 1, 1024, log=True),))
    _, suggested = run_random_study(space, 200, seed=1)
    small = sum(v["micro_batch_size"] <= 32 for v in suggested)
    assert small > 80  # half the log range; a uniform draw would give ~6


def test_to_optuna_distributions_types():
    dists = SearchSpace.from_dict(FULL).to_optuna_distributions()
    assert "world_size" not in dists and "compile" not in dists
    assert dists["micro_batch_size"] == optuna.distributions.IntDistribution(2, 64, log=True)
    assert dists["gradient_accumulation_steps"] == optuna.distributions.IntDistribution(1, 7, step=2)
    assert dists["bucket_cap_mb"] == optuna.distributions.FloatDistribution(5.0, 50.0, step=5.0)
    assert dists["precision"] == optuna.distributions.CategoricalDistribution(("fp32", "fp16"))
    assert dists["activation_checkpointing"] == optuna.distributions.CategoricalDistribution((False, True))
    study = optuna.create_study()
    trial = study.ask(dists)  # Optuna accepts them as they are
    assert set(trial.params) == set(dists)


# --------------------------------------------------------------------------- grid

GRID = SearchSpace(
    "g",
    params=(
        IntParam("gradient_accumulation_steps", 1, 3),
        CategoricalParam("precision", ("fp32", "fp16")),
        CategoricalParam("loss_scale", (1024.0, 4096.0), when=Condition.from_dict({"precision": "fp16"})),
        FloatParam("warmup_ratio", 0.0, 0.2, step=0.1),
        FixedParam("compile", False),
    ),
)


def test_grid_enumerates_active_combinations_only():
    points = GRID.grid()
    assert len(points) == 3 * (1 + 2) * 3  # fp32 alone, fp16 with each loss scale
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    assert {p["warmup_ratio"] for p in points} == {0.0, 0.1, 0.2}
    for point in points:
        assert ("loss_scale" in point) == (point["precision"] == "fp16")
        assert point["compile"] is False


def test_grid_needs_a_step_for_float_ranges_and_has_a_size_limit():
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace("g", params=(FloatParam("learning_rate", 1e-4, 1e-2, log=True),)).grid()
    p = info.value.problems[0]
    assert p.field == "params.learning_rate.step" and "step" in p.fix and "categorical" in p.fix
    with pytest.raises(SearchSpaceError, match="more than 5 points"):
        GRID.grid(limit=5)


def test_grid_points_run_through_optuna_grid_sampler():
    space = GRID.without("loss_scale")
    axes = {p.name: list(p.finite_values()) for p in space.params if not isinstance(p, FixedParam)}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(axes, seed=0))
    study.optimize(
        lambda t: float(space.suggest(t)["gradient_accumulation_steps"]), n_trials=len(space.grid())
    )
    seen = [{k: v for k, v in space.suggest(t).items()} for t in study.trials]
    assert sorted(map(str, seen)) == sorted(map(str, space.grid()))


# --------------------------------------------------------------------------- transformations


def test_restrict_narrows_ranges_on_the_step_grid():
    space = SearchSpace.from_dict(FULL)
    narrowed = space.restrict("gradient_accumulation_steps", low=2, high=6).get("gradient_accumulation_steps")
    assert narrowed == IntParam("gradient_accumulation_steps", 3, 5, step=2)
    mbs = space.restrict("micro_batch_size", high=16).get("micro_batch_size")
    assert (mbs.low, mbs.high, mbs.log) == (2, 16, True)
    as_choices = space.restrict("micro_batch_size", choices=[1, 4, 8, 128]).get("micro_batch_size")
    assert as_choices == CategoricalParam("micro_batch_size", (4, 8))
    assert space.get("micro_batch_size").high == 64  # the original is untouched


def test_restrict_drops_params_whose_condition_can_no_longer_hold():
    space = SearchSpace.from_dict(FULL)
    no_fp16 = space.restrict("precision", choices=["fp32", "bf16"])
    assert no_fp16.get("precision") == CategoricalParam("precision", ("fp32",))
    assert "loss_scale" not in no_fp16.names
    assert no_fp16.get("activation_checkpointing").when is None  # `!= fp16` is now always true
    sharded = space.restrict("sharding_stage", low=2)
    assert "bucket_cap_mb" not in sharded.names and "grad_compression" not in sharded.names
    one = space.restrict("sharding_stage", high=0)
    assert one.get("grad_compression").when == Condition.from_dict({"sharding_stage": [0]})


def test_restrict_errors_when_nothing_is_left():
    space = SearchSpace.from_dict(FULL)
    with pytest.raises(SearchSpaceError) as info:
        space.restrict("micro_batch_size", low=100)
    p = info.value.problems[0]
    assert p.field == "params.micro_batch_size" and p.value == {"low": 100} and "without" in p.fix
    with pytest.raises(SearchSpaceError):
        space.restrict("precision", choices=["bf16"])
    with pytest.raises(SearchSpaceError, match="is not a parameter"):
        space.restrict("weight_decay", high=0.1)


def test_without_and_with_fixed():
    space = SearchSpace.from_dict(FULL)
    assert set(space.names) - set(space.without("sharding_stage").names) == {
        "sharding_stage",
        "bucket_cap_mb",
        "grad_compression",
    }
    single = space.with_fixed("world_size", 1)
    assert "sharding_stage" not in single.names and single.get("world_size") == FixedParam("world_size", 1)
    added = space.with_fixed("weight_decay", 0.01)
    assert (
        added.names[-1] == "weight_decay"
        and added.suggest(
            optuna.trial.FixedTrial(
                {
                    "sharding_stage": 2,
                    "micro_batch_size": 4,
                    "gradient_accumulation_steps": 1,
                    "precision": "fp32",
                    "learning_rate": 1e-3,
                    "activation_checkpointing": False,
                }
            )
        )["weight_decay"]
        == 0.01
    )
    with pytest.raises(SearchSpaceError):
        space.with_fixed("precision", "fp8")


def test_is_active_and_conditions_on_absent_params():
    space = SearchSpace.from_dict(FULL)
    assert space.is_active("loss_scale", {"precision": "fp16"})
    assert not space.is_active("loss_scale", {"precision": "fp32"})
    assert not space.is_active("loss_scale", {})  # precision inactive: the condition is false
    assert space.is_active("micro_batch_size", {})
    assert not Condition.from_dict({"activation_checkpointing": 1}).holds({"activation_checkpointing": True})


def test_to_config_keeps_base_values_for_other_knobs():
    space = SearchSpace.from_dict(FULL)
    base = TrialConfig(weight_decay=0.05, loss_scale=1024.0)
    values = space.suggest(
        optuna.trial.FixedTrial(
            {
                "sharding_stage": 3,
                "micro_batch_size": 16,
                "gradient_accumulation_steps": 3,
                "precision": "fp32",
                "learning_rate": 2e-3,
                "activation_checkpointing": True,
            }
        )
    )
    config = space.to_config(values, base)
    assert config == base.replace(
        world_size=2,
        sharding_stage=3,
        micro_batch_size=16,
        gradient_accumulation_steps=3,
        learning_rate=2e-3,
        activation_checkpointing=True,
    )
    assert space.default_values(config) == values
    space.check_values(values)
    with pytest.raises(ConfigError):
        space.to_config({"micro_batch_size": 0}, base)


def test_check_values_names_every_mismatch():
    space = SearchSpace.from_dict(FULL)
    with pytest.raises(SearchSpaceError) as info:
        space.check_values({"world_size": 2, "sharding_stage": 9, "precision": "fp32", "loss_scale": 1024.0})
    fields = {p.field: p for p in info.value.problems}
    assert "outside" in fields["sharding_stage"].problem
    assert "inactive" in fields["loss_scale"].problem
    assert fields["micro_batch_size"].problem == "is missing"


def test_importing_space_does_not_import_optuna_or_torch():
    code = "import sys, tuner.space.search_space, tuner.space.presets; print('optuna' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- docs

DOC = Path(__file__).resolve().parents[1] / "docs" / "search-spaces.md"


def test_docs_example_loads_and_docs_list_every_knob(tmp_path):
    from tuner.knobs import KNOBS

    text = DOC.read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    space = SearchSpace.load(write(tmp_path, example))
    assert space.is_active("sharding_stage", {"world_size": 2})
    assert [k for k in KNOBS if f"| `{k}` |" not in text] == []


def test_python_params_accept_conditions_as_dicts():
    param = FloatParam("loss_scale", 1024, 65536, log=True, when={"precision": "fp16"})
    assert param.when == Condition.from_dict({"precision": "fp16"}) and param.low == 1024.0

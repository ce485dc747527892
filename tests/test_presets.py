"""Preset search spaces in search_spaces/: they load, validate, and sample into valid configs."""

from __future__ import annotations

import optuna
import pytest

from tuner.errors import SearchSpaceError
from tuner.space import (
    PRESET_DIR,
    FixedParam,
    SearchSpace,
    list_presets,
    load_preset,
    load_space,
    preset_path,
)
from tuner.types import TrialConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

EXPECTED = {"gpt_tiny_system", "gpt_small_system", "gpt_hparams", "recsys_system", "joint"}


def test_presets_live_beside_the_package():
    assert PRESET_DIR.name == "search_spaces" and (PRESET_DIR.parent / "tuner").is_dir()
    assert set(list_presets()) >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_loads_samples_and_builds_valid_configs(name):
    path = preset_path(name)
    assert path.read_text().startswith("#"), "each preset starts with a comment saying what it is for"
    space = load_space(name)
    assert space == SearchSpace.load(path) == load_preset(name)
    assert space.workload in ("gpt", "recsys")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        values = space.suggest(trial)
        space.check_values(values)
        config = space.to_config(values, TrialConfig())
        for knob, value in values.items():
            assert getattr(config, knob) == value
        study.tell(trial, 0.0)


def test_gpt_tiny_system_is_the_cpu_demo():
    space = load_space("gpt_tiny_system")
    assert space.workload_params == {"layers": 2, "d_model": 64, "heads": 4, "vocab_size": 256}
    assert space.get("compile") == FixedParam("compile", False)
    assert space.get("learning_rate") == FixedParam("learning_rate", 1e-3)
    mbs = space.get("micro_batch_size")
    assert (mbs.low, mbs.high, mbs.log) == (2, 64, True)
    assert space.is_active("loss_scale", {"precision": "fp16"})
    assert not space.is_active("loss_scale", {"precision": "bf16"})
    # The config generator drops slow precisions; the fp16-only knob goes with fp16.
    assert "loss_scale" not in space.restrict("precision", choices=["fp32"]).names


def test_gpt_small_system_fp16_knobs():
    space = load_space("gpt_small_system")
    assert space.workload_params["d_model"] == 768 and space.workload_params["vocab_size"] == 50304
    assert set(space.get("precision").choices) == {"fp32", "tf32", "bf16", "fp16"}
    for knob in ("loss_scale", "loss_scale_growth_interval"):
        assert space.is_active(knob, {"precision": "fp16"}) and not space.is_active(
            knob, {"precision": "tf32"}
        )


def test_joint_shards_on_two_processes():
    space = load_space("joint")
    config = space.to_config(
        space.suggest(
            optuna.trial.FixedTrial(
                {
                    "sharding_stage": 3,
                    "micro_batch_size": 8,
                    "precision": "bf16",
                    "activation_checkpointing": False,
                    "learning_rate": 1e-3,
                    "warmup_ratio": 0.1,
                }
            )
        ),
        TrialConfig(),
    )
    assert (config.world_size, config.sharding_stage) == (2, 3)
    ddp = space.suggest(
        optuna.trial.FixedTrial(
            {
                "sharding_stage": 1,
                "bucket_cap_mb": 10.0,
                "grad_compression": "powersgd",
                "micro_batch_size": 8,
                "precision": "fp32",
                "activation_checkpointing": True,
                "learning_rate": 1e-3,
                "warmup_ratio": 0.0,
            }
        )
    )
    assert ddp["grad_compression"] == "powersgd" and ddp["bucket_cap_mb"] == 10.0


def test_names_with_dashes_and_suffixes_resolve():
    assert (
        preset_path("gpt-tiny-system")
        == preset_path("gpt_tiny_system.yaml")
        == preset_path("gpt_tiny_system")
    )


@pytest.mark.parametrize("name", ["no_such_space", "../pyproject", "/etc/passwd", ""])
def test_unknown_preset_names_the_available_ones(name):
    with pytest.raises(SearchSpaceError) as info:
        preset_path(name)
    problem = info.value.problems[0]
    assert problem.field == "space" and problem.value == name
    assert "gpt_tiny_system" in problem.fix and "joint" in problem.fix


def test_load_space_resolves_bare_preset_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        load_space("gpt_tiny_system.yaml") == load_space("gpt-tiny-system") == load_preset("gpt_tiny_system")
    )
    local = load_space("joint").with_fixed("world_size", 4)
    local.save(tmp_path / "joint.yaml")
    assert load_space("joint.yaml") == local  # a file in the working directory wins over the preset
    with pytest.raises(SearchSpaceError, match="does not exist"):
        load_space("missing.yaml")

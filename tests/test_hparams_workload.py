"""A CLI study of the real gpt workload over its own shape hyperparameters (layers, d_model,
dropout under `hparams:`) plus micro_batch_size and precision: every trial's peak memory is
predicted with the shape its hparams give, and the configs predicted over the limit are
never launched."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from tuner.cli.main import main as tuner_main
from tuner.errors import ValidationError
from tuner.space.search_space import SearchSpace
from tuner.study.create import resolve_spec
from tuner.study.spec import StudySpec
from tuner.workloads import get_workload

GPT_HP_SPACE = {
    "name": "gpt-hp",
    "workload": "gpt",
    "params": {
        "micro_batch_size": {"type": "categorical", "choices": [4, 8]},
        "precision": {"type": "categorical", "choices": ["fp32", "bf16"]},
    },
    "hparams": {
        "layers": {"type": "int", "low": 1, "high": 2},
        # 4096 wide: over 200M parameters even at one layer, 3.2 GB of fp32 weights, gradients and AdamW state
        "d_model": {"type": "categorical", "choices": [32, 4096]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.2},
    },
}
LIMIT = 2**30


def test_cli_gpt_study_predicts_each_trials_shape_and_never_launches_predicted_ooms(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(GPT_HP_SPACE))
    url = f"sqlite:///{tmp_path / 'hp.db'}"
    code = tuner_main([
        "tune", "space.yaml", "--trials", "2", "--steps", "1", "--warmup-steps", "0", "--no-baseline", "--confirm", "0",
        "--memory-limit", "1GiB", "--sampler", "random", "--seed", "3", "--storage", url, "--study", "gpt-hp",
        "--device", "cpu", "--output", "best.yaml", "--json",
    ])  # fmt: skip
    assert code == 0
    outcome = json.loads(capsys.readouterr().out)
    trials = optuna.load_study(study_name="gpt-hp", storage=url).trials
    results = {t.number: t.user_attrs["tuner.result"] for t in trials}
    # A prediction for every trial, launched or not.
    assert all(r["predicted_peak_bytes"] for r in results.values())
    launched = [t for t in trials if results[t.number]["status"] != "infeasible"]
    refused = [t for t in trials if results[t.number]["status"] == "infeasible"]
    assert len(launched) == 2 and refused
    for t in refused:  # never launched: nothing was measured
        assert results[t.number]["peak_memory_bytes"] is None and results[t.number]["predicted_peak_bytes"] > 0.9 * LIMIT
    for t in launched:
        assert results[t.number]["status"] == "ok" and results[t.number]["predicted_peak_bytes"] <= 0.9 * LIMIT
        assert t.params["d_model"] == 32 and isinstance(t.params["layers"], int)
    # The refusal comes from the shape the hparams give, not from the knobs: the same knob
    # values were launched with the narrow model. (`precision` is not drawn where the
    # generator fixed it: on a CPU without bf16 instructions it keeps fp32 only.)
    def knobs_of(t: optuna.trial.FrozenTrial) -> tuple[object, object]:
        return t.params["micro_batch_size"], t.params.get("precision")

    assert any(t.params["d_model"] == 4096 and knobs_of(t) in {knobs_of(t) for t in launched} for t in refused)
    # The best trial's hparams travel with its config: --json and the --output file.
    best = next(t for t in trials if t.number == outcome["best_trial"])
    assert outcome["best_hparams"] == {k: best.params[k] for k in ("layers", "d_model", "dropout")}
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["hparams"] == outcome["best_hparams"]


def test_run_study_hparams_must_be_the_workloads_tunable_params():
    space = SearchSpace.from_dict({**GPT_HP_SPACE, "hparams": {"n_experts": {"type": "int", "low": 1, "high": 4}, "vocab_size": 512}})
    with pytest.raises(ValidationError) as caught:
        resolve_spec(StudySpec(name="x", workload="gpt", space=space), get_workload("gpt"))
    fields = {p.field: p for p in caught.value.problems}
    assert "is not a tunable hyperparameter of workload 'gpt'" in fields["hparams.n_experts"].problem
    assert "d_model" in fields["hparams.n_experts"].fix
    assert "hparams.vocab_size" in fields  # declared by gpt, but not tunable

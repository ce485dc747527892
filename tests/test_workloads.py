"""The built-in trainable workloads: their shapes, data and the registry contract."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn

from tests.trial_requests import trial_request
from tuner.errors import WorkloadError
from tuner.trial.setup import TrainingSetup
from tuner.types import TrialBudget, TrialConfig, TrialStatus
from tuner.workloads import NullReporter, TrainableWorkload, get_workload, register_workload, text_corpus
from tuner.workloads.gpt import GPTWorkload, gpt_parameter_count
from tuner.workloads.recsys import RecsysWorkload


def test_describing_workloads_imports_no_torch() -> None:
    code = (
        "import sys, tuner.workloads as w;"
        "[(x := w.get_workload(n)).shape(x.resolve_params({})) for n in ('gpt', 'recsys')];"
        "w.get_workload('gpt').describe(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_returns_the_built_ins_with_their_untuned_defaults() -> None:
    gpt, recsys = get_workload("gpt"), get_workload("recsys")
    assert isinstance(gpt, GPTWorkload) and gpt.item_unit == "tokens"
    assert isinstance(recsys, RecsysWorkload) and recsys.item_unit == "samples"
    gpt_default = gpt.default_config(gpt.resolve_params({}))
    assert (gpt_default.micro_batch_size, gpt_default.max_sequence_length) == (8, 128)
    assert (gpt_default.precision, gpt_default.learning_rate) == ("fp32", 1e-3)
    assert not gpt_default.activation_checkpointing and not gpt_default.compile
    recsys_default = recsys.default_config(recsys.resolve_params({}))
    assert (recsys_default.micro_batch_size, recsys_default.precision) == (256, "fp32")


def test_gpt_shape_of_gpt2_small_matches_the_published_parameter_count() -> None:
    # GPT-2 small with the padded 50304 vocabulary (nanoGPT) has 124,475,904 parameters.
    shape = GPTWorkload().shape({"layers": 12, "d_model": 768, "heads": 12, "vocab_size": 50304})
    assert gpt_parameter_count(layers=12, d_model=768, vocab_size=50304, seq=1024) == 124_475_904
    assert shape["seq"] == 128 and shape["workload"] == "gpt"
    assert shape["params"] == gpt_parameter_count(layers=12, d_model=768, vocab_size=50304, seq=128)
    assert shape["flops_per_token"] == 6 * shape["params"] + 12 * 12 * 768 * 128
    assert {k: shape[k] for k in ("layers", "d", "heads", "vocab")} == {
        "layers": 12,
        "d": 768,
        "heads": 12,
        "vocab": 50304,
    }


@pytest.mark.parametrize(
    "params",
    [{"layers": 3, "d_model": 48, "heads": 3, "vocab_size": 300}, {"layers": 1, "d_model": 16, "heads": 1}],
)
def test_gpt_analytic_parameter_count_equals_the_real_model(params: dict[str, Any]) -> None:
    workload = GPTWorkload()
    params = workload.resolve_params(params)
    setup = workload.build(params, workload.default_config(params), "cpu", 0)
    assert sum(p.numel() for p in setup.model.parameters()) == workload.shape(params)["params"]
    assert setup.flops_per_item == workload.shape(params)["flops_per_token"]


@pytest.mark.parametrize("params", [{}, {"tables": 2, "rows": 50, "dim": 4, "dense_features": 5}])
def test_recsys_analytic_parameter_count_equals_the_real_model(params: dict[str, Any]) -> None:
    workload = RecsysWorkload()
    resolved = workload.resolve_params(params)
    setup = workload.build(resolved, workload.default_config(resolved), "cpu", 0)
    shape = workload.shape(resolved)
    assert sum(p.numel() for p in setup.model.parameters()) == shape["params"]
    assert (shape["tables"], shape["rows"], shape["dim"]) == (
        resolved["tables"],
        resolved["rows"],
        resolved["dim"],
    )
    bags = [m for m in setup.model.modules() if isinstance(m, nn.EmbeddingBag)]
    assert len(bags) == resolved["tables"] and all(
        b.weight.shape == (resolved["rows"], resolved["dim"]) for b in bags
    )


def test_gpt_rejects_heads_that_do_not_divide_d_model() -> None:
    with pytest.raises(WorkloadError) as caught:
        GPTWorkload().resolve_params({"d_model": 64, "heads": 5})
    assert caught.value.problems[0].field == "params.heads"
    assert "d_model=64" in str(caught.value)


def test_corpus_is_the_standard_librarys_source_with_a_held_out_tail() -> None:
    data = text_corpus.corpus_bytes()
    assert 2 * 1024**2 <= len(data) <= 4 * 1024**2
    first_file = sorted(text_corpus.stdlib_directory().glob("*.py"))[0].read_bytes()
    assert data.startswith(first_file[:1000])
    assert data.count(b"def ") > 1000  # it is Python source, not noise
    assert text_corpus.split_point(len(data)) == int(len(data) * 0.9)


def test_gpt_batches_are_next_byte_windows_of_the_training_split_only() -> None:
    workload = GPTWorkload()
    params = workload.resolve_params({"vocab_size": 512})
    setup = workload.build(params, TrialConfig(micro_batch_size=4, max_sequence_length=24), "cpu", 0)
    corpus = text_corpus.corpus_bytes()
    train_part = corpus[: text_corpus.split_point(len(corpus))]
    inputs, targets = setup.make_batch(4, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (4, 24) and inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one
    assert int(inputs.max()) < 256  # byte ids even with a larger vocabulary
    for row_in, row_out in zip(inputs, targets, strict=True):
        window = bytes(row_in.tolist()) + bytes(row_out[-1:].tolist())
        assert window in train_part
    val_inputs, _ = setup.validation_batches[0].pieces[0]
    assert bytes(val_inputs[0].tolist()) in corpus[text_corpus.split_point(len(corpus)) :]
    assert any("unused" in note for note in setup.notes)
    assert setup.items_per_sample == 24 and len(setup.blocks) == params["layers"]


def test_gpt_validation_set_does_not_depend_on_the_trial_seed() -> None:
    workload = GPTWorkload()
    params, config = workload.resolve_params({}), TrialConfig(micro_batch_size=2, max_sequence_length=16)
    a, b = workload.build(params, config, "cpu", 0), workload.build(params, config, "cpu", 99)
    assert all(
        torch.equal(x.pieces[0][0], y.pieces[0][0])
        for x, y in zip(a.validation_batches, b.validation_batches, strict=True)
    )


def test_recsys_labels_follow_a_learnable_planted_signal() -> None:
    workload = RecsysWorkload()
    setup = workload.build(workload.resolve_params({}), TrialConfig(micro_batch_size=4096), "cpu", 0)
    dense, ids, labels = setup.make_batch(4096, torch.Generator().manual_seed(0))
    assert dense.shape == (4096, 13) and ids.shape == (4096, 4) and labels.shape == (4096,)
    assert int(ids.max()) < 10000 and set(labels.unique().tolist()) <= {0.0, 1.0}
    # A logistic regression on the dense features alone already beats guessing (ln 2):
    # the labels carry signal, so a model can learn.
    weights = torch.zeros(13, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=50)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(dense @ weights, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(nn.functional.binary_cross_entropy_with_logits(dense @ weights.detach(), labels))
    assert fitted < math.log(2) - 0.1


class UserMLP(TrainableWorkload):
    """The docs' example: a user's own model registered by name."""

    name = "test-user-mlp"
    item_unit = "samples"

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).to(device)

        def make_batch(size: int, generator: torch.Generator) -> torch.Tensor:
            return torch.randn(size, 4, generator=generator, device=generator.device)

        return TrainingSetup(
            model=model,
            make_batch=make_batch,
            loss_fn=lambda m, x: (m(x) - x.sum(dim=1, keepdim=True)).pow(2).mean(),
            items_per_sample=1,
            blocks=(model[0],),
        )


def test_a_registered_user_workload_runs_through_the_registry_with_all_knobs() -> None:
    register_workload(UserMLP)
    workload = get_workload("test-user-mlp")
    config = TrialConfig(
        micro_batch_size=8,
        gradient_accumulation_steps=2,
        precision="bf16",
        activation_checkpointing=True,
        warmup_ratio=0.5,
        learning_rate=1e-2,
    )
    result = workload.run_trial(
        trial_request(workload, config, {}, TrialBudget(max_steps=4, warmup_steps=1), device="cpu"),
        NullReporter(),
    )
    assert result.status is TrialStatus.OK, result.reason
    assert result.item_unit == "samples" and result.metrics["items_per_optimizer_step"] == 16
    assert result.lr_trace[:2] == pytest.approx([5e-3, 1e-2])

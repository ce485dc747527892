"""Memory model: accuracy on the real H200 tables, physics on shapes it has not seen, the CLI."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.shared_data import H200_DIR
from tuner.cli.main import main
from tuner.errors import ValidationError
from tuner.generator.calibration import MemoryModel, memory_group
from tuner.generator.memory_model import estimate_peak, usable_memory_bytes
from tuner.hardware.profile import load_profile
from tuner.replay.table import load_table
from tuner.types import TrialConfig

DATA = H200_DIR
GPT = DATA / "gpt_124m.jsonl"
DLRM = DATA / "dlrm_8x1m.jsonl"
PROBE = DATA / "probe.json"
pytestmark = pytest.mark.skipif(not GPT.exists(), reason="shared H200 data not mounted")


@pytest.fixture(scope="module")
def h200():
    return load_profile(PROBE)


def _workload(table):
    return "gpt" if table.model_family == "lm" else "recsys"


@pytest.mark.parametrize("path", [GPT, DLRM])
def test_analytic_median_error_within_15_percent(path, h200):
    table = load_table(path)
    errors = [
        abs(estimate_peak(table.meta, row.knobs, workload=_workload(table), hardware=h200).peak_bytes - row.peak_alloc_bytes)
        / row.peak_alloc_bytes
        for row in table.rows
        if row.ok
    ]
    assert statistics.median(errors) <= 0.15
    assert max(errors) <= 0.25  # no row is wildly off either


@pytest.mark.parametrize("path", [GPT, DLRM])
def test_calibrated_error_within_5_percent_after_two_measurements(path, h200):
    table = load_table(path)
    errors = []
    for precision in {r.knobs["precision"] for r in table.rows}:
        for ckpt in (False, True):
            group = sorted(
                (r for r in table.rows if r.ok and r.knobs["precision"] == precision and r.knobs.get("activation_checkpointing", False) == ckpt),
                key=lambda r: r.knobs["micro_batch_size"],
            )
            if len(group) < 3:
                continue
            model = MemoryModel(table.meta, workload=_workload(table), hardware=h200)
            for row in group[:2]:  # the two cheapest configs are the ones a tuner would measure
                model.observe(row.knobs, row.peak_alloc_bytes, "ok")
            for row in group[2:]:
                predicted = model.estimate(row.knobs)
                assert predicted.calibrated
                errors.append(abs(predicted.peak_bytes - row.peak_alloc_bytes) / row.peak_alloc_bytes)
    assert errors and statistics.median(errors) <= 0.05


def test_fits_vs_oom_classification(h200):
    table = load_table(GPT)
    verdicts = [
        estimate_peak(table.meta, row.knobs, workload="gpt", hardware=h200).fits == row.ok
        for row in table.rows
        if row.status in ("ok", "oom")
    ]
    assert sum(verdicts) / len(verdicts) >= 0.95
    ooms = [r for r in table.rows if r.status == "oom"]
    assert ooms and all(not estimate_peak(table.meta, r.knobs, workload="gpt", hardware=h200).fits for r in ooms)


def test_one_measurement_moves_the_line_and_an_oom_caps_the_group(h200):
    table = load_table(GPT)
    model = MemoryModel(table.meta, workload="gpt", hardware=h200)
    cfg = {"micro_batch_size": 8, "precision": "bf16"}
    analytic = model.estimate({**cfg, "micro_batch_size": 32}).peak_bytes
    model.observe(cfg, 9_000_000_000, "ok")  # 0.5-0.7 GB below the analytic prediction at 8
    shifted = model.estimate({**cfg, "micro_batch_size": 32}).peak_bytes
    base = model.analytic(cfg).peak_bytes
    assert shifted == pytest.approx(analytic - (base - 9_000_000_000), abs=2)
    # fp16 stores activations like bf16: it shares the calibration; fp32 does not.
    assert memory_group(TrialConfig(precision="fp16")) == memory_group(TrialConfig(precision="bf16"))
    assert model.estimate({"micro_batch_size": 32, "precision": "fp16"}).calibrated
    model.observe({"micro_batch_size": 64, "precision": "bf16"}, None, "oom")
    assert model.estimate({"micro_batch_size": 128, "precision": "bf16"}).fits is False
    assert model.estimate({"micro_batch_size": 32, "precision": "bf16"}).fits is True


def test_physics_on_unseen_shapes():
    """Shapes absent from every table: the model must follow the tensors, not the table."""
    shape = {"layers": 24, "d": 1024, "heads": 16, "seq": 2048, "vocab": 32000, "params": 350_000_000}
    bf16 = estimate_peak(shape, {"micro_batch_size": 8, "precision": "bf16"}, workload="gpt")
    fp32 = estimate_peak(shape, {"micro_batch_size": 8, "precision": "fp32"}, workload="gpt")
    tokens = 8 * 2048
    # 38 bytes/token/layer·d at 16 bit (2-byte activations, fp32 residual), 68 at 32 bit.
    per_layer_bf16 = (bf16.parts["activations"] / tokens) / 24 / 1024
    assert 37 < per_layer_bf16 < 40
    assert fp32.parts["activations"] > 1.7 * bf16.parts["activations"]
    assert bf16.parts["logits"] == pytest.approx(12 * 32000 * tokens, rel=1e-6)
    # Doubling the batch doubles the batch-dependent parts and leaves model states alone.
    double = estimate_peak(shape, {"micro_batch_size": 16, "precision": "bf16"}, workload="gpt")
    assert double.parts["weights"] == bf16.parts["weights"]
    assert double.parts["activations"] == pytest.approx(2 * bf16.parts["activations"], rel=1e-6)
    # Checkpointing keeps only fp32 block inputs, eager attention adds the seq² scores.
    ckpt = estimate_peak(shape, {"micro_batch_size": 8, "precision": "bf16", "activation_checkpointing": True}, workload="gpt")
    assert ckpt.parts["activations"] < 0.2 * bf16.parts["activations"]
    eager = estimate_peak({**shape, "attention": "eager"}, {"micro_batch_size": 8, "precision": "bf16"}, workload="gpt")
    assert eager.peak_bytes - bf16.peak_bytes == pytest.approx(5 * 16 * 2048 * tokens * 24, rel=0.01)
    # ZeRO: each stage shards one more state over the ranks.
    states = {}
    for stage in range(4):
        est = estimate_peak(shape, {"micro_batch_size": 1, "world_size": 4, "sharding_stage": stage, "gradient_accumulation_steps": 2}, workload="gpt")
        states[stage] = est.parts["optimizer"], est.parts["grads"], est.parts["weights"]
    assert states[1][0] == pytest.approx(states[0][0] / 4, rel=1e-6)
    assert states[2][1] == pytest.approx(states[1][1] / 4, rel=1e-6)
    assert states[3][2] == pytest.approx(states[2][2] / 4, rel=1e-6)
    # A small-vocabulary model with checkpointing peaks while a block is recomputed.
    tiny_vocab = {**shape, "vocab": 256, "params": 300_000_000}
    recompute = estimate_peak(tiny_vocab, {"micro_batch_size": 8, "precision": "bf16", "activation_checkpointing": True}, workload="gpt")
    assert recompute.phase in ("recompute", "optimizer_step")


def test_shape_and_workload_errors_name_the_field():
    with pytest.raises(ValidationError) as err:
        estimate_peak({"layers": 2, "d": 64, "heads": 4, "seq": 128, "vocab": 0, "params": 10}, {}, workload="gpt")
    assert "shape.vocab" in str(err.value)
    with pytest.raises(ValidationError, match="no memory model"):
        estimate_peak({"x": 1}, {}, workload="mystery")


def test_usable_memory_of_h200_is_below_its_total(h200):
    usable = usable_memory_bytes(h200)
    assert 0.9 * h200.memory_bytes < usable < h200.memory_bytes


def test_cli_estimate_memory_json_with_table_meta_and_row(capsys):
    lines = GPT.read_text().splitlines()
    meta = json.loads(lines[0])["meta"]
    row = json.loads(lines[5])  # bf16, micro batch 128, ok
    assert main(["estimate-memory", "--workload", "gpt", "--shape", json.dumps(meta), "--config", json.dumps(row), "--hardware", str(PROBE), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True
    assert abs(out["peak_bytes"] - row["peak_alloc_bytes"]) / row["peak_alloc_bytes"] < 0.05
    assert {"weights", "optimizer", "activations", "logits"} <= set(out["parts"])
    oom_row = json.loads(lines[6])
    assert main(["estimate-memory", "--workload", "gpt", "--shape", json.dumps(meta), "--config", json.dumps(oom_row), "--hardware", str(PROBE), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fits"] is False


def test_cli_estimate_memory_rejects_unknown_config_keys(capsys):
    code = main(["estimate-memory", "--workload", "gpt", "--shape", '{"layers": 2, "d": 64, "heads": 4, "seq": 128, "vocab": 256, "params": 100000}', "--config", '{"micro_bach_size": 8}'])
    assert code == 2
    err = capsys.readouterr().err
    assert "micro_bach_size" in err and "micro_batch_size" in err

"""Config generator: narrowing by hardware, the memory constraint, starting configs, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shared_data import H200_DIR
from tuner.cli.main import main
from tuner.generator.memory_model import estimate_peak, usable_memory_bytes
from tuner.generator.planner import plan
from tuner.hardware.profile import HardwareProfile, load_profile
from tuner.replay.strategies import median, run_strategy
from tuner.replay.table import load_table
from tuner.space.search_space import SearchSpace
from tuner.types import TrialConfig

DATA = H200_DIR
PROBE = DATA / "probe.json"
GPT = DATA / "gpt_124m.jsonl"
pytestmark = pytest.mark.skipif(not PROBE.exists(), reason="shared H200 data not mounted")

GPT_124M = {"layers": 12, "d": 768, "heads": 12, "seq": 1024, "vocab": 50304, "params": 124475904}
CPU = HardwareProfile(device_type="cpu", cpu_count=2, ram_bytes=16 * 1024**3, supports_bf16=True, fast_precisions=("fp32",))


def _space(**extra):
    params = {
        "micro_batch_size": {"type": "int", "low": 1, "high": 1024, "log": True},
        "precision": {"type": "categorical", "choices": ["fp32", "tf32", "fp16", "bf16"]},
        "activation_checkpointing": {"type": "bool"},
        **extra,
    }
    return SearchSpace.from_dict({"name": "t", "params": params})


@pytest.fixture(scope="module")
def h200():
    return load_profile(PROBE)


def test_precisions_narrowed_by_hardware(h200):
    cpu_plan = plan(CPU, GPT_124M, _space(), workload="gpt")
    assert cpu_plan.space.get("precision").finite_values() == ("fp32",)
    assert cpu_plan.backend == "gloo"
    assert any("tf32" in line and "no-op" in line for line in cpu_plan.reasoning)
    gpu_plan = plan(h200, GPT_124M, _space(), workload="gpt")
    assert set(gpu_plan.space.get("precision").finite_values()) == {"bf16", "fp16", "tf32"}  # fp32 is 1/15 of bf16
    assert gpu_plan.backend == "nccl"
    # bf16 (the fastest matmuls) first, then the runner-up fp16 measured early as well
    assert [v["precision"] for v in gpu_plan.starting_configs][-2:] == ["bf16", "fp16"]
    assert all(v["precision"] == "fp32" for v in cpu_plan.starting_configs)  # one precision kept: no runner-up


def test_a_cpu_whose_flags_rank_bf16_first_also_starts_with_fp32():
    """An AVX512_BF16 CPU profile ranks bf16 first from its ISA flags; small models train
    slower in bf16 there, so fp32 is measured among the starting configs too."""
    avx512_bf16 = HardwareProfile(
        device_type="cpu", cpu_count=2, ram_bytes=16 * 1024**3, supports_bf16=True,
        fast_precisions=("bf16", "fp32"), peak_tflops={"fp32": 0.166, "bf16": 0.332},
    )  # fmt: skip
    tiny = {"layers": 2, "d": 64, "heads": 4, "seq": 128, "vocab": 256, "params": 120_000}
    space = _space(micro_batch_size={"type": "int", "low": 2, "high": 64, "log": True})
    generated = plan(avx512_bf16, tiny, space, workload="gpt")
    starts = generated.starting_configs
    assert [v["precision"] for v in starts] == ["bf16", "fp32"]
    assert starts[1]["micro_batch_size"] == starts[0]["micro_batch_size"] == 64  # both at the largest that fits
    assert "runner-up precision" in generated.starting_reasons()[1]
    for values in starts:
        generated.space.check_values(values)


def test_sharding_dropped_on_one_process(h200):
    space = _space(sharding_stage={"type": "int", "low": 0, "high": 3})
    assert plan(h200, GPT_124M, space, workload="gpt").space.get("sharding_stage").finite_values() == (0,)
    multi = _space(sharding_stage={"type": "int", "low": 0, "high": 3}, world_size={"type": "categorical", "choices": [1, 2]})
    assert plan(h200, GPT_124M, multi, workload="gpt").space.get("sharding_stage").finite_values() == (0, 1, 2, 3)


def test_starting_configs_fit_and_lie_in_the_space(h200):
    generated = plan(h200, GPT_124M, _space(), workload="gpt", base_config=TrialConfig(max_sequence_length=1024))
    assert 1 <= len(generated.starting_configs) <= 3
    limit = usable_memory_bytes(h200) * 0.9
    for values in generated.starting_configs:
        generated.space.check_values(values)
        feasible, estimate = generated.is_feasible(values)
        assert feasible and estimate.peak_bytes <= limit
        assert values["activation_checkpointing"] is False  # it fits without
    # The micro batch bound follows memory: 1024 x 1024 tokens never fits in 141 GB.
    assert generated.space.get("micro_batch_size").bounds()[1] < 1024
    assert generated.is_feasible({"micro_batch_size": 512, "precision": "bf16", "activation_checkpointing": False})[0] is False


def test_checkpointing_only_when_needed_to_fit(h200):
    """A 6.7B-parameter shape: without checkpointing not even one sequence fits in 141 GB."""
    big = {"layers": 32, "d": 4096, "heads": 32, "seq": 16384, "vocab": 50304, "params": 6_700_000_000}
    space = SearchSpace.from_dict(
        {"name": "t", "params": {"micro_batch_size": {"type": "categorical", "choices": [1, 2, 4]}, "precision": {"type": "categorical", "choices": ["bf16"]}, "activation_checkpointing": {"type": "bool"}}}
    )
    assert not estimate_peak(big, {"micro_batch_size": 1, "precision": "bf16"}, workload="gpt", hardware=h200).fits
    generated = plan(h200, big, space, workload="replay")
    assert generated.starting_configs and all(v["activation_checkpointing"] for v in generated.starting_configs)


def test_observe_calibrates_later_constraints(h200):
    generated = plan(h200, GPT_124M, _space(), workload="replay")
    probe = {"micro_batch_size": 64, "precision": "bf16", "activation_checkpointing": False}
    before = generated.constraint({**probe, "micro_batch_size": 128}).peak_bytes
    generated.observe(probe, int(generated.constraint(probe).peak_bytes * 1.2), "ok")  # the model was 20% low
    after = generated.constraint({**probe, "micro_batch_size": 128})
    assert after.calibrated and after.peak_bytes > before
    assert generated.is_feasible({**probe, "micro_batch_size": 128})[0] is False
    assert all(v["micro_batch_size"] <= 64 for v in generated.starting_configs if v["precision"] == "bf16")


def _physics_table(tmp_path: Path, shape: dict, underestimate: float) -> Path:
    """A table for a shape no table has, made from physics, not from measurements.

    Step time = per-step overhead + tokens x FLOPs per token / (peak x 45%), with each
    precision's H200 matmul peak; checkpointing recomputes the forward (+1/3 FLOPs). True
    peak memory is the analytic model's times `underestimate` (a model that is wrong by
    that much), OOM when above the H200's usable memory.
    """
    peaks = {"bf16": 771e12, "fp16": 771e12, "tf32": 396e12, "fp32": 51e12}
    hardware = load_profile(PROBE)
    usable = usable_memory_bytes(hardware)
    flops_per_token = 6 * shape["params"] + 12 * shape["layers"] * shape["d"] * shape["seq"]
    lines = [json.dumps({"meta": {**shape, "workload": "gpt_synthetic"}})]
    for precision, peak in peaks.items():
        for ckpt in (False, True):
            for mb in (2, 4, 8, 16, 32, 64, 128):
                row = {"micro_batch_size": mb, "precision": precision, "activation_checkpointing": ckpt}
                need = estimate_peak(shape, row, workload="gpt").peak_bytes * underestimate
                if need > usable:
                    lines.append(json.dumps({**row, "status": "oom", "peak_alloc_bytes": int(usable * 0.97)}))
                    continue
                tokens = mb * shape["seq"]
                step = 0.008 + tokens * flops_per_token * (4 / 3 if ckpt else 1) / (peak * 0.45)
                lines.append(json.dumps({**row, "status": "ok", "step_s": step, "items_per_s": tokens / step, "peak_alloc_bytes": int(need)}))
    path = tmp_path / "synthetic.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("underestimate", [0.95, 1.08])
def test_tuner_generalises_to_an_unseen_shape(tmp_path, h200, underestimate):
    shape = {"layers": 24, "d": 1024, "heads": 16, "seq": 2048, "vocab": 50304, "params": 354_823_168}
    table = load_table(_physics_table(tmp_path, shape, underestimate))
    summaries = [run_strategy(table, "tuner", trials=4, seed=seed, hardware=h200)[1] for seed in range(3)]
    assert median([s.trials_to_95pct for s in summaries]) <= 3
    assert sum(s.oom_trials for s in summaries) <= 1


def test_recommend_cli_with_table_meta(capsys):
    meta = json.loads(GPT.read_text().splitlines()[0])["meta"]
    assert main(["recommend", "--workload", "gpt", "--hardware", str(PROBE), "--shape", json.dumps(meta), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 1 <= len(out["starting_configs"]) <= 3
    table = load_table(GPT)
    for item in out["starting_configs"]:
        row = table.find(item["config"])
        assert row is not None and row.ok  # every recommendation really ran on the H200
        assert row.items_per_s >= 0.95 * table.best_ok().items_per_s
    assert any("fp32" in line for line in out["reasoning"])
    assert main(["recommend", "--workload", "gpt", "--hardware", str(PROBE), "--shape", json.dumps(meta)]) == 0
    assert "starting configs" in capsys.readouterr().out

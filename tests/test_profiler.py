"""The performance analyzer: real training steps of tiny models under torch.profiler."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tuner.cli.main import main
from tuner.errors import ConfigError, ValidationError
from tuner.trial.profiler import CATEGORIES, categorize_name, format_profile, profile_config
from tuner.trial.setup import TrainingSetup
from tuner.types import TrialConfig
from tuner.workloads import TrainableWorkload, WorkloadParam, register_workload

SEQ = 16


class _TinyAttentionModel(nn.Module):
    """One SDPA attention layer and an MLP: enough to exercise every compute category."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        x = x + F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        x = x + self.mlp(x)
        return self.head(x).squeeze(-1)


@register_workload
class TinyProfiledWorkload(TrainableWorkload):
    name = "tiny-profiled"
    description = "test workload: one attention layer + MLP regression"
    item_unit = "tokens"
    params = (WorkloadParam("d", "int", 32, "hidden size", low=4),)

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> TrainingSetup:
        model = _TinyAttentionModel(params["d"]).to(device)

        def make_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(batch, SEQ, params["d"], generator=generator, device=device)
            return x, x.mean(dim=-1)

        def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            return F.mse_loss(model(x), y)

        return TrainingSetup(model=model, make_batch=make_batch, loss_fn=loss_fn, items_per_sample=SEQ)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """One intra-op thread: these tests check what the profile says, not speed, and two
    OpenMP threads on two shared cores slow tiny steps down ~40x when other work runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report(one_torch_thread: None) -> dict[str, Any]:
    return profile_config(
        TinyProfiledWorkload(), TrialConfig(micro_batch_size=8), {"d": 32}, steps=2, device="cpu", top_k=1000
    )


def test_report_is_self_contained_json(report: dict[str, Any]) -> None:
    assert report["status"] == "ok"
    assert report["schema_version"] == 1 and report["kind"] == "tuner.performance_profile"
    assert report["workload"] == "tiny-profiled" and report["params"] == {"d": 32}
    assert TrialConfig.from_dict(report["config"]) == TrialConfig(micro_batch_size=8)
    assert report["device"] == "cpu" and report["activities"] == ["cpu"]
    assert report["cuda"] is None  # no GPU timeline on a CPU run
    assert report["items_per_step"] == 8 * SEQ
    assert json.loads(json.dumps(report)) == report


def test_shares_sum_to_one_and_matmul_attention_optimizer_show_up(report: dict[str, Any]) -> None:
    cpu = report["cpu"]
    assert sum(h["share"] for h in cpu["hotspots"]) == pytest.approx(1.0)
    assert set(cpu["categories"]) == set(CATEGORIES)
    assert sum(cpu["categories"].values()) == pytest.approx(1.0)
    assert cpu["categories"]["matmul"] > 0
    assert cpu["categories"]["attention"] > 0
    assert cpu["categories"]["optimizer"] > 0
    assert cpu["categories"]["communication"] == 0  # one process
    assert sum(h["self_time_us"] for h in cpu["hotspots"]) == pytest.approx(cpu["total_self_time_us"])
    top = cpu["hotspots"]
    assert top == sorted(top, key=lambda h: -h["self_time_us"])


def test_ops_take_the_category_of_their_outermost_categorised_caller(report: dict[str, Any]) -> None:
    rows = report["cpu"]["hotspots"]
    by_name: dict[str, set[str]] = {}
    for row in rows:
        by_name.setdefault(row["name"], set()).add(row["category"])
    # aten::t is a view: it counts as matmul inside aten::linear, not on its own.
    assert "matmul" in by_name["aten::t"]
    # The optimizer step's own ops (whatever AdamW implementation torch picked) are optimizer time.
    step = [r for r in rows if r["name"].startswith("Optimizer.step#")]
    assert step and all(r["category"] == "optimizer" for r in step)
    # addcdiv is only called by Adam here, and its name alone has no category.
    adam_rows = [r for r in rows if "addcdiv" in r["name"]]
    assert adam_rows and all(r["category"] == "optimizer" for r in adam_rows)
    # Our markers: Python time outside any op shows as an annotation row.
    assert any(r["kind"] == "annotation" and r["name"] == "train_step" for r in rows)


def test_real_profile_reports_cpu_dispatch_overhead_and_no_gpu_launch_section(report: dict[str, Any]) -> None:
    launch = report["launch_overhead"]
    assert launch["gpu_launch"] is None  # no kernels on a CPU run
    cpu = launch["cpu_dispatch"]
    assert cpu["op_calls"] > 50 and 0 < cpu["dispatch_share"] < 1
    assert cpu["compute_us"] + cpu["dispatch_us"] == pytest.approx(cpu["op_time_us"])
    assert cpu["dispatch_us_per_op"] > 0 and cpu["metadata_op_us_per_call"] > 0
    # aten::linear and AddmmBackward0 only wrap addmm/mm: their self time is framework time.
    # Either may drop out of the top rows when a preempted call inflates a compute op's self
    # time on a loaded machine, so the check is that the wrappers, not the kernels, lead.
    names = {row["name"] for row in cpu["top_operators"]}
    assert names & {"aten::linear", "AddmmBackward0"}, names
    assert not names & {"aten::addmm", "aten::mm"}, names
    assert "CPU dispatch:" in format_profile(report)


def test_top_k_keeps_a_remainder_row() -> None:
    report = profile_config(
        TinyProfiledWorkload(), TrialConfig(micro_batch_size=4), {"d": 16}, steps=1, device="cpu", top_k=3
    )
    hotspots = report["cpu"]["hotspots"]
    assert len(hotspots) == 4 and hotspots[-1]["kind"] == "remainder"
    assert sum(h["share"] for h in hotspots) == pytest.approx(1.0)
    table = format_profile(report)
    assert "CPU time" in table and "matmul" in table and hotspots[0]["name"] in table


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("aten::addmm", "matmul"),
        ("autograd::engine::evaluate_function: MmBackward0", "matmul"),
        ("aten::_scaled_dot_product_flash_attention", "attention"),
        ("aten::_efficient_attention_backward", "attention"),
        ("Optimizer.step#AdamW.step", "optimizer"),
        ("aten::_fused_adamw_", "optimizer"),
        ("aten::_foreach_mul_", "optimizer"),
        ("c10d::allreduce_", "communication"),
        ("nccl:all_reduce", "communication"),
        ("aten::copy_", "data_movement"),
        ("aten::embedding_bag", "data_movement"),
        ("aten::gelu", None),
        ("aten::broadcast_tensors", None),  # a view helper, not a collective
        ("aten::_fused_dropout", None),  # "fused" alone is not the optimizer
    ],
)
def test_categorize_names(name: str, category: str | None) -> None:
    assert categorize_name(name) == category


@pytest.mark.parametrize(
    ("kernel", "category"),
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "matmul"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", "attention"),
        ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication"),
        ("Memcpy DtoD (Device -> Device)", "data_movement"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", None),
    ],
)
def test_categorize_kernel_names(kernel: str, category: str | None) -> None:
    assert categorize_name(kernel, kernel=True) == category


def test_distributed_configs_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        profile_config(TinyProfiledWorkload(), TrialConfig(world_size=2), {}, steps=1, device="cpu")
    assert info.value.problems[0].field == "world_size"


def test_bad_steps_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        profile_config(TinyProfiledWorkload(), TrialConfig(), {}, steps=0, device="cpu")
    assert info.value.problems[0].field == "steps"


def test_cli_profiles_gpt_as_json(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    rc = main(
        [
            "profile", "--workload", "gpt",
            "--config", '{"micro_batch_size": 2, "max_sequence_length": 32}',
            "--params", '{"layers": 1, "d_model": 32, "heads": 2}',
            "--steps", "1", "--device", "cpu", "--json", "--output", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["workload"] == "gpt" and printed["config"]["micro_batch_size"] == 2
    assert printed["cpu"]["categories"]["matmul"] > 0
    assert printed["cpu"]["categories"]["attention"] > 0  # gpt uses SDPA


def test_cli_names_the_bad_config_field(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["profile", "--workload", "tiny-profiled", "--config", '{"micro_batch": 2}'])
    assert rc == 2
    err = capsys.readouterr().err
    assert "micro_batch" in err and "micro_batch_size" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_profile_reports_launch_latency_and_idle_gaps() -> None:
    report = profile_config(
        TinyProfiledWorkload(), TrialConfig(micro_batch_size=8), {"d": 32}, steps=3, device="cuda", top_k=20
    )
    assert report["status"] == "ok"
    gpu = report["launch_overhead"]["gpu_launch"]
    assert gpu is not None and gpu["kernels"] > 10
    assert gpu["kernels_without_launch"] < gpu["kernels"] / 2  # correlation ids matched
    assert gpu["launch_latency_us"]["p50"] > 0 and gpu["launch_call_us"]["mean"] > 0
    assert gpu["steps"] == 3 and 0 <= gpu["idle_share"] < 1
    # a tiny model on a big GPU is launch-bound: its kernels leave the GPU idle most of a step
    assert gpu["idle_share"] > 0.2
    assert "kernel launch latency" in format_profile(report)

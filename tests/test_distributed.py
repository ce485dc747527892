"""Multi-process trials on the CPU with gloo: world_size 2, sharding stages 0-3.

Real torch.distributed training of a tiny model (tests/distributed_test_workloads.py) in
two rank processes. The sharding assertions read what each rank really holds (local
shards of DTensors, the ZeRO optimizer's own state), and the failure tests check that
no rank process outlives its trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from distributed_test_workloads import TinyStackWorkload

from tests.trial_requests import trial_request
from tuner.errors import ValidationError
from tuner.trial.distributed.comm import union_length
from tuner.trial.distributed.run import run_distributed_trial
from tuner.trial.distributed.supervise import describe_exit
from tuner.trial.runner import run_training_trial
from tuner.types import TrialBudget, TrialConfig, TrialStatus
from tuner.workloads import NullReporter

BUDGET = TrialBudget(max_steps=5, warmup_steps=2, eval_batches=2)
SEED = 3


def config(**changes: object) -> TrialConfig:
    base = {"world_size": 2, "micro_batch_size": 8, "learning_rate": 1e-2}
    return TrialConfig(**{**base, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stage_results() -> dict[int, object]:
    """One trial per stage through the public runner, same seed and global batch.

    Stage 2 also asks for fp16 gradient compression, a DDP-only knob: its loss curve
    agreeing with stage 0's shows the knob really does nothing there.
    """
    workload = TinyStackWorkload()
    extra = {2: {"grad_compression": "fp16"}}
    return {
        stage: run_training_trial(
            workload,
            trial_request(
                workload,
                config(sharding_stage=stage, **extra.get(stage, {})),
                {},
                BUDGET,
                device="cpu",
                seed=SEED,
            ),
            NullReporter(),
        )
        for stage in range(4)
    }


# --- NVML telemetry on every rank ----------------------------------------------------------


def test_every_rank_has_a_telemetry_line_and_a_cpu_rank_says_why_it_has_none(stage_results) -> None:
    for stage, result in stage_results.items():
        assert result.status is TrialStatus.OK, result.reason  # no NVML never fails a trial
        table = result.telemetry["nvml_per_rank"]
        assert [row["rank"] for row in table["ranks"]] == [0, 1], stage
        if torch.cuda.is_available():
            continue  # the GPU-only test below checks the sampled rows
        for row in table["ranks"]:
            assert row["available"] is False and row["samples"] == 0
            assert row["reason"] == "CPU rank: no GPU for NVML to sample"
        assert table["sampled_ranks"] == 0 and table["worst_rank"] is None
        assert table["reason"] == "CPU rank: no GPU for NVML to sample"
        assert "nvml_rank" not in result.telemetry  # the rank's own line went into the table
        assert "nvml" not in result.telemetry and "gpu_worst_rank" not in result.metrics


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL, one rank per GPU)")
def test_every_cuda_rank_samples_its_own_gpu() -> None:
    workload = TinyStackWorkload()
    result = run_training_trial(
        workload, trial_request(workload, config(), {}, BUDGET, device="cuda", seed=SEED), NullReporter()
    )
    assert result.status is TrialStatus.OK, result.reason
    table = result.telemetry["nvml_per_rank"]
    assert table["sampled_ranks"] == 2, table
    assert all(row["available"] and row["samples"] >= 1 for row in table["ranks"])
    assert table["worst_rank"] in (0, 1) and result.metrics["gpu_worst_rank"] == table["worst_rank"]
    assert result.telemetry["nvml"]["summary"]["available"]  # rank 0's record: the time chart


# --- what each rank cost the machine -----------------------------------------------------


def test_each_cpu_rank_reports_its_threads_and_cpu_time_per_step(stage_results) -> None:
    from tuner.trial.distributed.run import omp_threads

    result = stage_results[0]
    per_rank = result.telemetry["per_rank"]
    cores = len(os.sched_getaffinity(0))
    assert per_rank["cpu_threads"] == [float(omp_threads() or max(1, cores // 2))] * 2
    assert result.metrics["cpu_threads"] == sum(per_rank["cpu_threads"])
    cpu = per_rank["cpu_s_per_step"]
    assert all(c is not None and c > 0 for c in cpu), cpu  # a step of a real model costs CPU
    assert result.metrics["cpu_s_per_step"] == pytest.approx(sum(cpu))


def test_omp_num_threads_sets_each_cpu_ranks_threads(monkeypatch) -> None:
    """The executor's (or user's) per-process share wins over cores // world_size, so a
    world-size-1 trial (torch reads it) and every rank of a larger one use the same."""
    from tuner.trial.distributed.run import _cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _cpu_threads("cpu", 2)[0] == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    cores = len(os.sched_getaffinity(0))
    assert _cpu_threads("cpu", 2)[0] == max(1, cores // 2)
    assert _cpu_threads("cuda", 2)[0] is None


# --- sharding really happens ------------------------------------------------------------


@pytest.mark.parametrize("stage", range(4))
def test_each_stage_trains_and_reports_global_measurements(stage_results, stage: int) -> None:
    result = stage_results[stage]
    assert result.status is TrialStatus.OK, result.reason
    assert result.steps_run == BUDGET.max_steps
    assert result.timed_steps == BUDGET.max_steps - BUDGET.warmup_steps
    assert result.metrics["world_size"] == 2
    assert result.metrics["sharding_stage"] == stage
    # Global throughput: both ranks' samples per step, paced by the slower rank.
    assert result.metrics["items_per_optimizer_step"] == 2 * 8
    assert result.items_per_s == pytest.approx(16 / result.step_time_s)
    assert result.step_time_s == max(result.telemetry["per_rank"]["step_time_s"])
    peaks = result.telemetry["per_rank"]["peak_memory_bytes"]
    assert len(peaks) == 2 and all(p > 0 for p in peaks)
    assert result.peak_memory_bytes == max(peaks) == result.metrics["peak_memory_bytes_per_rank"]
    assert 0 < result.metrics["comm_share"] <= 1
    assert result.metrics["comm_events"] > 0
    assert result.val_loss is not None and math.isfinite(result.val_loss)


def test_stage1_shards_the_optimizer_state(stage_results) -> None:
    full = stage_results[0].metrics["optimizer_state_bytes_per_rank"]
    zero = stage_results[1].metrics["optimizer_state_bytes_per_rank"]
    # ZeRO assigns whole tensors to ranks, so the larger rank holds a bit over half.
    assert 0.4 * full <= zero <= 0.65 * full
    per_rank = stage_results[1].telemetry["per_rank"]["optimizer_state_bytes_per_rank"]
    assert sum(per_rank) == pytest.approx(full, rel=0.01)
    # Parameters are not sharded at stage 1.
    assert (
        stage_results[1].metrics["param_bytes_per_rank_between_steps"]
        == stage_results[0].metrics["param_bytes_per_rank_between_steps"]
    )


def test_stages_2_and_3_shard_parameters_and_differ_after_forward(stage_results) -> None:
    full_params = stage_results[0].metrics["param_bytes_per_rank_between_steps"]
    assert full_params == stage_results[0].metrics["model_parameters"] * 4  # fp32
    full_state = stage_results[0].metrics["optimizer_state_bytes_per_rank"]
    for stage in (2, 3):
        metrics = stage_results[stage].metrics
        assert metrics["param_bytes_per_rank_between_steps"] == pytest.approx(full_params / 2, rel=0.05)
        assert metrics["optimizer_state_bytes_per_rank"] == pytest.approx(full_state / 2, rel=0.05)
    # Stage 2 keeps the gathered parameters after forward; stage 3 frees them.
    assert stage_results[2].metrics["param_bytes_per_rank_after_forward"] == full_params
    assert stage_results[3].metrics["param_bytes_per_rank_after_forward"] <= 0.6 * full_params


def test_losses_of_all_stages_agree(stage_results) -> None:
    reference = stage_results[0].loss_curve
    assert len(reference) == BUDGET.max_steps
    for stage in (1, 2, 3):
        assert stage_results[stage].loss_curve == pytest.approx(reference, rel=1e-4, abs=1e-5), stage
        assert stage_results[stage].val_loss == pytest.approx(stage_results[0].val_loss, rel=1e-4)


def test_ranks_draw_different_shards_of_the_global_batch(stage_results) -> None:
    # Rank 0 draws what a single process with the same seed draws; if rank 1 drew the
    # same batch, the 2-rank loss of the first step would equal the 1-process loss.
    single = run_training_trial(
        TinyStackWorkload(),
        trial_request(
            TinyStackWorkload(),
            config(world_size=1),
            {},
            TrialBudget(max_steps=1, warmup_steps=0, eval_batches=0),
            device="cpu",
            seed=SEED,
        ),
        NullReporter(),
    )
    assert single.status is TrialStatus.OK
    assert single.loss_curve[0] != pytest.approx(stage_results[0].loss_curve[0], rel=1e-3)


@pytest.mark.parametrize("compression", ["fp16", "powersgd"])
def test_gradient_compression_hooks_train(stage_results, compression: str) -> None:
    result = run_distributed_trial(
        TinyStackWorkload(),
        trial_request(
            TinyStackWorkload(),
            config(grad_compression=compression, bucket_cap_mb=1),
            {},
            BUDGET,
            device="cpu",
            seed=SEED,
        ),
        NullReporter(),
        timeout_s=60,
    )
    assert result.status is TrialStatus.OK, result.reason
    reference = stage_results[0].loss_curve
    # The first step's loss precedes any update: compression cannot change it.
    assert result.loss_curve[0] == pytest.approx(reference[0], rel=1e-6)
    # Compressed gradients change the updates a little, not the course of training.
    assert result.loss_curve[-1] == pytest.approx(reference[-1], rel=0.1)
    assert 0 < result.metrics["comm_share"] <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) limitation")
def test_bf16_compression_on_the_cpu_is_refused_with_the_fix() -> None:
    result = run_distributed_trial(
        TinyStackWorkload(),
        trial_request(TinyStackWorkload(), config(grad_compression="bf16"), {}, BUDGET, device="cpu"),
        NullReporter(),
    )
    assert result.status is TrialStatus.FAILED
    assert "grad_compression='bf16'" in result.reason and "use grad_compression: fp16" in result.reason


def test_ddp_knobs_at_a_sharded_stage_are_noted(stage_results) -> None:
    notes = stage_results[2].notes
    assert any("grad_compression=fp16" in note and "no effect at sharding_stage 2" in note for note in notes)


# --- the pruner sees rank 0 and stops every rank ---------------------------------------


class PruneAt:
    def __init__(self, step: int) -> None:
        self.step = step
        self.calls: list[tuple[int, float]] = []

    def report(self, step: int, value: float) -> bool:
        self.calls.append((step, value))
        return step >= self.step


def test_a_prune_decision_stops_all_ranks_together(stage_results) -> None:
    reporter = PruneAt(2)
    result = run_distributed_trial(
        TinyStackWorkload(),
        trial_request(TinyStackWorkload(), config(), {}, BUDGET, device="cpu", seed=SEED),
        reporter,
        timeout_s=60,
    )
    assert result.status is TrialStatus.PRUNED
    assert result.steps_run == 2
    assert [step for step, _ in reporter.calls] == [1, 2]
    # The reported values are the global batch's losses, the ones the trial records.
    assert [value for _, value in reporter.calls] == pytest.approx(list(result.loss_curve))
    assert result.loss_curve == pytest.approx(stage_results[0].loss_curve[:2])



def test_a_quality_budget_runs_over_ranks_with_validation_checkpoints_and_a_target() -> None:
    """Items are global (micro batch x ranks); every 2 steps a checkpoint's validation loss
    (averaged over ranks) goes to the pruner; the cosine spans the items; with a target the
    ranks stop together at the first checkpoint that reaches it."""
    # 8 samples x 2 ranks = 16 items a step: 6 steps, checkpoints after steps 2, 4 and 6
    budget = TrialBudget(max_items=96, eval_every_items=32, eval_batches=2, warmup_steps=1)
    workload = TinyStackWorkload()
    reporter = PruneAt(10**6)
    result = run_training_trial(workload, trial_request(workload, config(), {}, budget, device="cpu", seed=SEED), reporter)
    assert result.status is TrialStatus.OK, result.reason
    assert result.steps_run == 6 == len(result.lr_trace)
    assert result.lr_trace[0] == pytest.approx(1e-2) and result.lr_trace[-1] < 0.1 * 1e-2  # the cosine ends with the data
    assert [p[0] for p in result.val_curve] == [32.0, 64.0, 96.0]
    assert reporter.calls == [(i + 1, p[2]) for i, p in enumerate(result.val_curve)]  # validation, not training losses
    assert result.val_loss == result.val_curve[-1][2] < result.val_curve[0][2]
    assert result.metrics["items_trained"] == 96.0 and result.metrics["train_seconds"] > 0

    target = result.val_curve[1][2]
    first = next(i for i, p in enumerate(result.val_curve) if p[2] <= target)
    stopped = run_training_trial(
        workload,
        trial_request(workload, config(), {}, dataclasses.replace(budget, target_val_loss=target), device="cpu", seed=SEED),
        NullReporter(),
    )
    assert stopped.status is TrialStatus.OK, stopped.reason
    assert stopped.steps_run == 2 * (first + 1) and stopped.val_metrics["target_reached"] == 1.0
    assert [p[2] for p in stopped.val_curve] == pytest.approx([p[2] for p in result.val_curve[: first + 1]])


# --- failures end the whole trial, and nothing is left behind -----------------------------


def _process_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry.name))
    return children


def _descendants() -> set[int]:
    children, found, todo = _process_children(), set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _is_forkserver(pid: int) -> bool:
    try:
        return b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_failing(tmp_path: Path, mode: str, **kwargs: object):
    """Run a trial whose rank 1 fails in `mode`; assert that no rank process survives it."""
    before = _descendants()
    result = run_distributed_trial(
        TinyStackWorkload(),
        trial_request(
            TinyStackWorkload(),
            config(),
            {"fail_mode": mode, "pid_dir": str(tmp_path)},
            TrialBudget(max_steps=8, warmup_steps=1, eval_batches=0),
            device="cpu",
            seed=SEED,
        ),
        NullReporter(),
        **kwargs,
    )
    rank_pids = [int(p.read_text()) for p in sorted(tmp_path.glob("rank*.pid"))]
    assert len(rank_pids) == 2, "both ranks should have started"
    assert not [pid for pid in rank_pids if _alive(pid)], "a rank process outlived its trial"
    leftovers = {pid for pid in _descendants() - before if _alive(pid) and not _is_forkserver(pid)}
    assert not leftovers, f"processes left behind: {leftovers}"
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("tuner-rank-")]
    return result


def test_a_rank_that_raises_fails_the_trial(tmp_path: Path) -> None:
    result = run_failing(tmp_path, "raise", timeout_s=60)
    assert result.status is TrialStatus.FAILED
    assert result.reason.startswith("rank 1: ValueError: injected failure at training micro batch 3")
    assert result.duration_s < 30  # the stuck peer was killed, not waited for


def test_a_rank_that_dies_fails_the_trial(tmp_path: Path) -> None:
    result = run_failing(tmp_path, "exit", timeout_s=60)
    assert result.status is TrialStatus.FAILED
    assert result.reason.startswith(
        "rank 1 died (exited with code 7 without a result) after 2 optimizer steps"
    )
    ranks = result.telemetry["nvml_per_rank"]["ranks"]
    assert ranks[1] == {"rank": 1, "available": False, "reason": "the rank sent no result"}


def test_a_hanging_rank_is_killed_after_the_timeout(tmp_path: Path) -> None:
    began = time.monotonic()
    result = run_failing(tmp_path, "hang", timeout_s=3)
    assert result.status is TrialStatus.FAILED
    assert result.reason.startswith("timed out: no progress for 3 s")
    assert "rank 1: 2" in result.reason
    assert time.monotonic() - began < 30


@pytest.mark.parametrize("mode", ["oom", "oom_error"])
def test_out_of_memory_on_one_rank_is_an_oom_trial(tmp_path: Path, mode: str) -> None:
    result = run_failing(tmp_path, mode, timeout_s=60)
    assert result.status is TrialStatus.OOM
    assert result.reason.startswith("rank 1: out of memory:")
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 0


_OWNER_SCRIPT = """
import sys
sys.path[:0] = sys.argv[2:]
from distributed_test_workloads import TinyStackWorkload
from tuner.trial.distributed.run import run_distributed_trial
from trial_requests import trial_request
from tuner.types import TrialBudget, TrialConfig
from tuner.workloads import NullReporter
workload = TinyStackWorkload()
request = trial_request(
    workload, TrialConfig(world_size=2, micro_batch_size=8),
    {"fail_mode": "hang", "fail_rank": 0, "fail_at_call": 1, "pid_dir": sys.argv[1]},
    TrialBudget(max_steps=4, warmup_steps=1), device="cpu",
)
run_distributed_trial(workload, request, NullReporter(), timeout_s=600)
"""


@pytest.mark.slow  # a fresh interpreter imports torch twice (owner and its forkserver)
def test_ranks_die_with_a_sigkilled_owner(tmp_path: Path) -> None:
    # The local executor SIGKILLs a stuck worker; the trial's ranks must not outlive it.
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT, str(tmp_path), str(Path(__file__).parent)],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("rank*.pid"))) < 2:
            assert owner.poll() is None, "the trial's owner exited early"
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.2)
        rank_pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
        assert all(_alive(pid) for pid in rank_pids)
        # The ranks' parent is the owner's forkserver; it must not outlive the owner either.
        spawned = set(rank_pids) | {_parent_of(pid) for pid in rank_pids}
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in spawned) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in spawned if _alive(pid)], "processes outlived their SIGKILLed owner"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(owner.pid, signal.SIGKILL)
        owner.wait(10)


# --- concurrency, input errors and the small pieces ----------------------------------------


def test_concurrent_trials_rendezvous_on_their_own_ports(stage_results) -> None:
    results: list[object] = [None, None]

    def run(index: int) -> None:
        results[index] = run_distributed_trial(
            TinyStackWorkload(),
            trial_request(
                TinyStackWorkload(),
                config(),
                {},
                TrialBudget(max_steps=2, warmup_steps=1, eval_batches=0),
                device="cpu",
                seed=SEED,
            ),
            NullReporter(),
            timeout_s=60,
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for result in results:
        assert result.status is TrialStatus.OK, result.reason
        assert result.loss_curve == pytest.approx(stage_results[0].loss_curve[:2])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_an_input_error() -> None:
    result = run_distributed_trial(
        TinyStackWorkload(),
        trial_request(TinyStackWorkload(), config(), {}, BUDGET, device="cuda"),
        NullReporter(),
    )
    assert result.status is TrialStatus.FAILED
    assert "invalid trial input" in result.reason and "CUDA is not available" in result.reason


def test_a_bad_workload_parameter_fails_before_any_process_starts() -> None:
    # Params are resolved once, where the request is made (the study's spec), so a bad
    # one is refused there, naming the field, and no rank process ever starts.
    before = _descendants()
    with pytest.raises(ValidationError, match=r"params\.widht"):
        trial_request(TinyStackWorkload(), config(), {"widht": 3}, BUDGET, device="cpu")
    assert _descendants() <= before


def test_union_length_counts_overlapping_intervals_once() -> None:
    assert union_length([]) == 0
    assert union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4)
    assert union_length([(0, 10), (2, 3)]) == pytest.approx(10)


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3 without a result"

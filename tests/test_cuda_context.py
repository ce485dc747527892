"""Issue 17, item 6 and the sticky-error rule for the inline executor, on a CPU machine.

- Memory other processes hold on a GPU is read again when a study is given a saved
  profile: the figure recorded by `tuner probe` may be days old.

- A persistent local worker that ran a single-GPU trial keeps its CUDA context until it
  exits; a later multi-process trial launched from it would train rank 0 next to that
  context. The worker is replaced first, and the launcher never initialises CUDA.
- After a sticky CUDA error the inline executor (which cannot replace its process)
  refuses further GPU trials with the reason.

A CPU has no CUDA context to hold: the test workload (tests/cuda_context_workloads.py)
stands in for a single-GPU trial by making `torch.cuda.is_initialized()` true in its own
worker process, which is what the worker reports to its parent after a real CUDA trial.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import psutil
import pytest
import torch

import tests.cuda_context_workloads  # noqa: F401  (registers cuda-context-probe)
from tests.shared_data import H200_DIR
from tuner.errors import ValidationError
from tuner.executors.cuda_context import cuda_context_held, fresh_worker_reason
from tuner.executors.inline import InlineExecutor
from tuner.executors.local import LocalExecutor
from tuner.executors.ray_device import ray_trial_device
from tuner.generator.memory_model import ALLOCATOR_USABLE_FRACTION, usable_memory_bytes
from tuner.hardware.memory_in_use import with_memory_used_by_others
from tuner.hardware.profile import load_profile
from tuner.space.search_space import SearchSpace
from tuner.study.hardware_plan import make_generator
from tuner.study.spec import StudySpec
from tuner.trial.device import resolve_device
from tuner.trial.distributed.run import _rank_device_type
from tuner.trial_request import TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import get_workload

PROBE = H200_DIR / "probe.json"
GIB = 1024**3

ILLEGAL_ADDRESS = "RuntimeError: CUDA error: an illegal memory access was encountered"


def probe(number: int, *, world_size: int = 1, device: str = "auto", **params: Any) -> TrialRequest:
    return TrialRequest(
        number,
        "cuda-context-probe",
        {"claim_cuda_context": False, "fail_reason": "", **params},
        TrialConfig(world_size=world_size),
        TrialBudget(max_steps=1, warmup_steps=0),
        device=device,
    )


def pid_of(result: TrialResult) -> int:
    assert result.status is TrialStatus.OK, result.reason
    return int(result.metrics["pid"])


def test_only_a_gpu_multi_process_trial_needs_a_worker_without_a_cuda_context() -> None:
    assert fresh_worker_reason("auto", 2, holds_cuda_context=True) is not None
    assert fresh_worker_reason("cuda", 4, holds_cuda_context=True) is not None
    assert "rank 0" in (fresh_worker_reason("cuda:0", 2, holds_cuda_context=True) or "")
    assert fresh_worker_reason("cuda", 1, holds_cuda_context=True) is None  # its own context
    assert fresh_worker_reason("cuda", 2, holds_cuda_context=False) is None
    assert fresh_worker_reason("cpu", 2, holds_cuda_context=True) is None  # gloo ranks


def test_a_worker_holding_a_cuda_context_is_replaced_before_a_multi_process_trial() -> None:
    with LocalExecutor(workers=1, device="auto", trial_timeout_s=60) as executor:
        single = executor.submit(probe(0, claim_cuda_context=True)).result()
        holder = pid_of(single)
        multi = executor.submit(probe(1, world_size=2)).result()
        fresh = pid_of(multi)
        assert fresh != holder
        assert any("fresh worker launched this world_size=2 trial" in note for note in multi.notes)
        _gone, alive = psutil.wait_procs(_processes(holder), timeout=10)
        assert not alive, "the worker holding the context must have exited"
        # The fresh worker never initialised CUDA: the next multi-process trial keeps it.
        again = executor.submit(probe(2, world_size=2)).result()
        assert pid_of(again) == fresh and not any("fresh worker" in n for n in again.notes)
        assert executor.replaced_workers == 1


def test_the_rank_launcher_never_initialises_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine with two GPUs, where any call that initialises CUDA fails the test.
    def initialises(*_args: object) -> None:
        raise AssertionError("the launching process initialised CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("init", "_lazy_init", "current_device", "set_device"):
        monkeypatch.setattr(torch.cuda, name, initialises)
    for device in ("auto", "cuda", "cuda:0", "cuda:1"):
        assert _rank_device_type(device, 2) == "cuda"
    assert _rank_device_type("cpu", 2) == "cpu"
    with pytest.raises(ValidationError, match="needs 3 GPUs"):
        _rank_device_type("cuda", 3)
    with pytest.raises(ValidationError, match="only 2 CUDA device"):
        _rank_device_type("cuda:2", 2)
    with pytest.raises(ValidationError, match="not a torch device"):
        _rank_device_type("gpu0", 2)
    # What the launcher used before: the single-process resolution initialises CUDA.
    with pytest.raises(AssertionError, match="initialised CUDA"):
        resolve_device("auto")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert cuda_context_held()


def test_after_a_sticky_cuda_error_the_inline_executor_refuses_gpu_trials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with InlineExecutor(workers=1) as executor:
        # On the CPU such a message breaks no CUDA context: nothing is refused.
        executor.submit(probe(0, device="cpu", fail_reason=ILLEGAL_ADDRESS)).result()
        assert executor.cuda_broken_by is None
        broken = executor.submit(probe(1, fail_reason=ILLEGAL_ADDRESS)).result()
        assert broken.status is TrialStatus.FAILED and broken.reason == ILLEGAL_ADDRESS
        assert any("runs no further GPU trials" in note for note in broken.notes)
        refused = executor.submit(probe(2)).result()
        assert refused.status is TrialStatus.FAILED and refused.infrastructure
        assert "not run" in refused.reason and "illegal memory access" in refused.reason
        assert "local executor" in refused.reason
        assert pid_of(executor.submit(probe(3, device="cpu")).result()) == os.getpid()
    # An ordinary failure poisons nothing.
    with InlineExecutor(workers=1) as executor:
        executor.submit(probe(4, fail_reason="ValueError: a plain bug")).result()
        assert executor.submit(probe(5)).result().status is TrialStatus.OK
    # A multi-process trial launched next to this process's own CUDA context says so.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with InlineExecutor(workers=1) as executor:
        multi = executor.submit(probe(6, world_size=2)).result()
        assert any("held a CUDA context" in note for note in multi.notes)
        assert not executor.submit(probe(7, world_size=2, device="cpu")).result().notes


def test_workers_sharing_a_gpu_say_so_on_every_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one "GPU" for two workers
    with LocalExecutor(workers=2, device="cuda:0", trial_timeout_s=60) as executor:
        results = [executor.submit(probe(n, device="cpu")).result() for n in range(2)]
    for result in results:
        assert result.status is TrialStatus.OK, result.reason
        assert any("share one GPU" in note for note in result.notes), result.notes


def test_a_ray_task_runs_cuda_n_on_the_gpu_ray_assigned_it() -> None:
    device, note = ray_trial_device("cuda:1", [3])
    # Ray set the task's CUDA_VISIBLE_DEVICES=3: that GPU is the task's cuda:0.
    assert device == "cuda:0" and note is not None and "Ray GPU id 3" in note
    assert ray_trial_device("cuda:1", [3], ray_sets_visible_devices=False)[0] == "cuda:3"
    assert ray_trial_device("cuda:0", [5]) == ("cuda:0", None)
    assert ray_trial_device("cuda", [1]) == ("cuda", None)
    assert ray_trial_device("cuda:2", []) == ("cuda:2", None)  # no GPU from Ray: left as asked


@pytest.mark.skipif(not PROBE.exists(), reason="shared H200 data not mounted")
def test_a_saved_profile_gets_the_memory_other_processes_use_now(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = load_profile(PROBE)
    uuid = saved.gpus[0].uuid
    assert uuid and not saved.memory_used_by_others_bytes  # recorded on an idle GPU
    busy = with_memory_used_by_others(saved, {uuid: 40 * GIB})
    assert busy.memory_used_by_others_bytes == 40 * GIB
    lost = usable_memory_bytes(saved) - usable_memory_bytes(busy)
    assert lost == pytest.approx(40 * GIB * ALLOCATOR_USABLE_FRACTION, abs=2)
    # A GPU this machine does not have keeps what was recorded (planning for another machine).
    assert with_memory_used_by_others(saved, {"GPU-another": GIB}) is saved
    # The study's generator reads NVML for a given profile (here: what NVML would say).
    # (the module, not the `probe` function that tuner.hardware exports under the same name)
    probe_module = importlib.import_module("tuner.hardware.probe")
    monkeypatch.setattr(probe_module, "memory_used_by_others_now", lambda: {uuid: 40 * GIB})
    space = SearchSpace.from_dict(
        {"name": "t", "params": {"micro_batch_size": {"type": "int", "low": 1, "high": 64, "log": True}}}
    )
    spec = StudySpec(name="others", workload="gpt", space=space, device="cuda")
    workload = get_workload("gpt")
    generator, used = make_generator(spec, workload, workload.resolve_params({}), TrialConfig(), saved)
    assert used is not None and used.memory_used_by_others_bytes == 40 * GIB
    assert generator is not None
    assert any(
        "40.0 GiB was already used on the GPU by other processes" in line for line in generator.reasoning
    )


def _processes(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []

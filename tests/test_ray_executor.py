"""RayExecutor on a real, private Ray instance bound to 127.0.0.1.

One Ray instance for the whole module (start-up costs ~5 s on 2 cores); the last test
closes it and checks that every Ray process this test process started is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# Registers the raytest_* workloads in this process; RayExecutor ships them to its workers.
import ray_test_workloads  # noqa: F401

from tests.shared_data import H200_DIR
from tests.trial_requests import trial_request
from tuner.errors import ValidationError
from tuner.trial_request import TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialStatus
from tuner.workloads import get_workload

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

from tuner.executors.ray_executor import RayExecutor  # noqa: E402

GPT_TABLE = H200_DIR / "gpt_124m.jsonl"
LOOPBACK_HOSTS = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def executor() -> Iterator[RayExecutor]:
    assert not ray.is_initialized(), "another test left a Ray session open in this process"
    # One declared GPU (Ray schedules it like a real one): GPU tasks get Ray's GPU id and
    # CUDA_VISIBLE_DEVICES on this CPU machine too.
    ex = RayExecutor(num_cpus=2, num_gpus=1, object_store_memory=80 * 2**20)
    try:
        yield ex
    finally:
        ex.close()


def request(number: int, workload: str, *, steps: int = 5, **params: object) -> TrialRequest:
    # the study resolves params once, when its spec is made; the executor ships them as is
    return trial_request(
        get_workload(workload),
        TrialConfig(micro_batch_size=4 + number),
        params,
        TrialBudget(max_steps=steps, warmup_steps=1),
        trial_number=number,
    )


def ray_descendants() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            name = proc.name()
            # Only the program and its script: a multiprocessing forkserver left by
            # another test module carries sys.path (with Ray's folder) in its arguments.
            head = " ".join(proc.cmdline()[:2])
        except psutil.Error:
            continue
        if name in ("raylet", "gcs_server") or "ray::" in name + head or "/ray/" in head:
            found.append(proc)
    return found


def test_private_instance_listens_on_loopback_only(executor: RayExecutor) -> None:
    assert executor.address.startswith("127.0.0.1:")
    pids = {p.pid for p in ray_descendants()}
    assert pids, "the private Ray instance should run as children of this process"
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening, "Ray's GCS and raylet must listen somewhere"
    exposed = [c.laddr for c in listening if c.laddr.ip not in LOOPBACK_HOSTS]
    assert exposed == []


def test_trials_run_in_reused_ray_workers_and_results_come_back(executor: RayExecutor) -> None:
    futures = [executor.submit(request(n, "raytest_countdown", start=5.0 + n, drop=0.5)) for n in range(4)]
    results = [f.result(timeout=60) for f in futures]
    for n, result in enumerate(results):
        assert result.status is TrialStatus.OK, result.reason
        assert result.loss_curve == tuple(5.0 + n - 0.5 * s for s in range(5))
        assert result.items_per_s == 4 + n  # the config crossed the process boundary intact
        assert result.duration_s is not None and result.duration_s >= 0
    pids = {int(r.metrics["pid"]) for r in results}
    assert os.getpid() not in pids
    # Two CPUs, one CPU per trial: Ray reuses its two worker processes for four trials.
    assert len(pids) <= executor.max_concurrency == 2


@pytest.mark.skipif(not GPT_TABLE.exists(), reason="needs the measured H200 table")
def test_replay_trials_answer_from_the_measured_table(executor: RayExecutor) -> None:
    from tuner.workloads import list_workload_names

    if "replay" not in list_workload_names() or not _importable("tuner.workloads.replay"):
        pytest.skip("tuner/workloads/replay.py is not written yet")
    configs = [
        TrialConfig(micro_batch_size=8, precision="bf16"),
        TrialConfig(micro_batch_size=16, precision="fp32"),
    ]
    futures = [
        executor.submit(
            TrialRequest(
                trial_number=10 + i,
                workload="replay",
                params=get_workload("replay").resolve_params({"table": str(GPT_TABLE)}),
                config=config,
                budget=TrialBudget(max_steps=5, warmup_steps=1),
            )
        )
        for i, config in enumerate(configs)
    ]
    results = [f.result(timeout=60) for f in futures]
    assert [r.status for r in results] == [TrialStatus.OK, TrialStatus.OK], [r.reason for r in results]
    # bf16 is measured ~7x faster than fp32 on this table; the replay must keep the order.
    assert results[0].items_per_s > results[1].items_per_s


def test_a_worker_that_exits_fails_its_trial_and_the_executor_carries_on(executor: RayExecutor) -> None:
    crashed = executor.submit(request(20, "raytest_exit")).result(timeout=60)
    assert crashed.status is TrialStatus.FAILED
    assert "died" in crashed.reason
    after = executor.submit(request(21, "raytest_countdown")).result(timeout=60)
    assert after.status is TrialStatus.OK, after.reason


def test_a_raising_workload_fails_with_the_exception_and_where(executor: RayExecutor) -> None:
    result = executor.submit(request(22, "raytest_raise")).result(timeout=60)
    assert result.status is TrialStatus.FAILED
    assert "ArithmeticError: the model diverged" in result.reason
    assert "ray_test_workloads.py" in result.reason


def test_unknown_workload_fails_naming_it(executor: RayExecutor) -> None:
    # built by hand: there is no workload to resolve params with
    unknown = TrialRequest(23, "no_such_workload", {}, TrialConfig(), TrialBudget(max_steps=5, warmup_steps=1))
    result = executor.submit(unknown).result(timeout=60)
    assert result.status is TrialStatus.FAILED
    assert "no_such_workload" in result.reason


def test_reports_reach_each_trials_own_callback_and_prune_it(executor: RayExecutor) -> None:
    seen: dict[str, list[tuple[int, float]]] = {"pruned": [], "kept": []}
    lock = threading.Lock()

    def recorder(name: str, prune_at: int | None):  # type: ignore[no-untyped-def]
        def on_report(step: int, value: float) -> bool:
            with lock:
                seen[name].append((step, value))
            return step == prune_at

        return on_report

    # Both trials report at the same time (0.05 s steps); decisions must not cross over.
    pruned = executor.submit(
        request(30, "raytest_countdown", steps=6, start=10.0, step_s=0.05), recorder("pruned", 2)
    )
    kept = executor.submit(
        request(31, "raytest_countdown", steps=6, start=20.0, step_s=0.05), recorder("kept", None)
    )
    pruned_result, kept_result = pruned.result(timeout=60), kept.result(timeout=60)

    assert pruned_result.status is TrialStatus.PRUNED
    assert pruned_result.steps_run == 3
    assert seen["pruned"] == [(0, 10.0), (1, 9.0), (2, 8.0)]
    assert kept_result.status is TrialStatus.OK
    assert seen["kept"] == [(s, 20.0 - s) for s in range(6)]


def test_requests_the_cluster_cannot_schedule_are_refused(executor: RayExecutor) -> None:
    with pytest.raises(ValidationError) as info:
        RayExecutor(resources_per_trial={"cpu": 1, "gpu": 2})
    assert "resources_per_trial.gpu" in str(info.value) and "cluster has 1" in str(info.value)
    # world_size 3 x 1 CPU > the 2 CPUs of this cluster: failed at once, not queued forever.
    wide = TrialRequest(
        trial_number=40,
        workload="raytest_countdown",
        params={},
        config=TrialConfig(world_size=3),
        budget=TrialBudget(max_steps=2, warmup_steps=0),
    )
    result = executor.submit(wide).result(timeout=5)
    assert result.status is TrialStatus.FAILED
    assert "world_size" in result.reason and "cluster has 2" in result.reason
    assert ray.is_initialized(), "refusing a request must not shut the shared session down"


def test_bad_resources_name_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        RayExecutor(resources_per_trial={"CPU": 1})
    assert "resources_per_trial.CPU" in str(info.value) and "'cpu'" in str(info.value)
    with pytest.raises(ValidationError) as info:
        RayExecutor(resources_per_trial={"cpu": -1})
    assert "resources_per_trial.cpu" in str(info.value)


@pytest.mark.skipif(not GPT_TABLE.exists(), reason="needs the measured H200 table")
def test_run_study_runs_its_trials_on_the_ray_cluster(executor: RayExecutor, tmp_path: Path) -> None:
    study_module = pytest.importorskip("tuner.study.loop")
    from tuner.replay.table import load_table
    from tuner.study.spec import StudySpec
    from tuner.workloads.replay import replay_space

    spec = StudySpec(
        name="ray-replay",
        workload="replay",
        workload_params={"table": str(GPT_TABLE)},
        space=replay_space(load_table(GPT_TABLE)),
        sampler="random",
        pruner="none",
        n_trials=6,
        baseline=True,
        use_generator=False,
        device="cpu",
    )
    outcome = study_module.run_study(spec, storage=f"sqlite:///{tmp_path / 'ray.db'}", executor=executor)
    assert outcome.n_complete + outcome.n_oom + outcome.n_failed == 6
    assert outcome.n_complete >= 1 and outcome.best_result is not None
    assert outcome.best_result.items_per_s is not None and outcome.best_result.items_per_s > 0
    # The measured baseline came back through Ray as well.
    assert outcome.baseline_result is not None and outcome.baseline_result.ok
    assert ray.is_initialized(), "run_study must not close an executor it was given"


@pytest.mark.parametrize("raise_it", [False, True], ids=["returned", "raised"])
def test_a_sticky_cuda_error_ends_its_ray_worker_and_the_result_still_arrives(
    executor: RayExecutor, raise_it: bool
) -> None:
    broken = executor.submit(request(60, "raytest_sticky_cuda", raise_it=raise_it)).result(timeout=60)
    assert broken.status is TrialStatus.FAILED
    # The trial's own reason, not Ray's "worker died": the result came through the broker.
    assert "illegal memory access" in broken.reason and "died" not in broken.reason
    assert any("this Ray worker exited" in note for note in broken.notes)
    pid = int(broken.metrics["pid"]) if not raise_it else int(broken.reason.split("(pid ")[1].split(")")[0])
    # The worker exited; Ray runs the next trials in other processes.
    assert _gone_within(pid, timeout_s=20)
    after = [executor.submit(request(61 + n, "raytest_countdown")).result(timeout=60) for n in range(2)]
    assert all(r.status is TrialStatus.OK for r in after), [r.reason for r in after]
    assert pid not in {int(r.metrics["pid"]) for r in after}


def test_cuda_n_of_the_study_runs_on_the_gpu_ray_assigned(executor: RayExecutor) -> None:
    # The same session; max_calls_per_worker=0 lets the GPU task reuse an idle worker.
    with RayExecutor(resources_per_trial={"cpu": 1, "gpu": 1}, max_calls_per_worker=0) as gpu_executor:
        asked = dataclasses.replace(request(70, "raytest_device_echo"), device="cuda:1")
        result = gpu_executor.submit(asked).result(timeout=60)
    assert result.status is TrialStatus.OK, result.reason
    assert "device=cuda:0" in result.notes and "CUDA_VISIBLE_DEVICES=0" in result.notes
    assert any("Ray chose this trial's GPU (Ray GPU id 0)" in note for note in result.notes)
    assert ray.is_initialized(), "closing an executor on a shared session must leave it running"


def test_close_shuts_ray_down_and_leaves_no_ray_process(executor: RayExecutor) -> None:
    # Runs last in this module: it ends the shared instance.
    processes = ray_descendants()
    names = set()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # a Ray worker may exit meanwhile (CI saw one)
            names.add(process.name())
    assert {"raylet", "gcs_server"} <= names
    executor.close()
    assert not ray.is_initialized()
    _gone, alive = psutil.wait_procs(processes, timeout=20)
    # A zombie has exited and holds nothing; it only waits for its (re)parent to reap it,
    # which a container's PID 1 may never do.
    leftovers = [(p.pid, _describe(p)) for p in alive if not _is_zombie(p)]
    assert leftovers == []
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit(request(50, "raytest_countdown"))


def _gone_within(pid: int, timeout_s: float) -> bool:
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    _gone, alive = psutil.wait_procs([process], timeout=timeout_s)
    return all(_is_zombie(p) for p in alive)


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.name()} {process.status()} {' '.join(process.cmdline())[:120]}"
    except psutil.Error as exc:
        return f"gone while described ({type(exc).__name__})"


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None

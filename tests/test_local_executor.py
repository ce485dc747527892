"""LocalExecutor: persistent isolated workers, crash/timeout handling, no orphans, overhead.

The `scripted` workload does what each test needs from a trial (return at once, sleep,
exit the process, raise, report) based on its workload params — real processes, real
signals, no mocks of the executor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tuner.executors.local import LocalExecutor, assign_gpus
from tuner.space.search_space import load_space
from tuner.study import run_study
from tuner.study.spec import StudySpec
from tuner.trial_request import Reporter, TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import Workload, WorkloadParam, register_workload


@register_workload
class Scripted(Workload):
    name = "scripted"
    item_unit = "items"
    params = (
        WorkloadParam("action", "str", "ok", "ok | sleep | exit | raise | hang-on-batch"),
        WorkloadParam("seconds", "float", 0.0, "sleep length"),
        WorkloadParam("pid_file", "str", "", "write the worker pid here when hanging"),
        WorkloadParam("hang_batch", "int", 0, "micro_batch_size that hangs (hang-on-batch)"),
    )

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        config, params, budget, peak_flops = (
            request.config,
            request.params,
            request.budget,
            request.peak_flops,
        )
        action = params.get("action", "ok")
        if action == "sleep":
            time.sleep(params["seconds"])
        elif action == "exit":
            os._exit(7)
        elif action == "raise":
            raise RuntimeError("boom in the workload")
        elif action == "hang-on-batch" and config.micro_batch_size == params["hang_batch"]:
            Path(params["pid_file"]).write_text(str(os.getpid()))
            time.sleep(600)
        for step in range(1, budget.max_steps + 1):
            if reporter.report(step, float(step)):
                return TrialResult(status=TrialStatus.PRUNED, reason=f"pruned at {step}", steps_run=step)
        metrics = {"pid": float(os.getpid())}
        if peak_flops is not None:
            metrics["peak_flops"] = peak_flops
        return TrialResult(
            status=TrialStatus.OK,
            items_per_s=float(config.micro_batch_size),
            steps_run=budget.max_steps,
            metrics=metrics,
        )


@register_workload
class IgnoresPeakFlops(Workload):
    """A user's workload that never reads `request.peak_flops` (it reports no MFU)."""

    name = "ignores-peak-flops"

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        return TrialResult(status=TrialStatus.OK, items_per_s=1.0, steps_run=1)


BUDGET = TrialBudget(max_steps=3, warmup_steps=0)


def request(n: int, batch: int = 8, **params: Any) -> TrialRequest:
    return TrialRequest(n, "scripted", params, TrialConfig(micro_batch_size=batch), BUDGET)


@pytest.fixture(scope="module")
def executor():
    with LocalExecutor(workers=1, device="cpu", trial_timeout_s=20) as ex:
        yield ex


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_are_reused_and_per_trial_overhead_is_small(executor):
    first = executor.submit(request(0)).result()
    pid = int(first.metrics["pid"])
    started = time.perf_counter()
    results = [executor.submit(request(i)).result() for i in range(1, 51)]
    per_trial = (time.perf_counter() - started) / 50
    assert {int(r.metrics["pid"]) for r in results} == {pid}  # one process served them all
    assert executor.worker_pids() == [pid]
    assert per_trial < 0.1, f"{per_trial * 1000:.1f} ms per near-empty trial (goal: <= 100 ms)"


def test_reports_reach_the_callback_and_a_prune_decision_comes_back(executor):
    seen: list[tuple[int, float]] = []

    def on_report(step: int, value: float) -> bool:
        seen.append((step, value))
        return step == 2

    result = executor.submit(request(1), on_report=on_report).result()
    assert seen == [(1, 1.0), (2, 2.0)]
    assert result.status is TrialStatus.PRUNED and result.steps_run == 2


def test_peak_flops_reaches_the_workload_and_workloads_ignoring_it_still_run(executor):
    with_peak = TrialRequest(5, "scripted", {}, TrialConfig(), BUDGET, device="cpu", peak_flops=2.5e12)
    assert executor.submit(with_peak).result().metrics["peak_flops"] == 2.5e12
    assert "peak_flops" not in executor.submit(request(6)).result().metrics  # None: not passed
    legacy = TrialRequest(7, "ignores-peak-flops", {}, TrialConfig(), BUDGET, peak_flops=2.5e12)
    result = executor.submit(legacy).result()
    assert result.ok, result.reason


def test_a_raising_workload_fails_the_trial_but_keeps_the_worker(executor):
    before = executor.worker_pids()
    result = executor.submit(request(2, action="raise")).result()
    assert result.status is TrialStatus.FAILED
    assert "RuntimeError: boom in the workload" in result.reason
    assert executor.worker_pids() == before


def test_os_exit_in_a_trial_fails_it_and_replaces_the_worker(executor):
    before = executor.worker_pids()
    result = executor.submit(request(3, action="exit")).result()
    assert result.status is TrialStatus.FAILED
    assert result.reason == "worker process exited with code 7 during trial 3"
    after = executor.worker_pids()
    assert after != before and alive(after[0])
    assert executor.submit(request(4)).result().ok


def test_a_trial_past_its_timeout_is_killed_and_failed():
    with LocalExecutor(workers=1, device="cpu", trial_timeout_s=1.0) as ex:
        pid = int(ex.submit(request(0)).result().metrics["pid"])
        began = time.monotonic()
        result = ex.submit(request(1, action="sleep", seconds=60)).result()
        assert time.monotonic() - began < 10
        assert result.status is TrialStatus.FAILED and "timed out after 1 s during trial 1" in result.reason
        assert not alive(pid)
        assert ex.submit(request(2)).result().ok


def test_sigkill_of_a_worker_mid_trial_fails_that_trial_and_the_study_goes_on(tmp_path):
    pid_file = tmp_path / "hanging.pid"
    space = load_space(
        {
            "name": "scripted",
            "params": {"micro_batch_size": {"type": "categorical", "choices": [4, 8, 16, 32]}},
        }
    )
    spec = StudySpec(
        name="killed-worker",
        workload="scripted",
        space=space,
        workload_params={"action": "hang-on-batch", "hang_batch": 8, "pid_file": str(pid_file)},
        n_trials=4,
        budget=BUDGET,
        sampler="grid",
        baseline=False,
        use_generator=False,
        device="cpu",
    )

    def kill_when_hanging() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_when_hanging, daemon=True)
    killer.start()
    with LocalExecutor(workers=1, device="cpu") as ex:
        outcome = run_study(spec, storage=f"sqlite:///{tmp_path / 'db.sqlite'}", executor=ex)
        replaced = ex.replaced_workers
    killer.join(timeout=5)

    import optuna

    trials = optuna.load_study(
        study_name="killed-worker", storage=f"sqlite:///{tmp_path / 'db.sqlite'}"
    ).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].params["micro_batch_size"] == 8
    reason = TrialResult.from_dict(failed[0].user_attrs["tuner.result"]).reason
    assert reason == f"worker process died (signal SIGKILL) during trial {failed[0].number}"
    assert replaced == 1
    assert outcome.n_complete == 3 and outcome.n_failed == 1 and outcome.stopped_because == "n_trials"


def test_no_orphans_after_close_or_when_the_parent_is_killed(tmp_path):
    ex = LocalExecutor(workers=2, device="cpu")
    pids = [int(ex.submit(request(i, action="sleep", seconds=0.2)).result().metrics["pid"]) for i in range(2)]
    pids = [p for p in ex.worker_pids() if p]
    ex.close()
    assert len(pids) == 2 and not any(alive(p) for p in pids)

    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import test_local_executor as t
            from tuner.executors.local import LocalExecutor
            if __name__ == "__main__":
                ex = LocalExecutor(workers=2, device="cpu")
                ex.submit(t.request(0, action="sleep", seconds=60))  # one worker busy
                time.sleep(0.5)
                print(*ex.worker_pids(), flush=True)
                time.sleep(120)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker_pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(worker_pids) == 2 and all(alive(p) for p in worker_pids)
    parent.kill()  # SIGKILL: no atexit, no close(); the workers must notice on their own
    parent.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in worker_pids)


def test_gpu_assignment_per_worker():
    assert assign_gpus(1, "auto", ["0", "1"]) == [None]  # one worker may use every GPU
    assert assign_gpus(2, "auto", ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert assign_gpus(4, "auto", ["0", "1"]) == ["0", "1", "0", "1"]
    assert assign_gpus(2, "cpu", ["0", "1"]) == ["", ""]  # CPU trials never touch CUDA
    assert assign_gpus(2, "auto", []) == [None, None]


def test_a_registered_workload_the_worker_cannot_import_fails_only_its_own_trials(monkeypatch):
    """One broken registration (a module that raises on import in the worker, as a missing
    dependency on the worker side would) must not stop the workers serving every other
    workload: a server runs many studies through one executor."""
    from tests.broken_worker_workloads import BREAK_VAR, Steady

    monkeypatch.setenv(BREAK_VAR, "1")  # inherited by the workers started below
    with LocalExecutor(workers=1, device="cpu", trial_timeout_s=20) as ex:
        assert ex.submit(request(0)).result().ok  # "scripted" runs in the same worker
        broken = ex.submit(TrialRequest(1, Steady.name, {}, TrialConfig(micro_batch_size=2), BUDGET)).result()
        assert broken.status is TrialStatus.FAILED and broken.infrastructure
        assert "could not start workload 'steady'" in (broken.reason or "")
        assert "ImportError: simulated: a dependency missing in the worker" in (broken.reason or "")
        assert ex.submit(request(2)).result().ok  # and the worker is still serving
    # the study's own workload (preloaded) still refuses the worker start with the cause
    with LocalExecutor(workers=1, device="cpu", trial_timeout_s=20, preload_workloads=(Steady.name,)) as ex:
        refused = ex.submit(TrialRequest(3, Steady.name, {}, TrialConfig(micro_batch_size=2), BUDGET)).result()
    assert refused.status is TrialStatus.FAILED and refused.infrastructure
    assert "ImportError: simulated" in (refused.reason or "")

"""DDP scaling across two hosts vs one, and the per-trial overhead of the Ray path.

Run (as root: it makes two network namespaces, 10.231.0.1 and .2, and removes them):

    PYTHONPATH=. python benchmarks/scaling.py [--repeats 3] [--steps 12] [--overhead-trials 40]

Figures, all in one run on this machine:

1. DDP (gloo, CPU) throughput of one tiny-GPT config at world size 1 and 2, speedup and
   efficiency = speedup / 2, with the wall time and the CPU time (all ranks' processes,
   every thread) per optimizer step, and the intra-op threads each rank ran with:
   - single host: `LocalExecutor` + forked ranks on 127.0.0.1 (`run_distributed_trial`);
   - two hosts: `RayExecutor` joined to a Ray cluster whose head is in namespace A and a
     worker node in namespace B (one CPU each), STRICT_SPREAD: rank 0 on A, rank 1 on B,
     gloo over the veth pair. World size 1 runs on one node of the same cluster.
   Each size is measured `--repeats` times, interleaved; the median and range are shown.
   Every rank, on both paths, trains on exactly CPUS_PER_RANK intra-op threads (the Ray
   CPUs of one rank; `OMP_NUM_THREADS` for the local executor, whose ranks honour it);
   the benchmark checks each result's `cpu_threads` per rank and stops if one differs.
   CPU-time efficiency = world 1's CPU seconds per item / world 2's (median of the pairs):
   what distributing costs in CPU, nearly independent of other jobs' load.
2. Per-trial overhead of the executors: `--overhead-trials` replay trials (answered from
   the measured H200 table in milliseconds, so the figure is the executor's own cost),
   submitted one at a time, through `LocalExecutor` and through `RayExecutor` on a private
   single-node Ray instance: median and p90 ms per trial.

Both "hosts" share this machine's cores: the two-host figure measures what the network
path (veth + gloo rendezvous on rank 0's node address) costs against loopback, not what a
second machine adds. On a loaded machine the wall time per step grows with the other
jobs' demand while the CPU time per step (what the step itself needed) does not: read
the wall figures against the CPU figures and the load printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

PARAMS = {"layers": 2, "d_model": 64, "heads": 4, "vocab_size": 256}
TOKEN = "scaling-benchmark-token-00000000"
#: Ray CPUs of one rank on each namespace node, and the intra-op threads of every rank.
CPUS_PER_RANK = 1


def _request(world_size: int, steps: int, number: int):
    from tuner.trial_request import TrialRequest
    from tuner.types import TrialBudget, TrialConfig
    from tuner.workloads import get_workload

    return TrialRequest(
        trial_number=number,
        workload="gpt",
        params=get_workload("gpt").resolve_params(PARAMS),
        config=TrialConfig(micro_batch_size=8, max_sequence_length=64, world_size=world_size),
        budget=TrialBudget(max_steps=steps, warmup_steps=2, eval_batches=1),
        device="cpu",
    )


def measure_ddp(executor, repeats: int, steps: int) -> dict[int, list[dict]]:
    """Per world size, one record per run: tokens/s, wall and CPU seconds per step."""
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for i in range(repeats):
        for size in (1, 2):  # interleaved, so drifting load hits both sizes alike
            result = executor.submit(_request(size, steps, i)).result()
            if result.status.value != "ok":
                raise SystemExit(f"world_size={size} failed: {result.reason}")
            per_rank = (result.telemetry.get("per_rank") or {}).get("cpu_threads") or [result.metrics.get("cpu_threads")]
            if any(t != CPUS_PER_RANK for t in per_rank):
                raise SystemExit(f"world_size={size}: ranks ran {per_rank} intra-op threads, not {CPUS_PER_RANK} each")
            runs[size].append({
                "items_per_s": result.items_per_s,
                "wall_s_per_step": result.step_time_s,
                "cpu_s_per_step": result.metrics.get("cpu_s_per_step"),
                "threads_per_rank": per_rank,
            })
    return runs


def driver_two_hosts(address: str, repeats: int, steps: int) -> None:
    """Runs inside namespace A: DDP on the two-node cluster, printed as JSON."""
    from tuner.executors.ray_executor import RayExecutor

    with RayExecutor(address=address, resources_per_trial={"cpu": CPUS_PER_RANK, "gpu": 0},
                     placement="STRICT_SPREAD", max_concurrency=1) as executor:
        print(json.dumps(measure_ddp(executor, repeats, steps)))


def single_host(repeats: int, steps: int) -> dict[int, list[dict]]:
    from tuner.executors.local import LocalExecutor

    # CPUS_PER_RANK threads per rank, as each Ray rank below gets: a world-size-1 run with
    # two OpenMP threads on a loaded 2-core machine would not be the same unit of work.
    # Set before the executor starts its worker, whose trials (and forked ranks) read it.
    os.environ["OMP_NUM_THREADS"] = str(CPUS_PER_RANK)
    with LocalExecutor(workers=1, device="cpu", preload_workloads=("gpt",)) as executor:
        executor.submit(_request(1, 3, 99)).result()  # warm the worker (import torch)
        return measure_ddp(executor, repeats, steps)


def two_hosts(repeats: int, steps: int) -> dict[int, list[dict]]:
    from netns_hosts import NetnsHosts

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    ray = str(Path(sys.executable).with_name("ray"))
    hosts = NetnsHosts(2)
    temp = Path(f"/tmp/tnr-scaling-{os.getpid()}")
    try:
        a, b = hosts["a"], hosts["b"]
        common = [f"--num-cpus={CPUS_PER_RANK}", "--disable-usage-stats", "--object-store-memory=80000000"]
        for host, extra in (
            (a, ["--head", "--port=6379", "--include-dashboard=false"]),
            (b, [f"--address={a.address}:6379"]),
        ):
            started = host.run([ray, "start", *extra, f"--node-ip-address={host.address}",
                                f"--temp-dir={temp}/{host.name}", *common], env=env, timeout=120)
            if started.returncode != 0:
                raise SystemExit(f"ray start on host {host.name} failed: {started.stderr[-1500:]}")
        driver = a.run([sys.executable, __file__, "--driver", f"{a.address}:6379", "--repeats", str(repeats),
                        "--steps", str(steps)], env=env, timeout=1800)
        if driver.returncode != 0:
            raise SystemExit(f"the two-host driver failed: {driver.stderr[-3000:]}")
        return {int(k): v for k, v in json.loads(driver.stdout.strip().splitlines()[-1]).items()}
    finally:
        hosts.close()
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def overhead(trials: int) -> dict[str, list[float]]:
    from shared_data import H200_DIR

    from tuner.executors.local import LocalExecutor
    from tuner.executors.ray_executor import RayExecutor
    from tuner.trial_request import TrialRequest
    from tuner.types import TrialBudget, TrialConfig
    from tuner.workloads import get_workload

    params = get_workload("replay").resolve_params({"table": str(H200_DIR / "gpt_124m.jsonl")})

    def request(i: int) -> TrialRequest:
        config = TrialConfig(micro_batch_size=(8, 16, 32)[i % 3], precision="bf16")
        return TrialRequest(trial_number=i, workload="replay", params=params, config=config,
                            budget=TrialBudget(max_steps=5, warmup_steps=1))

    figures: dict[str, list[float]] = {}
    for name, make in (("local", lambda: LocalExecutor(workers=1, preload_workloads=("replay",))),
                       ("ray", lambda: RayExecutor(num_cpus=1, max_concurrency=1, object_store_memory=80 * 2**20))):
        with make() as executor:
            executor.submit(request(0)).result()  # warm-up: worker start, imports
            times = []
            for i in range(trials):
                started = time.perf_counter()
                result = executor.submit(request(i)).result()
                times.append(time.perf_counter() - started)
                assert result.status.value == "ok", result.reason
            figures[name] = times
    return figures


def _median(runs: list[dict], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def _line(label: str, runs: dict[int, list[dict]]) -> str:
    one, two = _median(runs[1], "items_per_s"), _median(runs[2], "items_per_s")
    speedups = [r2["items_per_s"] / r1["items_per_s"] for r1, r2 in zip(runs[1], runs[2], strict=True)]
    speedup = statistics.median(speedups)
    per_step = "  ".join(
        f"{_median(runs[n], 'wall_s_per_step') * 1000:6.1f} / {_median(runs[n], 'cpu_s_per_step') * 1000:6.1f}"
        for n in (1, 2)
    )
    # CPU-time efficiency: world 1's CPU per item over world 2's (a world-2 step does twice
    # the items). The load on other jobs barely moves it: it is what the distribution
    # itself costs (gloo all-reduce, bucketing), the efficiency ranks on cores of their
    # own could reach at best when the communication waits overlap with compute.
    cpu_effs = [
        (r1["cpu_s_per_step"] * 2) / r2["cpu_s_per_step"]
        for r1, r2 in zip(runs[1], runs[2], strict=True)
        if r1.get("cpu_s_per_step") and r2.get("cpu_s_per_step")
    ]
    cpu_eff = f"{statistics.median(cpu_effs) * 100:4.0f}% ({min(cpu_effs) * 100:.0f}-{max(cpu_effs) * 100:.0f})" if cpu_effs else "   -"
    return (
        f"{label:<26} {one:>9,.0f} {two:>9,.0f}   x{speedup:.2f} ({min(speedups):.2f}-{max(speedups):.2f})"
        f"  {speedup / 2 * 100:4.0f}%   {per_step}   {cpu_eff}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--overhead-trials", type=int, default=40)
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver_two_hosts(args.driver, args.repeats, args.steps)
        return
    print(f"load before: {os.getloadavg()}", flush=True)
    single = single_host(args.repeats, args.steps)
    spread = two_hosts(args.repeats, args.steps)
    costs = overhead(args.overhead_trials)
    print(f"\nDDP tiny GPT (2 layers, d 64, micro batch 8 per rank, seq 64), gloo on CPU, {args.steps} steps, "
          f"{CPUS_PER_RANK} intra-op thread(s) per rank, median of {args.repeats} interleaved runs")
    print(f"{'':<26} {'world 1':>9} {'world 2':>9}   speedup (pairs)  effic.   "
          "ms/step wall / CPU (all ranks): world 1, world 2   CPU-time effic. (pairs)")
    print(_line("one host (loopback)", single))
    print(_line("two hosts (netns, veth)", spread))
    for label, runs in (("one host", single), ("two hosts", spread)):
        for size in (1, 2):
            print(f"  {label} world {size} runs: " + ", ".join(
                f"{r['items_per_s']:,.0f} tok/s {r['wall_s_per_step'] * 1000:.1f}/{r['cpu_s_per_step'] * 1000:.1f} ms"
                for r in runs[size]))
    print(f"\nper-trial overhead, replay trials one at a time, {args.overhead_trials} each:")
    for name, times in costs.items():
        ordered = sorted(times)
        print(f"  {name:<6} median {statistics.median(times) * 1000:7.1f} ms   p90 {ordered[int(0.9 * (len(ordered) - 1))] * 1000:7.1f} ms")
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

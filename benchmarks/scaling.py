"""DDP scaling across two hosts vs one, and the per-trial overhead of the Ray path.

Run (as root: it makes two network namespaces, 10.231.0.1 and .2, and removes them):

    PYTHONPATH=. python benchmarks/scaling.py [--repeats 3] [--steps 12] [--overhead-trials 40]

Figures, all in one run on this machine:

1. DDP (gloo, CPU) throughput of one tiny-GPT config at world size 1 and 2, speedup and
   efficiency = speedup / 2:
   - single host: `LocalExecutor` + forked ranks on 127.0.0.1 (`run_distributed_trial`);
   - two hosts: `RayExecutor` joined to a Ray cluster whose head is in namespace A and a
     worker node in namespace B (one CPU each), STRICT_SPREAD: rank 0 on A, rank 1 on B,
     gloo over the veth pair. World size 1 runs on one node of the same cluster.
   Each size is measured `--repeats` times, interleaved; the median and range are shown.
2. Per-trial overhead of the executors: `--overhead-trials` replay trials (answered from
   the measured H200 table in milliseconds, so the figure is the executor's own cost),
   submitted one at a time, through `LocalExecutor` and through `RayExecutor` on a private
   single-node Ray instance: median and p90 ms per trial.

Both "hosts" share this machine's cores: the two-host figure measures what the network
path (veth + gloo rendezvous on rank 0's node address) costs against loopback, not what a
second machine adds. Report the load (`uptime`) with any figure.
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


def measure_ddp(executor, repeats: int, steps: int) -> dict[int, list[float]]:
    rates: dict[int, list[float]] = {1: [], 2: []}
    for i in range(repeats):
        for size in (1, 2):  # interleaved, so drifting load hits both sizes alike
            result = executor.submit(_request(size, steps, i)).result()
            if result.status.value != "ok":
                raise SystemExit(f"world_size={size} failed: {result.reason}")
            rates[size].append(result.items_per_s)
    return rates


def driver_two_hosts(address: str, repeats: int, steps: int) -> None:
    """Runs inside namespace A: DDP on the two-node cluster, printed as JSON."""
    from tuner.executors.ray_executor import RayExecutor

    with RayExecutor(address=address, placement="STRICT_SPREAD", max_concurrency=1) as executor:
        print(json.dumps(measure_ddp(executor, repeats, steps)))


def single_host(repeats: int, steps: int) -> dict[int, list[float]]:
    from tuner.executors.local import LocalExecutor

    # One thread per rank, as each Ray node below has one CPU: a world-size-1 run with two
    # OpenMP threads on a loaded 2-core machine would not be the same unit of work.
    os.environ["OMP_NUM_THREADS"] = "1"
    with LocalExecutor(workers=1, device="cpu", preload_workloads=("gpt",)) as executor:
        executor.submit(_request(1, 3, 99)).result()  # warm the worker (import torch)
        return measure_ddp(executor, repeats, steps)


def two_hosts(repeats: int, steps: int) -> dict[int, list[float]]:
    from netns_hosts import NetnsHosts

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    ray = str(Path(sys.executable).with_name("ray"))
    hosts = NetnsHosts(2)
    temp = Path(f"/tmp/tnr-scaling-{os.getpid()}")
    try:
        a, b = hosts["a"], hosts["b"]
        common = ["--num-cpus=1", "--disable-usage-stats", "--object-store-memory=80000000"]
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


def _line(label: str, rates: dict[int, list[float]]) -> str:
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    speedups = [r2 / r1 for r1, r2 in zip(rates[1], rates[2], strict=True)]
    speedup = statistics.median(speedups)
    return (
        f"{label:<28} {one:>10,.0f} {two:>10,.0f}   x{speedup:.2f} (pairs {min(speedups):.2f}-{max(speedups):.2f})"
        f"   {speedup / 2 * 100:.0f}%"
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
    print(f"\nDDP tiny GPT (2 layers, d 64, micro batch 8, seq 64), gloo on CPU, {args.steps} steps, "
          f"median of {args.repeats} interleaved runs; tokens/s")
    print(f"{'':<28} {'world 1':>10} {'world 2':>10}   speedup (range)      efficiency")
    print(_line("one host (loopback)", single))
    print(_line("two hosts (netns, veth)", spread))
    print(f"\nper-trial overhead, replay trials one at a time, {args.overhead_trials} each:")
    for name, times in costs.items():
        ordered = sorted(times)
        print(f"  {name:<6} median {statistics.median(times) * 1000:7.1f} ms   p90 {ordered[int(0.9 * (len(ordered) - 1))] * 1000:7.1f} ms")
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

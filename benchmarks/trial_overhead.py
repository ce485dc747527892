"""Per-trial overhead of a near-empty trial, side by side in one run.

Peers (each runs the same near-empty objective; every one stores its study in its own
SQLite file with the WAL journal, so the storage costs the same kind of write):

  ours-local   `run_study(..., executor=LocalExecutor(workers=C))`: trials run in
               persistent worker processes (process isolation), TPE sampler
  optuna       plain `optuna` `study.optimize` in this process (no isolation), TPE
  ray-tune     `tune.Tuner(trainable, TuneConfig(search_alg=OptunaSearch(TPE, storage)))`
               on a private Ray instance bound to 127.0.0.1, Tune's defaults otherwise
               (a new trial actor, i.e. a new process, per trial)
  ray-tune-reuse  the same with `reuse_actors=True`, Ray Tune at its cheapest
  ours-ray     `run_study(..., executor=RayExecutor())` on the same Ray instance

Figures per peer:
  wall/trial     seconds from the start of the run (study creation, or `Tuner.fit()`) to
                 the last result stored, divided by the number of trials. Worker start-up
                 of our executors is done before (a warm-up trial per worker) and shown as
                 `startup`; Ray Tune starts its trial actors inside `fit()`, so its
                 wall/trial includes that.
  steady/trial   (last completion - first completion) / (N - 1), read from the
                 `datetime_complete` that each study's storage recorded: the marginal
                 cost of one more trial, without any fixed cost.
  CPU/trial      CPU seconds of this process and all its descendants (workers, the private
                 Ray instance) per trial: what the machine spent, whatever else loads it.

Run: python benchmarks/trial_overhead.py [--trials 200] [--ray-trials 30] [--concurrency 1]
Goal (issue 3): ours-local <= 100 ms per trial and >= 20x cheaper than Ray Tune.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import Reporter, TrialRequest, Workload, register_workload

NOOP_WORKLOAD = "overhead_noop"
SPACE = {
    "name": "overhead-noop",
    "params": {
        "micro_batch_size": {"type": "int", "low": 1, "high": 256, "log": True},
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    },
}
GOAL_MS = 100.0
GOAL_RATIO = 20.0


def score(micro_batch_size: int, learning_rate: float) -> float:
    """A smooth objective with its optimum at batch 16, lr 1e-3, so TPE has work to do."""
    return 1000.0 * math.exp(-((math.log2(micro_batch_size) - 4) ** 2) - (math.log10(learning_rate) + 3) ** 2)


@register_workload
class NoopWorkload(Workload):
    """Returns at once: what is left of a trial's time is the framework's overhead.

    Registered at import; LocalExecutor re-registers it in its workers by module and name
    (this script's `__main__`, which a spawned worker re-imports), RayExecutor sends the
    class itself.
    """

    name = NOOP_WORKLOAD
    description = "near-empty trial for the overhead benchmark"

    def run_trial(self, request: TrialRequest, reporter: Reporter) -> TrialResult:
        config = request.config
        value = score(config.micro_batch_size, config.learning_rate)
        return TrialResult(status=TrialStatus.OK, items_per_s=value, steps_run=1, timed_steps=1)


@dataclass
class PeerFigures:
    peer: str
    trials: int
    concurrency: int
    wall_s: float
    wall_ms_per_trial: float
    steady_ms_per_trial: float | None
    cpu_ms_per_trial: float
    startup_s: float | None
    best_value: float | None
    isolation: str


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and every process below it (workers, Ray).

    Unlike wall time this barely moves when other jobs load the machine. Processes that
    exit during a run take their CPU time with them, so a peer that churns processes is
    undercounted, never overcounted.
    """
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


# -- storage --------------------------------------------------------------------------------------


def sqlite_url(directory: Path, name: str) -> str:
    path = directory / f"{name}.db"
    with sqlite3.connect(path) as conn:  # the same journal mode tuner.storage.rdb sets
        conn.execute("PRAGMA journal_mode=WAL")
    return f"sqlite:///{path}"


def steady_ms(url: str, study_name: str) -> float | None:
    """Marginal milliseconds per trial from the completion times the storage recorded."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=url)
    done = sorted(t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete)
    if len(done) < 2:
        return None
    return (done[-1] - done[0]).total_seconds() / (len(done) - 1) * 1000.0


# -- peers ------------------------------------------------------------------------------------------


def run_plain_optuna(directory: Path, trials: int, concurrency: int) -> PeerFigures:
    import optuna

    from tuner.space.search_space import SearchSpace

    space = SearchSpace.from_dict(SPACE)
    url = sqlite_url(directory, "optuna")

    def objective(trial: optuna.Trial) -> float:
        values = space.suggest(trial)
        return score(values["micro_batch_size"], values["learning_rate"])

    cpu = cpu_seconds()
    started = time.perf_counter()
    study = optuna.create_study(
        study_name="optuna", storage=url, direction="maximize", sampler=optuna.samplers.TPESampler(seed=0)
    )
    study.optimize(objective, n_trials=trials, n_jobs=concurrency)
    wall = time.perf_counter() - started
    cpu_ms = (cpu_seconds() - cpu) / trials * 1000
    return PeerFigures(
        "optuna", trials, concurrency, wall, wall / trials * 1000, steady_ms(url, "optuna"), cpu_ms, None,
        study.best_value, "none (in-process)",
    )  # fmt: skip


def _spec(name: str, trials: int, concurrency: int) -> Any:
    from tuner.space.search_space import SearchSpace
    from tuner.study.spec import StudySpec

    return StudySpec(
        name=name,
        workload=NOOP_WORKLOAD,
        space=SearchSpace.from_dict(SPACE),
        sampler="tpe",
        pruner="none",
        n_trials=trials,
        budget=TrialBudget(max_steps=1, warmup_steps=0),
        baseline=False,
        use_generator=False,
        workers=concurrency,
        device="cpu",
    )


def _warm_up(executor: Any, concurrency: int) -> None:
    """One trial per worker at once, so every worker has started and loaded the workload."""
    request = TrialRequest(
        trial_number=-1, workload=NOOP_WORKLOAD, params={}, config=TrialConfig(),
        budget=TrialBudget(max_steps=1, warmup_steps=0), device="cpu",
    )  # fmt: skip
    results = [f.result() for f in [executor.submit(request) for _ in range(concurrency)]]
    failed = [r.reason for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"warm-up trial failed: {failed[0]}")


def run_ours(
    directory: Path,
    name: str,
    trials: int,
    concurrency: int,
    make_executor: Callable[[], Any],
    isolation: str,
) -> PeerFigures:
    from tuner.study import run_study

    started = time.perf_counter()
    executor = make_executor()
    try:
        _warm_up(executor, concurrency)
        startup = time.perf_counter() - started
        url = sqlite_url(directory, name)
        cpu = cpu_seconds()
        began = time.perf_counter()
        outcome = run_study(_spec(name, trials, concurrency), storage=url, executor=executor)
        wall = time.perf_counter() - began
        cpu_ms = (cpu_seconds() - cpu) / trials * 1000
    finally:
        executor.close()
    if outcome.n_complete != trials:
        raise RuntimeError(
            f"{name}: {outcome.n_complete} of {trials} trials completed ({outcome.n_failed} failed)"
        )
    best = outcome.best_result.items_per_s if outcome.best_result else None
    return PeerFigures(
        name, trials, concurrency, wall, wall / trials * 1000, steady_ms(url, name), cpu_ms, startup, best,
        isolation,
    )  # fmt: skip


def run_ray_tune(
    directory: Path, trials: int, concurrency: int, *, reuse_actors: bool = False
) -> PeerFigures:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no progress tables
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from tuner.space.search_space import SearchSpace

    space = SearchSpace.from_dict(SPACE).to_optuna_distributions()
    name = "ray-tune-reuse" if reuse_actors else "ray-tune"
    study_name = name.replace("-", "_")
    url = sqlite_url(directory, study_name)

    def trainable(config: dict[str, Any]) -> dict[str, float]:
        return {"throughput": score(config["micro_batch_size"], config["learning_rate"])}

    cpu = cpu_seconds()
    started = time.perf_counter()
    search = OptunaSearch(
        space=space,
        metric="throughput",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0),
        storage=optuna.storages.RDBStorage(url),
        study_name=study_name,
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search,
            num_samples=trials,
            max_concurrent_trials=concurrency,
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(storage_path=str(directory / "ray_results"), verbose=0),
    )
    grid = tuner.fit()
    wall = time.perf_counter() - started
    cpu_ms = (cpu_seconds() - cpu) / trials * 1000
    if grid.errors or len(grid) != trials:
        raise RuntimeError(f"{name}: {len(grid)} trials, errors: {grid.errors[:1]}")
    best = grid.get_best_result(metric="throughput", mode="max").metrics["throughput"]
    return PeerFigures(
        name, trials, concurrency, wall, wall / trials * 1000, steady_ms(url, study_name), cpu_ms, None, best,
        "Ray actors, one reused per slot" if reuse_actors else "Ray actors, a new one per trial (Tune's default)",
    )  # fmt: skip


# -- report -----------------------------------------------------------------------------------------


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:9.1f}"


def report(figures: list[PeerFigures], ray_startup_s: float | None) -> str:
    lines = [
        f"{'peer':<11} {'trials':>6} {'conc':>4} {'wall/trial ms':>13} {'steady ms':>10} {'CPU ms':>8} {'startup s':>9}  isolation",
    ]
    for f in figures:
        startup = "-" if f.startup_s is None else f"{f.startup_s:9.2f}"
        lines.append(
            f"{f.peer:<11} {f.trials:>6} {f.concurrency:>4} {_fmt_ms(f.wall_ms_per_trial):>13} "
            f"{_fmt_ms(f.steady_ms_per_trial):>10} {f.cpu_ms_per_trial:>8.1f} {startup:>9}  {f.isolation}"
        )
    if ray_startup_s is not None:
        lines.append(f"(private Ray instance start-up: {ray_startup_s:.2f} s, not counted in any figure)")
    by = {f.peer: f for f in figures}

    def ratio(a: str, b: str, attr: str) -> str:
        x, y = getattr(by.get(a), attr, None), getattr(by.get(b), attr, None)
        return "-" if not x or not y else f"{x / y:.1f}x"

    lines.append("")
    for attr, label in (
        ("wall_ms_per_trial", "wall"),
        ("steady_ms_per_trial", "steady"),
        ("cpu_ms_per_trial", "CPU"),
    ):
        lines.append(
            f"{label:>6}: ray-tune / ours-local = {ratio('ray-tune', 'ours-local', attr)}   "
            f"ours-local / optuna = {ratio('ours-local', 'optuna', attr)}   "
            f"ray-tune-reuse / ours-local = {ratio('ray-tune-reuse', 'ours-local', attr)}   "
            f"ray-tune / ours-ray = {ratio('ray-tune', 'ours-ray', attr)}"
        )
    ours = by.get("ours-local")
    tune_f = by.get("ray-tune")
    if ours is not None:
        verdict = "met" if ours.wall_ms_per_trial <= GOAL_MS else "MISSED"
        lines.append(f"goal ours-local <= {GOAL_MS:g} ms/trial: {verdict} ({ours.wall_ms_per_trial:.1f} ms)")
        if tune_f is not None:
            r = tune_f.wall_ms_per_trial / ours.wall_ms_per_trial
            lines.append(
                f"goal >= {GOAL_RATIO:g}x better than Ray Tune: {'met' if r >= GOAL_RATIO else 'MISSED'} ({r:.1f}x)"
            )
    return "\n".join(lines)


def _quiet_libraries() -> None:
    # Optuna logs every trial and warns about experimental arguments; the figures are the output.
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", module="optuna")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials for ours-local and optuna")
    parser.add_argument("--ray-trials", type=int, default=30, help="trials for ray-tune and ours-ray")
    parser.add_argument("--concurrency", type=int, default=1, help="trials in flight at once, every peer")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["optuna", "ours-local", "ray-tune", "ray-tune-reuse", "ours-ray"],
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    _quiet_libraries()

    figures: list[PeerFigures] = []
    ray_startup: float | None = None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tuner-overhead-") as tmp:
        directory = Path(tmp)
        if "optuna" not in args.skip:
            figures.append(run_plain_optuna(directory, args.trials, args.concurrency))
            print(f"optuna done: {figures[-1].wall_ms_per_trial:.1f} ms/trial", file=sys.stderr)
        if "ours-local" not in args.skip:
            from tuner.executors.local import LocalExecutor

            figures.append(
                run_ours(
                    directory, "ours-local", args.trials, args.concurrency,
                    lambda: LocalExecutor(workers=args.concurrency, device="cpu", preload_workloads=(NOOP_WORKLOAD,)),
                    "persistent worker processes",
                )
            )  # fmt: skip
            print(f"ours-local done: {figures[-1].wall_ms_per_trial:.1f} ms/trial", file=sys.stderr)
        if {"ray-tune", "ray-tune-reuse", "ours-ray"} - set(args.skip):
            from tuner.executors.ray_cluster import connect_ray, disconnect_ray

            began = time.perf_counter()
            connection = connect_ray(None, num_cpus=max(2, args.concurrency), object_store_memory=200 * 2**20)
            ray_startup = time.perf_counter() - began
            try:
                if "ray-tune" not in args.skip:
                    figures.append(run_ray_tune(directory, args.ray_trials, args.concurrency))
                    print(f"ray-tune done: {figures[-1].wall_ms_per_trial:.1f} ms/trial", file=sys.stderr)
                if "ray-tune-reuse" not in args.skip:
                    figures.append(
                        run_ray_tune(directory, args.ray_trials, args.concurrency, reuse_actors=True)
                    )
                    print(
                        f"ray-tune-reuse done: {figures[-1].wall_ms_per_trial:.1f} ms/trial", file=sys.stderr
                    )
                if "ours-ray" not in args.skip:
                    from tuner.executors.ray_executor import RayExecutor

                    figures.append(
                        run_ours(
                            directory, "ours-ray", args.ray_trials, args.concurrency,
                            lambda: RayExecutor(max_concurrency=args.concurrency),
                            "Ray worker processes (tasks)",
                        )
                    )  # fmt: skip
            finally:
                disconnect_ray(connection)
    load_after = os.getloadavg()
    text = report(figures, ray_startup)
    print(text)
    print(
        f"machine: {os.cpu_count()} CPUs, 1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "figures": [asdict(f) for f in figures],
                    "ray_startup_s": ray_startup,
                    "load": [load_before, load_after],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

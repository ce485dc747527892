"""Time to quality: tuner's `time_to_target` studies against plain Optuna and Ray Tune.

    python benchmarks/time_to_quality.py                 # gpt and recsys, seeds 0 1 2, 15 s per peer
    python benchmarks/time_to_quality.py --workloads recsys --seeds 0 --budget-s 20

For each workload (a tiny GPT on byte-level text, the small DLRM on planted clicks) and
each seed:

1. **The target.** The workload's default config trains `--target-multiple` (3) times
   the trial budget (`max_items`: tokens or samples), its warmup + cosine schedule
   spanning that longer run; its final validation loss is the target: "what the default
   reaches when trained 3x longer". A config reaches it within one budget only by
   learning about 3x more per item than the default: a good learning rate for its batch,
   not just any higher one (the issue's literal target, the default's loss after one
   budget, is reached by almost any higher LR at the first checkpoint, so every peer's
   pick ties there). The same run is the default's time to the target.
2. Every peer searches the same space (learning rate, micro batch size, warmup share;
   the sequence length stays the default's) with the same trial budget, for the same
   wall-clock seconds of search, one trial at a time, with the same trial runner (a
   trial started before the end finishes, for every peer):
   - `tuner`: a `time_to_target` study (TPE; the validation loss at fixed item
     checkpoints, every 5% of the budget, goes to the median pruner; a trial stops at
     the checkpoint that reaches the target; trials that do not are ranked by their
     censored estimate);
   - `optuna-tpe-median`, `optuna-tpe-hyperband`: plain Optuna, the usual recipe:
     minimise the validation loss after the budget, report the training loss every
     step to MedianPruner() / HyperbandPruner() (Optuna's defaults);
   - `ray-asha-optuna`: Ray Tune, OptunaSearch (TPE) + ASHAScheduler on the training
     loss, the final report is the validation loss, actors reused. Its search clock
     starts at its first trial's first report: Ray's start-up (the Tuner, the trial
     actor, imports in the worker) is measured and printed separately, not charged;
   - `random`: RandomSampler, no pruning, the validation loss after the budget.
3. Each peer's recommended config is then measured back to back (shuffled order; a
   config several peers recommend is measured once): trained for the budget with the
   validation loss every 2.5% of it; its **time to target** is the training seconds
   until a checkpoint reached the target.

Printed per peer: the median (over seeds) time to target of its recommended config,
how many seeds reached it, the median items to the target, the median validation loss
after the budget, the median search seconds until one of its trials had reached the
target, and the ratio to tuner (> 1: the peer's config is slower to the target). And
the tuner's recommended config against the default. Timings on a shared machine are
noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna  # noqa: E402

from tuner.space.search_space import SearchSpace  # noqa: E402
from tuner.trial.target import target_metrics  # noqa: E402
from tuner.trial_request import TrialRequest  # noqa: E402
from tuner.types import TrialBudget, TrialConfig, TrialResult  # noqa: E402
from tuner.workloads import get_workload  # noqa: E402

PEERS = ("tuner", "optuna-tpe-median", "optuna-tpe-hyperband", "ray-asha-optuna", "random")


@dataclass(frozen=True)
class Bench:
    workload: str
    params: dict[str, Any]
    space: dict[str, Any]
    max_items: int
    eval_batches: int = 2
    #: validation checkpoints per budget in the search (tuner's pruner and its early stop)
    search_checkpoints: int = 20
    #: validation checkpoints per budget when the recommended configs are measured: fine
    #: enough that a time to target is not bounded by where the checkpoints fall
    measure_checkpoints: int = 40

    def every(self, checkpoints: int) -> int:
        return max(1, self.max_items // checkpoints)


BENCHES = {
    "gpt": Bench(
        "gpt",
        {"layers": 2, "d_model": 32, "heads": 4},
        {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
            "micro_batch_size": {"type": "categorical", "choices": [2, 4, 8, 16, 32]},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
        },
        max_items=8 * 128 * 30,  # 30 steps of the default config
    ),
    "recsys": Bench(
        "recsys",
        {"tables": 2, "rows": 500, "dim": 8, "dense_features": 8},
        {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "micro_batch_size": {"type": "categorical", "choices": [32, 64, 128, 256, 512, 1024, 2048]},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
        },
        max_items=256 * 60,  # 60 steps of the default config
    ),
}


def space_of(bench: Bench) -> SearchSpace:
    return SearchSpace.from_dict({"name": f"ttq-{bench.workload}", "workload": bench.workload, "params": bench.space})


def default_config(bench: Bench) -> TrialConfig:
    workload = get_workload(bench.workload)
    return workload.default_config(workload.resolve_params(bench.params))


def run_trial(bench: Bench, config: TrialConfig, budget: TrialBudget, reporter: Any, seed: int) -> TrialResult:
    workload = get_workload(bench.workload)
    request = TrialRequest(0, bench.workload, workload.resolve_params(bench.params), config, budget, seed=seed, device="cpu")
    return workload.run_trial(request, reporter)


class _Quiet:
    def report(self, step: int, value: float) -> bool:
        return False


def measure(bench: Bench, config: TrialConfig, target: float | None, seed: int, *, multiple: int = 1) -> dict[str, Any]:
    """Train `config` for `multiple` budgets with fine validation checkpoints; its time to `target`."""
    budget = TrialBudget(max_items=bench.max_items * multiple, eval_every_items=bench.every(bench.measure_checkpoints),
                         eval_batches=bench.eval_batches, warmup_steps=1)
    result = run_trial(bench, config, budget, _Quiet(), seed)
    out: dict[str, Any] = {"config": config.to_dict(), "status": result.status.value, "val_loss": result.val_loss,
                           "curve": [list(p) for p in result.val_curve], "train_seconds": result.metrics.get("train_seconds"),
                           "items": bench.max_items * multiple}
    if target is not None:
        score(out, target)
    return out


def score(entry: dict[str, Any], target: float) -> dict[str, Any]:
    """`entry` (a `measure` output) with its time and items to `target`: the first
    checkpoint at or below it; not reached without one."""
    metrics = target_metrics(entry["curve"], target) if entry["curve"] else {}
    reached = bool(metrics.get("target_reached"))
    entry.update(reached=reached, time_to_target_s=metrics["time_to_target_s"] if reached else None,
                 items_to_target=metrics["items_to_target"] if reached else None)
    return entry


# -- peers ------------------------------------------------------------------------------------------


@dataclass
class PeerRun:
    peer: str
    trials: int = 0
    pruned: int = 0
    best_config: TrialConfig | None = None
    best_val_loss: float | None = None
    search_s_to_target: float | None = None
    wall_s: float = 0.0
    startup_s: float | None = None  # Ray Tune: from fit() to its first trial's first report, not charged
    notes: list[str] = field(default_factory=list)


def run_tuner(bench: Bench, seed: int, budget_s: float, target: float, directory: Path) -> PeerRun:
    from tuner.executors.inline import InlineExecutor
    from tuner.study import StudySpec, run_study
    from tuner.study.results import records_of

    name = f"ttq-{bench.workload}-{seed}-{random.randrange(10**6)}"
    spec = StudySpec(
        name=name, workload=bench.workload, space=space_of(bench), workload_params=bench.params,
        objectives=("time_to_target",), sampler="tpe", pruner="median", n_trials=None, timeout_s=budget_s,
        budget=TrialBudget(max_items=bench.max_items, eval_every_items=bench.every(bench.search_checkpoints),
                           eval_batches=bench.eval_batches, warmup_steps=1, target_val_loss=target),
        seed=seed, baseline=False, use_generator=False, device="cpu",
    )
    url = f"sqlite:///{directory / (name + '.db')}"
    started = time.perf_counter()
    with InlineExecutor() as executor:
        outcome = run_study(spec, storage=url, executor=executor, confirm=0)
    run = PeerRun("tuner", wall_s=time.perf_counter() - started)
    study = optuna.load_study(study_name=name, storage=url)
    first = min((t.datetime_start for t in study.trials if t.datetime_start), default=None)
    records = records_of(study)
    run.trials = sum(1 for r in records if r.state in ("COMPLETE", "PRUNED", "FAIL"))
    run.pruned = sum(1 for r in records if r.state == "PRUNED")
    run.best_config = outcome.best_config
    losses = [r.result.val_loss for r in records if r.result and r.result.val_loss is not None]
    run.best_val_loss = min(losses) if losses else None
    reached = [t.datetime_complete for t, r in zip(study.trials, records, strict=True)
               if r.result and r.result.val_metrics.get("target_reached") == 1.0 and t.datetime_complete]
    if reached and first is not None:
        run.search_s_to_target = (min(reached) - first).total_seconds()
    return run


class _OptunaReporter:
    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def report(self, step: int, value: float) -> bool:
        self.trial.report(value, step)
        return self.trial.should_prune()


def run_optuna(bench: Bench, seed: int, budget_s: float, target: float, peer: str) -> PeerRun:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, base = space_of(bench), default_config(bench)
    if peer == "random":
        sampler, pruner = optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()
    elif peer == "optuna-tpe-hyperband":
        sampler, pruner = optuna.samplers.TPESampler(seed=seed), optuna.pruners.HyperbandPruner()
    else:
        sampler, pruner = optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner()
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    budget = TrialBudget(max_items=bench.max_items, eval_batches=bench.eval_batches, warmup_steps=1, report_every=1)
    run = PeerRun(peer)
    configs: dict[int, TrialConfig] = {}
    started = time.perf_counter()
    while time.perf_counter() - started < budget_s:
        trial = study.ask()
        config = space.to_config(space.suggest(trial), base)
        configs[trial.number] = config
        result = run_trial(bench, config, budget, _OptunaReporter(trial), seed)
        run.trials += 1
        if result.status.value == "pruned":
            run.pruned += 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif result.ok and result.val_loss is not None and math.isfinite(result.val_loss):
            study.tell(trial, result.val_loss)
            if result.val_loss <= target and run.search_s_to_target is None:
                run.search_s_to_target = time.perf_counter() - started
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    run.wall_s = time.perf_counter() - started
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = min(complete, key=lambda t: t.value)
        run.best_config, run.best_val_loss = configs[best.number], best.value
    return run


def run_ray(bench: Bench, seed: int, budget_s: float, target: float, directory: Path) -> PeerRun:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    space, base = space_of(bench), default_config(bench)
    budget = TrialBudget(max_items=bench.max_items, eval_batches=bench.eval_batches, warmup_steps=1, report_every=1)

    def trainable(values: dict[str, Any]) -> None:
        class Reporter:
            def report(self, step: int, value: float) -> bool:
                tune.report({"loss": value, "final": 0.0})
                return False

        config = space.to_config(values, base)
        result = run_trial(bench, config, budget, Reporter(), seed)
        loss = result.val_loss if result.ok and result.val_loss is not None else float("inf")
        tune.report({"loss": loss, "final": 1.0})

    # The search clock lives outside the searcher: Ray may copy the searcher it is given.
    clock: dict[str, float] = {}

    class BudgetedOptunaSearch(OptunaSearch):
        """OptunaSearch whose search clock starts at the first trial's first report (Ray's
        start-up is not charged) and that suggests nothing once `budget_s` have passed;
        the running trial finishes, as every other peer's last trial does."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            clock.setdefault("first_report", time.perf_counter())
            super().on_trial_result(trial_id, result)

        def suggest(self, trial_id: str) -> dict | None:
            first = clock.get("first_report")
            if first is not None and time.perf_counter() - first >= budget_s:
                return Searcher.FINISHED
            return super().suggest(trial_id)

    search = BudgetedOptunaSearch(space=space.to_optuna_distributions(), metric="loss", mode="min",
                                  sampler=optuna.samplers.TPESampler(seed=seed))
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="loss", mode="min",
                              max_t=bench.max_items // 32 + 2, grace_period=1, reduction_factor=3)
    started = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=10_000,
                                    max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(directory / "ray_results"), verbose=0),
    )
    grid = tuner.fit()
    ended = time.perf_counter()
    run = PeerRun("ray-asha-optuna")
    first = clock.get("first_report", ended)
    run.startup_s, run.wall_s = first - started, ended - first
    finals = []
    for result in grid:
        run.trials += 1
        metrics = result.metrics or {}
        if metrics.get("final") != 1.0:
            run.pruned += 1
            continue
        finals.append((metrics["loss"], result.config, metrics.get("timestamp")))
    finals = [f for f in finals if math.isfinite(f[0])]
    if finals:
        loss, values, _ = min(finals, key=lambda f: f[0])
        run.best_config, run.best_val_loss = space.to_config(values, base), loss
        clock_unix = time.time() - (time.perf_counter() - first)  # the search clock's start as a Unix time
        reached = [ts for loss_, _, ts in finals if loss_ <= target and ts]
        if reached:
            run.search_s_to_target = max(0.0, min(reached) - clock_unix)
    return run


# -- the benchmark ----------------------------------------------------------------------------------


def one_seed(bench: Bench, seed: int, budget_s: float, peers: tuple[str, ...], directory: Path,
             target_multiple: int = 3) -> dict[str, Any]:
    base = default_config(bench)
    # The default trained target_multiple budgets: its final loss is the target, and the
    # same run is its time to the target (the first fine checkpoint at or below it).
    reference = measure(bench, base, None, seed, multiple=target_multiple)
    target = reference["val_loss"]
    if target is None or not math.isfinite(target):
        raise SystemExit(f"the default config did not train to a finite validation loss: {reference['status']}")
    score(reference, target)
    print(f"[{bench.workload} seed {seed}] default val loss {target:.4f} after {target_multiple} x {bench.max_items} items "
          f"({reference['train_seconds']:.1f} s of training): the target, first reached after "
          f"{reference['time_to_target_s']:.1f} s", file=sys.stderr, flush=True)
    runs: dict[str, PeerRun] = {}
    for peer in peers:
        if peer == "tuner":
            run = run_tuner(bench, seed, budget_s, target, directory)
        elif peer == "ray-asha-optuna":
            run = run_ray(bench, seed, budget_s, target, directory)
        else:
            run = run_optuna(bench, seed, budget_s, target, peer)
        runs[peer] = run
        print(f"[{bench.workload} seed {seed}] {peer}: {run.trials} trials ({run.pruned} pruned) in {run.wall_s:.0f} s, "
              f"best val loss {run.best_val_loss}", file=sys.stderr, flush=True)
    # The recommended configs, measured back to back in a shuffled order; a config that
    # several peers recommend is measured once (same seed: the same training), so they
    # share one time rather than differing by the machine's noise.
    distinct = {json.dumps(r.best_config.to_dict(), sort_keys=True): r.best_config
                for r in runs.values() if r.best_config is not None}
    order = sorted(distinct.items())
    random.Random(seed).shuffle(order)
    by_config = {key: measure(bench, config, target, seed) for key, config in order}
    measured = {p: by_config[json.dumps(r.best_config.to_dict(), sort_keys=True)]
                for p, r in runs.items() if r.best_config is not None}
    load = os.getloadavg()[0]
    return {
        "workload": bench.workload, "seed": seed, "budget_s": budget_s, "target_val_loss": target, "load_1min": load,
        "target_multiple": target_multiple, "max_items": bench.max_items, "default": reference,
        "peers": {
            p: {"trials": r.trials, "pruned": r.pruned, "best_val_loss_in_search": r.best_val_loss,
                "search_s_to_target": r.search_s_to_target, "wall_s": r.wall_s, "startup_s": r.startup_s,
                "recommended": measured.get(p)}
            for p, r in runs.items()
        },
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def time_to_target_of(entry: dict[str, Any] | None) -> float:
    """An entry's measured time to the target; a config that never reached it counts as
    infinitely slow (so a median over seeds is infinite when most did not)."""
    if not entry or not entry.get("reached"):
        return math.inf
    return float(entry["time_to_target_s"])


def ratio(slower: float, faster: float) -> float:
    """`slower / faster` for times that may be infinite: inf when only `faster` reached
    the target, 0 when only `slower` did, NaN when neither did."""
    if math.isinf(slower) and math.isinf(faster):
        return math.nan
    if math.isinf(faster):
        return 0.0
    return math.inf if math.isinf(slower) else slower / faster


def summarize(results: list[dict[str, Any]], peers: tuple[str, ...]) -> str:
    lines = []
    for workload in sorted({r["workload"] for r in results}):
        rows = [r for r in results if r["workload"] == workload]
        n = len(rows)
        tuner_ttt = statistics.median([time_to_target_of(r["peers"].get("tuner", {}).get("recommended")) for r in rows]) if "tuner" in peers else None
        default_ttt = statistics.median([time_to_target_of(r["default"]) for r in rows])
        lines.append(f"\n{workload}: {n} seeds, {rows[0]['budget_s']:.0f} s of search per peer, target = the default's "
                     f"val loss after {rows[0].get('target_multiple', 1)} x the budget "
                     f"(median {statistics.median(r['target_val_loss'] for r in rows):.4f}); "
                     "load " + ", ".join(f"{r['load_1min']:.1f}" for r in rows))
        lines.append(f"  {'peer':<22} {'time to target (s)':>18} {'reached':>8} {'items to target':>15} {'val loss':>9} "
                     f"{'search s to target':>18} {'trials':>6} {'ratio to tuner':>14}")
        best_peer: tuple[float, str] | None = None
        for peer in peers:
            entries = [r["peers"].get(peer) for r in rows if peer in r["peers"]]
            times = [time_to_target_of(e.get("recommended")) for e in entries]
            med = statistics.median(times) if times else math.inf
            reached = sum(1 for t in times if math.isfinite(t))
            items = _median([e["recommended"]["items_to_target"] for e in entries if e.get("recommended") and e["recommended"].get("reached")])
            quality = _median([e["recommended"]["val_loss"] for e in entries if e.get("recommended") and e["recommended"]["val_loss"] is not None])
            search = [e["search_s_to_target"] if e["search_s_to_target"] is not None else math.inf for e in entries]
            trials = _median([e["trials"] for e in entries])
            to_tuner = ratio(med, tuner_ttt) if tuner_ttt is not None else math.nan
            if peer != "tuner" and (best_peer is None or med < best_peer[0]):
                best_peer = (med, peer)
            lines.append(
                f"  {peer:<22} {med:>18.2f} {reached:>5}/{len(times):<2} {items if items is not None else math.nan:>15.0f} "
                f"{quality if quality is not None else math.nan:>9.4f} "
                f"{statistics.median(search) if search else math.inf:>18.1f} {trials if trials is not None else 0:>6.0f} {to_tuner:>14.2f}"
            )
        startups = [e["startup_s"] for r in rows for p, e in r["peers"].items() if e.get("startup_s") is not None]
        if startups:
            lines.append("  ray-asha-optuna start-up before its first report (not charged to its search): "
                         + ", ".join(f"{x:.1f}" for x in startups) + " s")
        default_items = _median([r["default"]["items_to_target"] for r in rows if r["default"].get("reached")])
        lines.append(f"  {'default config':<22} {default_ttt:>18.2f} {sum(1 for r in rows if r['default'].get('reached')):>5}/{n:<2} "
                     f"{default_items if default_items is not None else math.nan:>15.0f} "
                     f"{statistics.median(r['default']['val_loss'] for r in rows):>9.4f}")
        if tuner_ttt is not None:
            if best_peer is not None:
                per_seed = [ratio(min(time_to_target_of(e.get("recommended")) for p, e in r["peers"].items() if p != "tuner"),
                                  time_to_target_of(r["peers"]["tuner"].get("recommended"))) for r in rows if "tuner" in r["peers"]]
                lines.append(f"  tuner vs the best peer ({best_peer[1]}): {ratio(best_peer[0], tuner_ttt):.2f}x (medians); "
                             "per seed vs that seed's fastest peer: " + ", ".join(f"{x:.2f}x" for x in per_seed))
            per_seed = [ratio(time_to_target_of(r["default"]), time_to_target_of(r["peers"]["tuner"].get("recommended")))
                        for r in rows if "tuner" in r["peers"]]
            lines.append(f"  tuner's recommended config vs the default: {ratio(default_ttt, tuner_ttt):.2f}x faster to the target "
                         "(medians); per seed: " + ", ".join(f"{x:.2f}x" for x in per_seed))
    return "\n".join(lines)


def write_curves(results: list[dict[str, Any]], path: Path) -> None:
    """A learning-curve table (tuner/replay/curves.py) of every measured config."""
    with path.open("w") as handle:
        first = results[0]
        handle.write(json.dumps({"meta": {"kind": "curves", "workload": first["workload"],
                                          "target_val_loss": first["target_val_loss"]}}) + "\n")
        seen = set()
        for r in results:
            entries = [("default", r["default"])] + [(p, e["recommended"]) for p, e in r["peers"].items() if e.get("recommended")]
            for name, entry in entries:
                key = json.dumps(entry["config"], sort_keys=True)
                if key in seen or entry["status"] != "ok":
                    continue
                seen.add(key)
                curve = entry["curve"]
                if name == "default":
                    # trained target_multiple budgets: its curve up to one budget, like every other row
                    curve = [p for p in curve if p[0] <= r["max_items"]]
                row = {**entry["config"], "status": "ok", "curve": curve}
                if name == "default":
                    row["default"] = True
                handle.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["gpt", "recsys"], choices=sorted(BENCHES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-s", type=float, default=15.0, help="wall-clock search seconds per peer")
    parser.add_argument("--target-multiple", type=int, default=3,
                        help="the target is the default config's validation loss after this many trial budgets")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    parser.add_argument("--write-curves", metavar="DIR", help="write a learning-curve table per workload")
    args = parser.parse_args(argv)
    peers = tuple(args.peers)
    load_before = os.getloadavg()[0]
    connection = None
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        try:
            if "ray-asha-optuna" in peers:
                from tuner.executors.ray_cluster import connect_ray

                began = time.perf_counter()
                connection = connect_ray(None, num_cpus=2, object_store_memory=200 * 2**20)
                print(f"ray started in {time.perf_counter() - began:.1f} s (not counted)", file=sys.stderr)
            for name in args.workloads:
                for seed in args.seeds:
                    results.append(one_seed(BENCHES[name], seed, args.budget_s, peers, directory, args.target_multiple))
                    if args.json:
                        Path(args.json).write_text(json.dumps(results, indent=1))
        finally:
            if connection is not None:
                from tuner.executors.ray_cluster import disconnect_ray

                disconnect_ray(connection)
    print(summarize(results, peers))
    print(f"\nmachine: {os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    if args.write_curves:
        out = Path(args.write_curves)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.workloads:
            write_curves([r for r in results if r["workload"] == name], out / f"{name}_curves.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

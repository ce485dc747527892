"""`tuner tune SPACE`: run (or resume) a tuning study and write the best config.

Progress goes to stderr; the result (best config, measured ratio to the default config)
to stdout. Ctrl-C once stops launching trials and lets running ones finish; twice stops
at once (running trials are recorded as interrupted and re-run on resume).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, ValidationError
from tuner.study.confirm import DEFAULT_CONFIRM_PAIRS
from tuner.study.spec import PRUNERS, SAMPLERS

if TYPE_CHECKING:
    from tuner.study import StudyOutcome

DEFAULT_OUTPUT = "best_config.yaml"
_OBJECTIVE_CHOICES = {
    "throughput": ("throughput",),
    "val_loss": ("val_loss",),
    "both": ("throughput", "val_loss"),
    # quality objectives after a budget of items or seconds (tuner.study.quality_budget)
    "quality_at_budget": ("quality_at_budget",),
    "time_to_target": ("time_to_target",),
    "auc": ("auc",),
    "perplexity": ("perplexity",),
    # kind: inference spaces (docs/inference.md); "throughput" there means qps_at_slo
    "qps_at_slo": ("qps_at_slo",),
    "p99_at_qps": ("p99_at_qps",),
    "pareto": ("qps_at_slo", "p99_at_qps"),
}
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str, field: str = "--memory-limit") -> int:
    """'8GiB', '7.5GB', '512MiB' or a plain byte count -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValidationError(
            FieldProblem(
                field, text, "is not an amount of memory", "write e.g. 8GiB, 7.5GB, 512MiB or a byte count"
            )
        )
    return int(float(match.group(1)) * _UNITS[unit])


def add_execution_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by `tune` and `worker`: where and how trials run."""
    parser.add_argument("--storage", metavar="URL", help="database URL (default: sqlite:///tuner.db here)")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="trials run at once (default 1)"
    )
    parser.add_argument("--device", default=None, metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--hardware", metavar="PROBE.json", help="hardware profile from `tuner probe --output`"
    )
    parser.add_argument("--trial-timeout", type=float, metavar="S", help="kill a trial after S seconds")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    add_executor_args(parser)


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    """Where trials run: local worker processes (default) or a Ray cluster."""
    from tuner.executors.choice import EXECUTOR_KINDS
    from tuner.executors.ray_nodes import PLACEMENTS

    group = parser.add_argument_group("executor")
    group.add_argument("--executor", choices=EXECUTOR_KINDS, default="local", help="where trials run (default local)")
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 (default with --executor ray: a private "
        "single-node instance on 127.0.0.1)",
    )
    group.add_argument("--cpus-per-rank", type=float, default=1.0, metavar="N", help="Ray CPUs per rank (default 1)")
    group.add_argument("--gpus-per-rank", type=float, default=0.0, metavar="N", help="Ray GPUs per rank (default 0)")
    group.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="PACK",
        help="Ray placement of a multi-rank trial's ranks (default PACK; spans nodes when one node is too small)",
    )


def executor_choice(args: argparse.Namespace) -> Any:
    from tuner.executors.choice import ExecutorChoice

    return ExecutorChoice(
        kind=getattr(args, "executor", "local"),
        ray_address=getattr(args, "ray_address", None),
        cpus_per_rank=getattr(args, "cpus_per_rank", 1.0),
        gpus_per_rank=getattr(args, "gpus_per_rank", 0.0),
        placement=getattr(args, "placement", "PACK"),
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="tune a workload over a search space (progress on stderr, best config to a file)",
        description=(
            "Run a tuning study: measure the workload's default config as a baseline, then real "
            "training trials proposed by an Optuna sampler, and write the best config. Resume an "
            "interrupted study by passing the same --study NAME (and --storage) again."
        ),
    )
    parser.add_argument("space", metavar="SPACE", help="search space file (.yaml/.json) or preset name")
    parser.add_argument("--workload", help="workload name (default: the space's `workload`)")
    parser.add_argument("--params", metavar="JSON", help="workload parameters, e.g. '{\"layers\": 4}'")
    parser.add_argument(
        "--trials", type=int, default=None, metavar="N", help="trials in the study (default 20)"
    )
    parser.add_argument("--timeout", type=float, metavar="S", help="stop launching trials after S seconds")
    parser.add_argument(
        "--study", metavar="NAME", help="study name (default: SPACE name + time); resumes if it exists"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    parser.add_argument("--pruner", choices=PRUNERS, default="median")
    parser.add_argument("--objective", choices=tuple(_OBJECTIVE_CHOICES), default="throughput")
    parser.add_argument(
        "--slo-p99-ms", type=float, metavar="MS", help="inference spaces: the p99 latency SLO (default 50)"
    )
    parser.add_argument(
        "--target-qps", type=float, metavar="QPS", help="inference spaces: the fixed rate of --objective p99_at_qps"
    )
    parser.add_argument(
        "--memory-limit", metavar="SIZE", help="reject configs whose peak memory exceeds SIZE (e.g. 8GiB)"
    )
    parser.add_argument("--steps", type=int, metavar="N", help="optimizer steps per trial (default 20)")
    parser.add_argument(
        "--warmup-steps", type=int, metavar="N", help="untimed warm-up steps per trial (default 3)"
    )
    parser.add_argument(
        "--max-seconds", type=float, metavar="S", help="also stop timing a trial after S seconds"
    )
    parser.add_argument(
        "--max-items", type=int, metavar="N",
        help="quality objectives: train every config on N items (tokens or samples), the LR schedule spanning them",
    )
    parser.add_argument(
        "--max-train-seconds", type=float, metavar="S",
        help="quality objectives: train every config for S seconds of training steps, the LR schedule spanning them",
    )
    parser.add_argument(
        "--eval-every-items", type=int, metavar="N",
        help="validation loss every N items (fixed checkpoints: the pruner's values and the learning curve)",
    )
    parser.add_argument(
        "--target-loss", type=float, metavar="L",
        help="time_to_target: the validation loss to reach (default: the default config's after the budget)",
    )
    parser.add_argument(
        "--free-knobs",
        metavar="LIST",
        help="throughput studies hold max_sequence_length, the effective batch, learning_rate, warmup_ratio "
        "and weight_decay at the default config's values; free some (comma-separated, e.g. "
        "max_sequence_length,effective_batch) or all (the space's free_knobs, same names)",
    )
    parser.add_argument(
        "--heartbeat-grace",
        type=float,
        default=None,
        metavar="S",
        help="fail a running trial whose process (on any host) sent no heartbeat for S seconds; any live "
        "`tune`/`worker` process of the study does it and its config runs again (default 30; beats every S/6)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="do not measure the default config")
    parser.add_argument(
        "--confirm",
        type=int,
        default=DEFAULT_CONFIRM_PAIRS,
        metavar="N",
        help="after the search, re-measure the default and best config in N back-to-back pairs and "
        f"report the median ratio and its range (throughput studies; 0 disables; default {DEFAULT_CONFIRM_PAIRS})",
    )
    parser.add_argument(
        "--no-generator", action="store_true", help="search the space as given (no hardware narrowing)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler and data seed (default 0)")
    parser.add_argument(
        "--profile-best",
        action="store_true",
        help="after the study, profile the best trial (torch.profiler) and store the hotspots with the study",
    )
    parser.add_argument(
        "--output", metavar="FILE", default=DEFAULT_OUTPUT, help="best config file: .yaml, .json or .py"
    )
    add_execution_args(parser)
    parser.set_defaults(handler=run)


def _load_params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            FieldProblem("--params", text, f"is not JSON ({exc.msg})", "write e.g. '{\"layers\": 4}'")
        ) from None
    if not isinstance(value, dict):
        raise ValidationError(
            FieldProblem("--params", text, "is not a JSON object", "write e.g. '{\"layers\": 4}'")
        )
    return value


def _free_knobs(space: Any, text: str | None) -> Any:
    """`space` with the knobs of --free-knobs added to its own free_knobs."""
    import dataclasses

    from tuner.space.validation import free_knobs_problems

    if text is None:
        return space
    names = [n.strip() for n in text.split(",") if n.strip()]
    problems = free_knobs_problems(names, field="--free-knobs")
    if not names:
        problems.append(FieldProblem("--free-knobs", text, "names no knob", "write all, or e.g. max_sequence_length,effective_batch"))
    if problems:
        raise ValidationError(problems)
    return dataclasses.replace(space, free_knobs=tuple(dict.fromkeys([*space.free_knobs, *names])))


def build_spec(args: argparse.Namespace) -> Any:
    from tuner.space.search_space import load_space
    from tuner.study.spec import StudySpec
    from tuner.types import TrialBudget

    space = _free_knobs(load_space(args.space), getattr(args, "free_knobs", None))
    workload = args.workload or space.workload
    if not workload:
        raise ValidationError(
            FieldProblem(
                "--workload",
                None,
                f"is needed: space {space.name!r} names no workload",
                "pass --workload gpt",
            )
        )
    budget_fields: dict[str, Any] = {}
    if args.steps is not None:
        budget_fields["max_steps"] = args.steps
    if args.warmup_steps is not None:
        budget_fields["warmup_steps"] = args.warmup_steps
    elif args.steps is not None:
        budget_fields["warmup_steps"] = min(TrialBudget().warmup_steps, max(0, args.steps - 1))
    if args.max_seconds is not None:
        budget_fields["max_seconds"] = args.max_seconds
    for flag in ("max_items", "max_train_seconds", "eval_every_items"):
        if getattr(args, flag, None) is not None:
            budget_fields[flag] = getattr(args, flag)
    if getattr(args, "target_loss", None) is not None:
        budget_fields["target_val_loss"] = args.target_loss
    name = args.study or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n_trials = args.trials if args.trials is not None else (None if args.timeout else 20)
    return StudySpec(
        name=name,
        workload=workload,
        space=space,
        workload_params={**space.workload_params, **_load_params(args.params)},
        objectives=_objectives(args.objective, space),
        sampler=args.sampler,
        pruner=args.pruner,
        n_trials=n_trials,
        timeout_s=args.timeout,
        budget=TrialBudget(**budget_fields),
        memory_limit_bytes=parse_bytes(args.memory_limit) if args.memory_limit else None,
        seed=args.seed,
        baseline=not args.no_baseline,
        use_generator=not args.no_generator,
        workers=args.workers or 1,
        device=args.device or "auto",
        slo_p99_ms=getattr(args, "slo_p99_ms", None),
        target_qps=getattr(args, "target_qps", None),
        **({"heartbeat_grace_s": args.heartbeat_grace} if getattr(args, "heartbeat_grace", None) is not None else {}),
    )


def keep_resumed_settings(args: argparse.Namespace, spec: Any) -> Any:
    """`spec` with the settings a resumed study keeps when this command line does not
    repeat them: the parser's default must not overwrite what the study was created with
    (a `--heartbeat-grace 5` study resumed without the option stays at 5 s)."""
    if getattr(args, "heartbeat_grace", None) is not None:
        return spec
    import dataclasses
    from pathlib import Path

    from tuner.errors import StudyNotFoundError
    from tuner.storage.rdb import resolve_storage_url
    from tuner.study.results import load_optuna_study, study_spec

    url = resolve_storage_url(args.storage)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return spec  # no database yet, so no study to resume: do not create the file here

    try:
        stored = study_spec(load_optuna_study(args.storage, spec.name))
    except StudyNotFoundError:
        return spec  # a new study: the default it is
    if stored is None:
        return spec
    return dataclasses.replace(spec, heartbeat_grace_s=stored.heartbeat_grace_s)


def _objectives(choice: str, space: Any) -> tuple[str, ...]:
    if getattr(space, "kind", "training") == "inference" and choice == "throughput":
        return ("qps_at_slo",)  # the default objective, in an inference study's terms
    return _OBJECTIVE_CHOICES[choice]


def install_stop_handler(stop_event: threading.Event) -> Any:
    """First Ctrl-C: finish running trials, then stop. Second: stop now."""

    def handle(signum: int, frame: Any) -> None:
        if stop_event.is_set():
            raise KeyboardInterrupt
        stop_event.set()
        print("\ntuner: stopping after the running trials (Ctrl-C again to stop now)", file=sys.stderr)

    return signal.signal(signal.SIGINT, handle)


def make_executor(args: argparse.Namespace, spec: Any) -> Any:
    from tuner.executors.choice import make_executor as build

    choice = executor_choice(args)
    return build(
        choice,
        # on Ray, no --workers means as many trials as the cluster fits
        workers=args.workers if choice.kind == "ray" else spec.workers,
        device=spec.device,
        trial_timeout_s=args.trial_timeout,
        preload_workloads=(spec.workload,),
    )


def load_hardware(path: str | None) -> Any:
    if not path:
        return None
    from tuner.hardware.profile import load_profile

    return load_profile(path)


def run(args: argparse.Namespace) -> int:
    from tuner.export import format_for_path, write_config
    from tuner.study import quiet_optuna_logging, run_study

    quiet_optuna_logging()
    spec = build_spec(args)
    if spec.space.kind == "inference":
        from tuner.cli.tune_inference import run_inference_tune

        return run_inference_tune(args, spec, install_stop_handler)
    format_for_path(args.output)  # reject a bad --output before hours of tuning
    if getattr(args, "profile_best", False):
        check_profilable(spec.workload)  # before hours of tuning, not after
    spec = keep_resumed_settings(args, spec)  # after the input checks: it may open the database
    stop_event = threading.Event()
    previous = install_stop_handler(stop_event)
    executor = make_executor(args, spec)
    try:
        from tuner.study.discard import no_ghost_on_failure

        with no_ghost_on_failure(args.storage, spec.name):  # a failed creation leaves no empty study
            outcome = run_study(
                spec,
                storage=args.storage,
                executor=executor,
                hardware=load_hardware(args.hardware),
                progress=True,
                stop_event=stop_event,
                confirm=args.confirm,
            )
    finally:
        executor.close()
        signal.signal(signal.SIGINT, previous)
    if outcome.recommended_config is not None:
        write_config(
            args.output,
            outcome.recommended_config,
            meta=outcome_meta(outcome),
            hparams=outcome.best_hparams if not outcome.default_wins else None,
        )
    profile = profile_best(args, spec, outcome) if getattr(args, "profile_best", False) else None
    if args.json:
        data = outcome_to_dict(outcome, output=args.output)
        if profile is not None:
            data["profile"] = profile
        print(json.dumps(data, indent=2))
    else:
        print_outcome(outcome, args.output)
        if profile is not None:
            print(profile_summary_text(profile))
    return 0 if outcome.best_config is not None else 1


def check_profilable(workload_name: str) -> None:
    """--profile-best needs a workload that trains here (not a replay table)."""
    from tuner.workloads import TrainableWorkload, get_workload

    if not isinstance(get_workload(workload_name), TrainableWorkload):
        raise ValidationError(
            FieldProblem(
                "--profile-best",
                workload_name,
                "needs a workload that trains a model here; this one answers from a table",
                "drop --profile-best, or tune a trainable workload such as gpt or recsys",
            )
        )


def profile_best(args: argparse.Namespace, spec: Any, outcome: StudyOutcome) -> dict[str, Any] | None:
    """Profile the study's best trial, store it with the study, and return a summary.

    A profile that cannot be taken (e.g. a world_size > 1 config) is reported on stderr;
    the tuning result stands either way, so it does not change the exit code.
    """
    from tuner.errors import TunerError
    from tuner.study.profiling import profile_attr_key, profile_trial

    if outcome.best_trial is None:
        print("tuner: --profile-best: no best trial to profile", file=sys.stderr)
        return None
    print(f"tuner: profiling best trial #{outcome.best_trial} ...", file=sys.stderr)
    try:
        number, report = profile_trial(
            args.storage, spec.name, outcome.best_trial, device=spec.device, seed=spec.seed
        )
    except TunerError as exc:
        print(f"tuner: --profile-best: no profile taken: {exc}", file=sys.stderr)
        return None
    section = report.get("cuda") or report.get("cpu") or {}
    hotspots = [h for h in section.get("hotspots", []) if h.get("kind") != "remainder"][:5]
    return {
        "trial": number,
        "stored_as": profile_attr_key(number),
        "status": report["status"],
        "reason": report.get("reason"),
        "timeline": "gpu" if report.get("cuda") else "cpu",
        "categories": section.get("categories", {}),
        "top_hotspots": [
            {k: h[k] for k in ("name", "category", "share", "self_time_us", "calls")} for h in hotspots
        ],
    }


def profile_summary_text(profile: dict[str, Any]) -> str:
    """E.g. "profile of trial #3 (cpu): matmul 44%, other 31%, ...; top: aten::mm 21% (matmul), ..."."""
    head = f"profile of best trial #{profile['trial']} ({profile['timeline']} time, stored as {profile['stored_as']})"
    if profile["status"] != "ok":
        return f"{head}: {profile['status']} — {profile['reason']}"
    shares = sorted(profile["categories"].items(), key=lambda kv: -kv[1])
    lines = [head + ":", "  by category: " + ", ".join(f"{c} {s * 100:.1f}%" for c, s in shares if s > 0)]
    lines += [
        f"  {h['share'] * 100:5.1f}%  {h['category']:<13} {h['name'][:80]}" for h in profile["top_hotspots"]
    ]
    return "\n".join(lines)


def outcome_meta(outcome: StudyOutcome) -> dict[str, Any]:
    from tuner.study.confirm import Confirmation

    if outcome.default_wins:
        return {
            "study": outcome.study_name,
            "config": Confirmation.KEEP_DEFAULT_NOTE,
            "best trial": f"#{outcome.best_trial}: {ratio_sentence(outcome)}",
        }
    return {
        "study": outcome.study_name,
        "trial": outcome.best_trial,
        "result": ratio_sentence(outcome),
    }


def ratio_sentence(outcome: StudyOutcome) -> str:
    """E.g. "gain over the default config: x1.74, median of 3 back-to-back pairs, range
    1.21-2.28, not significant": `StudyOutcome.gain`'s one wording (`tuner.study.gain`),
    the same text `tuner best` and the dashboard show."""
    gain = outcome.gain
    return f"gain over the default config: {gain.text}" if gain.value is not None else gain.text


def print_outcome(outcome: StudyOutcome, output: str | None) -> None:
    from tuner.export import render

    print(
        f"study {outcome.study_name}: {outcome.n_complete} ok, {outcome.n_pruned} pruned, {outcome.n_failed} failed, "
        f"{outcome.n_oom} oom, {outcome.n_infeasible} infeasible in {outcome.duration_s:.0f} s "
        f"(stopped: {outcome.stopped_because})"
    )
    if outcome.n_abandoned:
        print(
            f"  {outcome.n_abandoned} trial(s) lost with their process or worker host: failed as abandoned, "
            "not counted toward n_trials, their configs run again"
        )
    for line in outcome.held_knobs:
        print(line)
    if outcome.best_config is None:
        print("no trial completed within the constraints; nothing written")
        return
    print(f"best config (trial #{outcome.best_trial}):")
    print("  " + render(outcome.best_config, "yaml").rstrip().replace("\n", "\n  "))
    print(ratio_sentence(outcome))
    gain = outcome.gain
    for line in (gain.measured, gain.noise, gain.search_text):
        if line:
            print(f"  {line}")
    if outcome.default_wins:
        print(
            "the default config was faster back to back: no trial beat it, so the default config is "
            "the recommendation" + (f" (written to {output})" if output else "") + ":"
        )
        print("  " + render(outcome.baseline_config, "yaml").rstrip().replace("\n", "\n  "))
    if len(outcome.pareto) > 1:
        print(f"Pareto front ({len(outcome.pareto)} configs, {' vs '.join(outcome.objectives)}):")
        for config, result in outcome.pareto:
            print(
                f"  {result.items_per_s or 0:,.0f} {result.item_unit}/s, val_loss {result.val_loss:.4f}: "
                f"micro_batch {config.micro_batch_size}, {config.precision}"
            )
    if output:
        print(f"wrote {output}")


def outcome_to_dict(outcome: StudyOutcome, output: str | None = None) -> dict[str, Any]:
    return {
        "study": outcome.study_name,
        "storage": outcome.storage,
        "objectives": list(outcome.objectives),
        "best_trial": outcome.best_trial,
        "best_config": outcome.best_config.to_dict() if outcome.best_config else None,
        "best_hparams": outcome.best_hparams,
        # What --output holds: the best trial's config, or the default's when it won back to back.
        "recommended_config": outcome.recommended_config.to_dict() if outcome.recommended_config else None,
        "recommendation": "default" if outcome.default_wins else ("best_trial" if outcome.best_config else None),
        "best_result": outcome.best_result.to_dict() if outcome.best_result else None,
        "baseline_config": outcome.baseline_config.to_dict() if outcome.baseline_config else None,
        "baseline_result": outcome.baseline_result.to_dict() if outcome.baseline_result else None,
        "ratio": outcome.ratio,
        "search_ratio": outcome.search_ratio,
        "ratio_range": list(outcome.ratio_range) if outcome.ratio_range else None,
        "confirmation": outcome.confirmation.to_dict() if outcome.confirmation else None,
        "summary": ratio_sentence(outcome),
        "gain_report": outcome.gain.to_dict(),
        "pareto": [{"config": c.to_dict(), "result": r.to_dict()} for c, r in outcome.pareto],
        "counts": {
            "complete": outcome.n_complete,
            "failed": outcome.n_failed,
            "pruned": outcome.n_pruned,
            "infeasible": outcome.n_infeasible,
            "oom": outcome.n_oom,
            "abandoned": outcome.n_abandoned,
        },
        "duration_s": outcome.duration_s,
        "stopped_because": outcome.stopped_because,
        "held_knobs": list(outcome.held_knobs),
        "output": output if outcome.best_config is not None else None,
    }

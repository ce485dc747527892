"""`tuner worker`: join an existing study and run its trials until it has enough.

Start as many as you like, on this or other machines, against one PostgreSQL (or
SQLite, same machine) study: each asks Optuna for a new trial, so two workers never run
the same trial. The study's spec (space, workload, budget, objectives) is read from the
database; only where and how this worker runs trials comes from the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import threading
from typing import Any

from tuner.cli.cmd_tune import (
    add_execution_args,
    install_stop_handler,
    load_hardware,
    make_executor,
    outcome_to_dict,
    print_outcome,
)
from tuner.errors import FieldProblem, ValidationError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run trials of an existing study (several workers may share one study)",
        description=(
            "Join study NAME in --storage and run its trials until the study has its n_trials "
            "(or this worker has run --trials N of them). The study is created by `tuner tune` "
            "or the REST service; its spec is read from the database."
        ),
    )
    parser.add_argument("--study", required=True, metavar="NAME", help="study to join")
    parser.add_argument("--trials", type=int, metavar="N", help="stop after this worker finished N trials")
    add_execution_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tuner.study import quiet_optuna_logging, run_study
    from tuner.study.results import load_optuna_study, study_spec

    quiet_optuna_logging()
    if args.trials is not None and args.trials < 1:
        raise ValidationError(
            FieldProblem("--trials", args.trials, "must be >= 1", "omit it or give a positive count")
        )
    study = load_optuna_study(args.storage, args.study)
    spec = study_spec(study)
    if spec is None:
        raise ValidationError(
            FieldProblem(
                "--study",
                args.study,
                "was not created by tuner (it has no tuner.spec attribute)",
                "create it with `tuner tune` or the REST service",
            )
        )
    changes: dict[str, Any] = {"baseline": False}
    if args.workers:
        changes["workers"] = args.workers
    if args.device:
        changes["device"] = args.device
    spec = dataclasses.replace(spec, **changes)

    stop_event = threading.Event()
    finished_here = 0

    def count_mine(update: Any) -> None:
        nonlocal finished_here
        if update.event == "trial" and update.trial_status != "infeasible":
            finished_here += 1
            if args.trials is not None and finished_here >= args.trials:
                stop_event.set()

    previous = install_stop_handler(stop_event)
    executor = make_executor(args, spec)
    try:
        outcome = run_study(
            spec,
            storage=args.storage,
            executor=executor,
            hardware=load_hardware(args.hardware),
            progress=count_mine,
            stop_event=stop_event,
            role="worker",
        )
    finally:
        executor.close()
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps({**outcome_to_dict(outcome), "trials_run_here": finished_here}, indent=2))
    else:
        print(f"worker ran {finished_here} trials of study {spec.name}")
        print_outcome(outcome, None)
    return 0

"""`tuner` command line: a thin dispatcher over one module per subcommand.

Each `tuner/cli/cmd_<name>.py` exposes `register(subparsers)`, which adds its parser and
sets `handler=run`. Command modules import nothing heavy at module level (torch, optuna,
ray load inside `run`), so `tuner --help` answers in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tuner import __version__
from tuner.errors import TunerError, ValidationError

COMMAND_MODULES: tuple[str, ...] = (
    "tune",
    "studies",
    "best",
    "export",
    "worker",
    "workloads",
    "probe",
    "estimate_memory",
    "recommend",
    "replay",
    "profile",
    "scaling",
)

#: Entry-point group through which other packages add subcommands (the service adds
#: `serve`, `db` and `token`), so `tuner` itself never imports `api`.
PLUGIN_COMMAND_GROUP = "tuner.cli"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuner",
        description="Find the fastest, best training configuration for a PyTorch model on this hardware.",
    )
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module_name = f"tuner.cli.cmd_{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not built yet
            raise
        module.register(subparsers)
    for module in _plugin_command_modules():
        module.register(subparsers)
    return parser


def _plugin_command_modules() -> list[object]:
    from importlib.metadata import entry_points

    modules = []
    for entry in sorted(entry_points(group=PLUGIN_COMMAND_GROUP), key=lambda e: e.name):
        try:
            modules.append(entry.load())
        except ImportError as exc:  # a broken plugin must not take the whole CLI down
            print(f"tuner: command {entry.name!r} unavailable ({exc})", file=sys.stderr)
    return modules


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValidationError as exc:
        print("tuner: invalid input:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except TunerError as exc:
        print(f"tuner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `tuner probe | head` closed our stdout early: not an error worth a traceback.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

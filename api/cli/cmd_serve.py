"""`tuner serve`: the REST API (uvicorn) with background study runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuner.storage.rdb import DEFAULT_STORAGE_URL


def _table(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH; e.g. --replay-table gpt_124m=data/gpt_124m.jsonl")
    return name, Path(path)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the REST API and run studies created through it",
        description="Serve the REST API (OpenAPI docs at /docs). Refuses to start on an outdated "
        "schema and prints the `tuner db upgrade` command to run.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--storage", default=DEFAULT_STORAGE_URL, help=f"database URL (default {DEFAULT_STORAGE_URL})")
    parser.add_argument("--max-running-studies", type=int, default=1, help="studies run at once (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes per running study")
    parser.add_argument("--replay-table", type=_table, action="append", default=[], metavar="NAME=PATH", help="a replay table REST payloads may name (repeatable)")
    parser.add_argument("--read-requires-token", action="store_true", help="require a token for GET endpoints too")
    parser.add_argument("--no-run", action="store_true", help="do not run studies in this process (API and ask/tell only)")
    parser.add_argument("--heartbeat-grace", type=float, default=None, help="seconds after which a silent runner counts as dead")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--executor",
        action="append",
        default=[],
        metavar="KIND|NAME=KIND",
        help="an executor studies may run on: local or ray (repeatable; the first is the default; "
        "default: local). A REST study picks one by name (`executor`), never by address",
    )
    parser.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster of the ray executor(s): auto, HOST:PORT")
    parser.add_argument("--cpus-per-rank", type=float, default=1.0, metavar="N", help="Ray CPUs per rank (default 1)")
    parser.add_argument("--gpus-per-rank", type=float, default=0.0, metavar="N", help="Ray GPUs per rank (default 0)")
    parser.add_argument("--placement", choices=("PACK", "SPREAD", "STRICT_SPREAD"), default="PACK", help="Ray placement of a trial's ranks")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from api.settings import Settings

    options: dict[str, object] = {
        "storage": args.storage,
        "max_running_studies": args.max_running_studies,
        "executor_workers": args.workers,
        "replay_tables": dict(args.replay_table),
        "read_requires_token": args.read_requires_token,
        "run_studies": not args.no_run,
    }
    options["executors"] = executor_settings(args)
    if args.heartbeat_grace is not None:
        options["heartbeat_grace_s"] = args.heartbeat_grace
        options["heartbeat_interval_s"] = max(0.2, args.heartbeat_grace / 4)
    app = create_app(Settings(**options))  # raises SchemaOutOfDateError with the command to run
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def executor_settings(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """`--executor` options -> Settings.executors (name -> ExecutorChoice fields), checked."""
    from tuner.errors import FieldProblem, ValidationError
    from tuner.executors.choice import parse_executor_option

    offered: dict[str, dict[str, object]] = {}
    for text in args.executor or ["local"]:
        choice = parse_executor_option(text, args.ray_address)
        if choice.name in offered:
            raise ValidationError(FieldProblem("--executor", text, "names an executor twice", "give each NAME once"))
        fields: dict[str, object] = {"kind": choice.kind}
        if choice.kind == "ray":
            fields.update(
                ray_address=choice.ray_address,
                cpus_per_rank=args.cpus_per_rank,
                gpus_per_rank=args.gpus_per_rank,
                placement=args.placement,
            )
        offered[choice.name] = fields
    if args.ray_address and not any(f["kind"] == "ray" for f in offered.values()):
        raise ValidationError(FieldProblem("--ray-address", args.ray_address, "needs a ray executor", "add --executor ray"))
    return offered

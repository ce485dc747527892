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
    if args.heartbeat_grace is not None:
        options["heartbeat_grace_s"] = args.heartbeat_grace
        options["heartbeat_interval_s"] = max(0.2, args.heartbeat_grace / 4)
    app = create_app(Settings(**options))  # raises SchemaOutOfDateError with the command to run
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0

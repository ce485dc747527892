"""`tuner db upgrade|current|check`: the service's database schema."""

from __future__ import annotations

import argparse

from tuner.storage.rdb import DEFAULT_STORAGE_URL


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "db",
        help="create or upgrade the database schema (tuner_* tables and Optuna's)",
        description="Manage the schema of the shared database: tuner's own tables (migrated with "
        "Alembic, version table tuner_alembic_version) and Optuna's tables.",
    )
    parser.add_argument("action", choices=("upgrade", "current", "check"), help="upgrade to the newest schema, show the current revision, or check it is current")
    parser.add_argument("--storage", default=DEFAULT_STORAGE_URL, help=f"database URL (default {DEFAULT_STORAGE_URL})")
    parser.add_argument("--revision", default="head", help="target revision for upgrade (default: head)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from api.db import migrate
    from tuner.storage.rdb import display_url, resolve_storage_url

    url = resolve_storage_url(args.storage)
    if args.action == "upgrade":
        before = migrate.current_revision(url)
        migrate.upgrade(url, args.revision)
        print(f"{display_url(url)}: {before or 'empty'} -> {migrate.current_revision(url)}")
        return 0
    current = migrate.current_revision(url)
    head = migrate.head_revision()
    if args.action == "current":
        print(f"{display_url(url)}: revision {current or '(none)'}; newest is {head}")
        return 0
    differences = migrate.schema_differences(url) if current == head else []
    if current != head:
        print(f"{display_url(url)} is at {current or '(no tuner tables)'}, need {head}; run: {migrate.upgrade_command(display_url(url))}")
        return 1
    if differences:
        print(f"{display_url(url)} is at {head} but its tables differ from the models:")
        for diff in differences:
            print(f"  {diff}")
        return 1
    print(f"{display_url(url)}: schema is current ({head})")
    return 0

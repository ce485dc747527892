"""`tuner token create|revoke`: bearer tokens for the service's mutating endpoints."""

from __future__ import annotations

import argparse

from tuner.storage.rdb import DEFAULT_STORAGE_URL


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "token",
        help="create or revoke API tokens",
        description="Tokens are stored hashed; `create` prints the token once, keep it.",
    )
    parser.add_argument("action", choices=("create", "revoke"))
    parser.add_argument("--name", required=True, help="a name for the token (who or what uses it)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE_URL, help=f"database URL (default {DEFAULT_STORAGE_URL})")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from api.auth import create_token, revoke_token
    from api.db.engine import make_engine, make_session_factory
    from api.db.migrate import ensure_schema_current
    from tuner.storage.rdb import resolve_storage_url

    url = resolve_storage_url(args.storage)
    ensure_schema_current(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            if args.action == "create":
                token = create_token(session, args.name)
                session.commit()
                print(token)
                return 0
            if not revoke_token(session, args.name):
                print(f"tuner: no active token named {args.name!r}")
                return 1
            session.commit()
            print(f"revoked {args.name}")
            return 0
    finally:
        engine.dispose()

"""`tuner token create|list|revoke`: bearer tokens, their scopes and owners (api.access)."""

from __future__ import annotations

import argparse

from tuner.storage.rdb import DEFAULT_STORAGE_URL

SCOPES = ("read", "ask_tell", "create", "admin")  # api.access.Scope, without importing api at parse time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "token",
        help="create, list or revoke API tokens",
        description=(
            "Tokens are stored hashed; `create` prints the token once, keep it. Scopes: read (GET when the server "
            "requires tokens for reads), ask_tell (ask/report/tell), create (create studies; stop, resume, delete "
            "its owner's studies), admin (everything, any study, tokens). Default: read, ask_tell, create. "
            "A revoked token stops working at once on a server that revoked it through the API, and within the "
            "servers' token_cache_s (default 5 s) everywhere after `tuner token revoke`."
        ),
    )
    parser.add_argument("action", choices=("create", "list", "revoke"))
    parser.add_argument("--name", help="the token's name (who or what uses it); required for create and revoke")
    parser.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help="a scope of the new token; repeat for several (default: read, ask_tell, create)",
    )
    parser.add_argument("--owner", help="who owns the studies the token creates (default: the token's name)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE_URL, help=f"database URL (default {DEFAULT_STORAGE_URL})")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from api.access import Scope, format_scopes
    from api.auth import create_token, list_tokens, revoke_token
    from api.db.engine import make_engine, make_session_factory
    from api.db.migrate import ensure_schema_current
    from tuner.errors import ValidationError
    from tuner.storage.rdb import resolve_storage_url

    if args.action != "list" and not args.name:
        print(f"tuner token {args.action}: --name is required")
        return 2
    if args.action != "create" and (args.scope or args.owner):
        print(f"tuner token {args.action}: --scope and --owner only go with create")
        return 2
    url = resolve_storage_url(args.storage)
    ensure_schema_current(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            if args.action == "create":
                scopes = {Scope(s) for s in args.scope} if args.scope else None
                try:
                    token = create_token(session, args.name, scopes, args.owner)
                except ValidationError as exc:
                    print(f"tuner: {exc}")
                    return 1
                session.commit()
                print(token)
                return 0
            if args.action == "list":
                print(f"{'NAME':<24} {'OWNER':<16} {'SCOPES':<32} {'CREATED':<19} REVOKED")
                for t in list_tokens(session):
                    revoked = t.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if t.revoked_at else "-"
                    print(f"{t.name:<24} {t.owner:<16} {format_scopes(t.scopes):<32} {t.created_at:%Y-%m-%d %H:%M:%S} {revoked}")
                return 0
            if not revoke_token(session, args.name):
                print(f"tuner: no active token named {args.name!r}")
                return 1
            session.commit()
            print(f"revoked {args.name} (servers stop accepting it within their token_cache_s, default 5 s)")
            return 0
    finally:
        engine.dispose()

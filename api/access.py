"""Who may call what: the token scopes and THE table of every route's access rule.

`api.deps.authorize` (installed on every router) looks each request's route up here, and
tests/test_auth_matrix.py walks every route of the app against this same table, so the
table is both the wiring and the specification. A route missing from it is refused (403)
at request time and makes `create_app` fail at start-up.

Scopes (a token holds a set; `admin` implies every other scope):
- `read`      GET endpoints, when the server runs with `read_requires_token` (otherwise
              reads are open to anyone, token or not);
- `ask_tell`  ask, report and tell trials of ask/tell studies;
- `create`    create studies (ask/tell or run by the server), probe the hardware, and stop,
              resume or delete the studies its owner created;
- `admin`     everything, on any study (also those with no owner), plus token management
              and the details of `/ready`.
Tokens created before revision 0005 hold `read ask_tell create`: everything they could do
before, minus acting on other owners' studies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final


class Scope(StrEnum):
    READ = "read"
    ASK_TELL = "ask_tell"
    CREATE = "create"
    ADMIN = "admin"


#: what `tuner token create` gives without --scope, and what revision 0005 gives old tokens
DEFAULT_SCOPES: Final[frozenset[Scope]] = frozenset({Scope.READ, Scope.ASK_TELL, Scope.CREATE})


def parse_scopes(text: str) -> frozenset[Scope]:
    """Scopes as stored (space-separated, OAuth style); unknown words are dropped, never granted."""
    known = {scope.value for scope in Scope}
    return frozenset(Scope(word) for word in text.split() if word in known)


def format_scopes(scopes: frozenset[Scope] | set[Scope]) -> str:
    return " ".join(sorted(scope.value for scope in scopes))


@dataclass(frozen=True)
class Rule:
    """A route's access: `scope` None = public (no token looked at); `owned` = the study in
    the path's `{name}` must belong to the caller's owner, unless the caller is admin."""

    scope: Scope | None
    owned: bool = False


PUBLIC: Final = Rule(None)
READ: Final = Rule(Scope.READ)
ASK_TELL: Final = Rule(Scope.ASK_TELL)
CREATE: Final = Rule(Scope.CREATE)
OWNER: Final = Rule(Scope.CREATE, owned=True)
ADMIN: Final = Rule(Scope.ADMIN)

V1 = "/api/v1"
DASH = "/api/v1/dashboard"

#: (method, route path as the app registers it) -> rule. Every route of the app is here.
ROUTE_RULES: Final[dict[tuple[str, str], Rule]] = {
    # probes: a load balancer calls them without a token; /ready shows details to admins only
    ("GET", f"{V1}/health"): PUBLIC,
    ("GET", f"{V1}/ready"): PUBLIC,
    # ask/tell: the hot path
    ("POST", f"{V1}/studies/{{name}}/ask"): ASK_TELL,
    ("POST", f"{V1}/studies/{{name}}/trials/{{number}}/report"): ASK_TELL,
    ("POST", f"{V1}/studies/{{name}}/trials/{{number}}/tell"): ASK_TELL,
    ("POST", f"{V1}/studies/{{name}}/trials/{{number}}/heartbeat"): ASK_TELL,
    # studies
    ("POST", f"{V1}/studies"): CREATE,
    ("GET", f"{V1}/studies"): READ,
    ("GET", f"{V1}/studies/{{name}}"): READ,
    ("POST", f"{V1}/studies/{{name}}/stop"): OWNER,
    ("POST", f"{V1}/studies/{{name}}/resume"): OWNER,
    ("DELETE", f"{V1}/studies/{{name}}"): OWNER,
    ("GET", f"{V1}/studies/{{name}}/trials"): READ,
    ("GET", f"{V1}/studies/{{name}}/trials/{{number}}"): READ,
    ("GET", f"{V1}/studies/{{name}}/best"): READ,
    ("GET", f"{V1}/studies/{{name}}/pareto"): READ,
    # catalog
    ("GET", f"{V1}/workloads"): READ,
    ("GET", f"{V1}/workloads/{{name}}"): READ,
    ("POST", f"{V1}/spaces/validate"): READ,  # a pure computation on the body; changes nothing
    ("GET", f"{V1}/hardware"): READ,
    ("POST", f"{V1}/hardware/probe"): CREATE,
    # tokens
    ("GET", f"{V1}/tokens"): ADMIN,
    ("POST", f"{V1}/tokens"): ADMIN,
    ("DELETE", f"{V1}/tokens/{{name}}"): ADMIN,
    # dashboard: the pages and assets are static shells; their data comes from the reads below
    ("GET", "/"): PUBLIC,
    ("GET", "/studies/{name}"): PUBLIC,
    ("GET", "/studies/{name}/trials/{number}"): PUBLIC,
    ("GET", "/dashboard/static/{path:path}"): PUBLIC,
    ("GET", "/dashboard/vendor/plotly.min.js"): PUBLIC,
    ("GET", f"{DASH}/studies"): READ,
    ("GET", f"{DASH}/studies/{{name}}"): READ,
    ("GET", f"{DASH}/studies/{{name}}/charts"): READ,
    ("GET", f"{DASH}/studies/{{name}}/inference"): READ,
    ("GET", f"{DASH}/studies/{{name}}/trials"): READ,
    ("GET", f"{DASH}/studies/{{name}}/importance"): READ,
    ("GET", f"{DASH}/studies/{{name}}/curves"): READ,
    ("GET", f"{DASH}/studies/{{name}}/trials/{{number}}"): READ,
    ("GET", f"{DASH}/studies/{{name}}/export"): READ,
    ("GET", f"{DASH}/presets"): READ,
    # the API's own description (FastAPI's routes, outside the routers, so `authorize` never
    # runs on them): public by decision, also with `read_requires_token`. The schema is the
    # same for every server of a version (it ships in the wheel's code), holds no study,
    # trial, token or database detail, and the tools that need it cannot all send a token
    # (Swagger UI's page fetches the schema without one; code generators, schemathesis).
    # Listing them here makes that a decision the auth matrix checks, not an oversight.
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
}

#: methods that never change anything; only these may be PUBLIC or READ, except the POSTs
#: listed in READ_ONLY_POSTS (the matrix test holds the table to this)
SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
READ_ONLY_POSTS: Final = frozenset({("POST", f"{V1}/spaces/validate")})


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of a route, None when the table lacks it."""
    return ROUTE_RULES.get((method, path))


def app_routes(app: Any) -> list[tuple[str, str, Callable[..., Any]]]:
    """(method, full path, endpoint) of every route of `app`: the API's, the dashboard's and
    FastAPI's own (/openapi.json, /docs: plain Starlette routes, listed by GET only, the
    HEAD Starlette adds to them answering the same).

    FastAPI >= 0.16x keeps included routers unflattened (`app.routes` holds the routers,
    each route keeps its own unprefixed path); `iter_route_contexts` gives the full paths.
    Older versions copy every route into `app.routes` with its full path.
    """
    from starlette.routing import Route

    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before 0.16x: app.routes is flat
        routes: list[Any] = [r for r in app.routes if isinstance(r, Route)]
    else:
        routes = [r for r in iter_route_contexts(app.routes) if isinstance(r.original_route, Route)]
    return [
        (method, route.path, route.endpoint)
        for route in routes
        for method in sorted(route.methods or ())
        if not (method == "HEAD" and "GET" in route.methods)
    ]


def endpoint_rules(app: Any) -> dict[tuple[str, Callable[..., Any]], Rule]:
    """(method, endpoint function) -> rule for every route of `app`, built once at start-up
    (a request knows its endpoint in every FastAPI version, its full path template not).
    Raises when a route has no rule in ROUTE_RULES: such a server must not start."""
    rules: dict[tuple[str, Callable[..., Any]], Rule] = {}
    missing: list[str] = []
    for method, path, endpoint in app_routes(app):
        rule = rule_for(method, path)
        if rule is None:
            missing.append(f"{method} {path}")
        else:
            rules[(method, endpoint)] = rule
    if missing:
        raise RuntimeError("routes without an access rule: " + ", ".join(missing) + "; add them to api.access.ROUTE_RULES")
    return rules

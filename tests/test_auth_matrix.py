"""The auth matrix: EVERY route of the app (walked from the app itself, never a hand list)
against every kind of caller, checked against the one table of rules (api.access.ROUTE_RULES)
that the server's `authorize` dependency applies.

Callers: no token, a wrong token, a revoked token, one token per scope, a `create` token of
another owner (for the routes acting on a study: stop, resume, delete) and the owner's own.
Expected: a route's rule says who may call it; a refused caller gets exactly 401 (no or bad
token) or 403 (scope, ownership); an allowed one anything but 401/403 and never a 5xx (the
dummy bodies and names may well give 404/409/422). On top, the table itself is held to a
policy: a route that changes anything is never public or read-only.
"""

from __future__ import annotations

import re
import warnings

import pytest
from fastapi.testclient import TestClient

from api import access
from api.access import ROUTE_RULES, SAFE_METHODS, Rule, Scope, app_routes
from api.main import create_app
from api.settings import Settings
from tests._api_support import GPT_TABLE, TINY_SPACE, new_token, sqlite_db

warnings.filterwarnings("ignore", category=DeprecationWarning)

STUDY = "s"
OWNER = "alice"
#: caller -> (scopes, owner) of its token; None: the caller sends no valid token
CALLERS: dict[str, tuple[set[str], str] | None] = {
    "read": ({"read"}, "reader"),
    "ask_tell": ({"ask_tell"}, "worker"),
    "create": ({"create"}, "bob"),  # a creator, but not the owner of STUDY
    "owner": ({"create"}, OWNER),
    "admin": ({"admin"}, "root"),
}
ANONYMOUS = ("none", "wrong", "revoked")


def expected(rule: Rule, caller: str, read_requires_token: bool) -> int | None:
    """401 or 403 when `caller` must be refused, None when it must be let through."""
    if rule.scope is None:
        return None  # public: the token is not even looked at
    if caller in ("wrong", "revoked"):
        return 401  # a presented token is always checked
    if rule.scope is Scope.READ and not read_requires_token:
        return None
    if caller == "none":
        return 401
    scopes, owner = CALLERS[caller]  # type: ignore[misc]
    if "admin" in scopes:
        return None
    if rule.scope.value not in scopes:
        return 403
    if rule.owned and owner != OWNER:
        return 403
    return None


def _concrete(path: str) -> str:
    path = path.replace("{path:path}", "app.js").replace("{number}", "0")
    return re.sub(r"\{name\}", STUDY, path)


def _body(method: str, path: str) -> dict | None:
    if method not in ("POST", "PUT", "PATCH"):
        return None
    if path.endswith("/tell"):
        return {"values": [1.0]}
    if path.endswith("/report"):
        return {"step": 0, "value": 1.0}
    return {}  # create / validate / tokens: 422 for an allowed caller, which is fine


@pytest.fixture(params=[False, True], ids=["open-reads", "read-requires-token"])
def world(request, tmp_path):
    url = sqlite_db(tmp_path)
    app = create_app(Settings(storage=url, run_studies=False, read_requires_token=request.param, replay_tables={"gpt_124m": GPT_TABLE}, writer_process=False, sampler_process=False))
    headers = {caller: {"Authorization": f"Bearer {new_token(url, caller, scopes=scopes, owner=owner)}"} for caller, (scopes, owner) in CALLERS.items()}  # type: ignore[misc]
    revoked = new_token(url, "gone")
    headers["none"] = {}
    headers["wrong"] = {"Authorization": "Bearer tnr_not-a-real-token"}
    headers["revoked"] = {"Authorization": f"Bearer {revoked}"}
    with TestClient(app) as client:
        owner = headers["owner"]
        setup_token = new_token(url, "setup", scopes={"ask_tell", "read"}, owner=OWNER)
        created = client.post("/api/v1/studies", json={"name": STUDY, "space": TINY_SPACE, "run": False, "n_trials": 1000}, headers=owner)
        assert created.status_code == 201, created.text
        worker = {"Authorization": f"Bearer {setup_token}"}
        asked = client.post(f"/api/v1/studies/{STUDY}/ask", headers=worker).json()
        told = client.post(f"/api/v1/studies/{STUDY}/trials/{asked['trial_number']}/tell", json={"values": [1.0]}, headers=worker)
        assert told.status_code == 200, told.text
        assert client.delete("/api/v1/tokens/gone", headers=headers["admin"]).status_code == 204
        yield app, client, headers, request.param


def _routes(app) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _ in app_routes(app)]


def test_every_route_has_exactly_one_rule_and_no_rule_is_stale(world):
    app, _, _, _ = world
    routes = _routes(app)
    assert len(routes) == len(set(routes))
    assert set(routes) == set(ROUTE_RULES), "the table and the app's routes differ"
    schema_paths = {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}
    assert schema_paths <= set(routes) and len(schema_paths) >= 20


def test_a_route_without_a_rule_stops_the_server(tmp_path, monkeypatch):
    url = sqlite_db(tmp_path)
    table = dict(ROUTE_RULES)
    del table[("POST", "/api/v1/studies/{name}/trials/{number}/tell")]
    del table[("GET", "/api/v1/tokens")]
    monkeypatch.setattr(access, "ROUTE_RULES", table)
    with pytest.raises(RuntimeError) as caught:
        create_app(Settings(storage=url, run_studies=False))
    assert str(caught.value) == (
        "routes without an access rule: POST /api/v1/studies/{name}/trials/{number}/tell, GET /api/v1/tokens; "
        "add them to api.access.ROUTE_RULES"
    )


def test_no_route_that_changes_data_is_open():
    """The policy the table must follow: only safe methods (and named pure computations)
    may be public or read-scoped. Makes the table's own mutations fail, e.g. the tell route
    set to PUBLIC or READ."""
    for (method, path), rule in ROUTE_RULES.items():
        if method in SAFE_METHODS or (method, path) in access.READ_ONLY_POSTS:
            continue
        assert rule.scope in (Scope.ASK_TELL, Scope.CREATE, Scope.ADMIN), f"{method} {path} changes data but is {rule}"
    # the ownership rule: only the owner (or an admin) stops, resumes or deletes a study
    owned = {key for key, rule in ROUTE_RULES.items() if rule.owned}
    assert owned == {
        ("POST", "/api/v1/studies/{name}/stop"),
        ("POST", "/api/v1/studies/{name}/resume"),
        ("DELETE", "/api/v1/studies/{name}"),
    }


def _refusal_problems(r, status: int, rule: Rule, caller: str, where: str) -> list[str]:
    """A refusal must say why, in the problem+json every error uses, naming the fix."""
    body = r.json() if r.headers.get("content-type") == "application/problem+json" else None
    if body is None:
        return [f"{where}: {status} without problem+json"]
    problem = body["problems"][0] if body.get("problems") else {}
    scope = rule.scope.value if rule.scope is not None else "?"
    wrong: list[str] = []
    if status == 401:
        if r.headers.get("www-authenticate") != "Bearer" or body["title"] != "Unauthorized" or problem.get("field") != "Authorization":
            wrong.append(f"{where}: 401 without WWW-Authenticate: Bearer, title Unauthorized, field Authorization: {body}")
        if caller == "none":
            if body["detail"] != f"this endpoint needs a bearer token with scope {scope}" or f"--scope {scope}" not in problem.get("fix", ""):
                wrong.append(f"{where}: 401 must name the scope needed and how to get a token: {body}")
        elif body["detail"] != "the bearer token is unknown or revoked":
            wrong.append(f"{where}: 401 for a bad token must say it is unknown or revoked: {body}")
    else:
        if body["title"] != "Forbidden" or body["status"] != 403:
            wrong.append(f"{where}: 403 without title Forbidden: {body}")
        if problem.get("field") == "scope":
            held = " ".join(sorted(CALLERS[caller][0]))  # type: ignore[index]
            if f"lacks scope {scope}" not in body["detail"] or f"--scope {scope}" not in problem.get("fix", "") or problem.get("value") != held:
                wrong.append(f"{where}: a scope refusal must name the missing scope and the fix: {body}")
        elif problem.get("field") == "name":
            if problem.get("value") != STUDY or f"owner {OWNER!r}" not in body["detail"] or "admin" not in problem.get("fix", ""):
                wrong.append(f"{where}: an ownership refusal must name the study, its owner and the fix: {body}")
        else:
            wrong.append(f"{where}: 403 names neither the scope nor the study: {body}")
    return wrong


def test_auth_matrix_over_every_route(world):
    app, client, headers, read_requires_token = world
    routes = _routes(app)
    # refusals first: they change nothing, so the study is still there for the ownership checks
    order = ["none", "wrong", "revoked", "read", "ask_tell", "create", "owner", "admin"]
    failures: list[str] = []
    checked = 0
    plan = []
    for method, path in routes:
        rule = ROUTE_RULES[(method, path)]
        for caller in order:
            plan.append((expected(rule, caller, read_requires_token) is None, method, path, caller))
    plan.sort(key=lambda item: (item[0], item[1] == "DELETE"))  # refused first; deletions last
    for allowed, method, path, caller in plan:
        if method == "POST" and path.endswith("/hardware/probe") and allowed:
            continue  # a real probe of this machine: checked once below, not per caller
        r = client.request(method, _concrete(path), json=_body(method, path), headers=headers[caller])
        checked += 1
        want = expected(ROUTE_RULES[(method, path)], caller, read_requires_token)
        if want is None:
            if r.status_code in (401, 403) or r.status_code >= 500:
                failures.append(f"{method} {path} as {caller}: {r.status_code}, expected to be let through: {r.text[:200]}")
        elif r.status_code != want:
            failures.append(f"{method} {path} as {caller}: {r.status_code}, expected {want}: {r.text[:200]}")
        else:
            failures += _refusal_problems(r, want, ROUTE_RULES[(method, path)], caller, f"{method} {path} as {caller}")
    assert not failures, f"{len(failures)} of {checked} checks failed:\n" + "\n".join(failures)
    assert checked >= len(routes) * len(order) - len(order)


def test_hardware_probe_needs_create(world):
    _, client, headers, _ = world
    assert client.post("/api/v1/hardware/probe", headers=headers["read"]).status_code == 403
    assert client.post("/api/v1/hardware/probe", headers=headers["create"]).status_code == 200


def test_a_route_that_lost_its_rule_after_start_up_is_refused(world):
    """Fail closed: authorize refuses a route it has no rule for (create_app refuses to start
    with one; this is the belt to that check's braces)."""
    app, client, headers, _ = world
    tell = next(key for key in app.state.route_rules if key[0] == "POST" and key[1].__name__ == "tell")
    del app.state.route_rules[tell]
    r = client.post(f"/api/v1/studies/{STUDY}/trials/0/tell", json={"values": [1.0]}, headers=headers["admin"])
    assert r.status_code == 403 and r.json()["title"] == "Forbidden"
    problem = r.json()["problems"][0]
    assert problem == {
        "field": "route",
        "value": f"POST /api/v1/studies/{STUDY}/trials/0/tell",
        "problem": "has no access rule",
        "fix": "add it to api.access.ROUTE_RULES",
        "source": None,
    }


def test_head_is_not_a_way_around(world):
    _, client, headers, _ = world
    for path in ("/api/v1/studies", f"/api/v1/studies/{STUDY}", "/api/v1/tokens"):
        assert client.head(path, headers=headers["none"]).status_code == 405, path  # never answered without its GET rule


def test_the_api_description_is_in_the_table_and_public_by_decision():
    """/openapi.json and the docs pages are FastAPI's own routes (no `authorize` on them):
    they are in the table as PUBLIC by decision (api.access), also when reads need a token
    (the matrix above calls them with every caller in both modes), and the app refuses to
    start if one of them loses its entry (below)."""
    docs = {("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")}
    assert {key: ROUTE_RULES[key] for key in docs} == dict.fromkeys(docs, access.PUBLIC)


def test_the_docs_routes_cannot_lose_their_rule(tmp_path, monkeypatch):
    table = dict(ROUTE_RULES)
    del table[("GET", "/openapi.json")]
    monkeypatch.setattr(access, "ROUTE_RULES", table)
    with pytest.raises(RuntimeError, match=r"routes without an access rule: GET /openapi\.json;"):
        create_app(Settings(storage=sqlite_db(tmp_path), run_studies=False))


def test_app_routes_reads_the_flat_route_list_of_older_fastapi(monkeypatch):
    """FastAPI before 0.16x has no iter_route_contexts and keeps every route, full path and
    all, in `app.routes`: app_routes must read that list (Starlette routes included)."""
    import fastapi.routing
    from starlette.routing import Mount, Route

    def endpoint():  # pragma: no cover - never called
        return None

    monkeypatch.delattr(fastapi.routing, "iter_route_contexts", raising=False)
    app = type("OldApp", (), {"routes": [Route("/api/v1/x", endpoint, methods=["GET", "POST"]), Mount("/static", routes=[])]})()
    assert app_routes(app) == [("GET", "/api/v1/x", endpoint), ("POST", "/api/v1/x", endpoint)]

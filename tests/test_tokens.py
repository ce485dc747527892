"""Tokens: scopes, owners, revocation (at once here, within token_cache_s elsewhere), `tuner
token` through a real subprocess, study ownership, /ready's details, and revision 0005 on a
populated revision-0004 database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
import warnings

import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.access import DEFAULT_SCOPES, Scope, format_scopes, parse_scopes
from api.auth import Principal, TokenVerifier, create_token, hash_token, list_tokens, revoke_token
from api.db import migrate
from api.db.engine import make_engine, make_session_factory
from api.main import create_app
from api.settings import Settings
from tests._api_support import ROOT, TINY_SPACE, new_token, pg_schema_db, sqlite_db
from tuner.errors import ValidationError

warnings.filterwarnings("ignore", category=DeprecationWarning)


def _app(url: str, **settings):
    return create_app(Settings(storage=url, run_studies=False, writer_process=False, sampler_process=False, **settings))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _create(client, headers, name="s1"):
    return client.post("/api/v1/studies", json={"name": name, "space": TINY_SPACE, "run": False, "n_trials": 10}, headers=headers)


# -- the scope model ---------------------------------------------------------------------------


def test_scopes_parse_format_and_admin_implies_all():
    assert parse_scopes("read create bogus") == {Scope.READ, Scope.CREATE}  # unknown words never grant
    assert parse_scopes("") == frozenset()
    assert format_scopes({Scope.READ, Scope.ADMIN}) == "admin read"
    assert format_scopes(DEFAULT_SCOPES) == "ask_tell create read"  # what revision 0005 gives old tokens
    admin = Principal("a", "a", frozenset({Scope.ADMIN}))
    assert all(admin.has(s) for s in Scope) and admin.is_admin
    reader = Principal("r", "r", frozenset({Scope.READ}))
    assert reader.has(Scope.READ) and not reader.has(Scope.ASK_TELL) and not reader.has(Scope.ADMIN) and not reader.is_admin


def test_create_token_checks_name_owner_and_scopes(tmp_path):
    url = sqlite_db(tmp_path)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            create_token(session, "ci")
            create_token(session, "ci-2", {"admin"}, owner="team")
            for bad in (dict(name="bad name"), dict(name=""), dict(name="ci"), dict(name="x", scopes={"root"}), dict(name="y", scopes=set()), dict(name="z", owner="no way")):
                with pytest.raises(ValidationError):
                    create_token(session, bad.pop("name"), **bad)
            for field, kwargs in (("name", dict(name="-x")), ("owner", dict(name="fine", owner="a/b"))):
                with pytest.raises(ValidationError) as caught:
                    create_token(session, **kwargs)
                problem = caught.value.problems[0]
                assert (problem.field, problem.value, problem.problem) == (field, kwargs[field], f"is not a valid {field}")
                assert problem.fix == "use 1-64 letters, digits, '_', '-' or '.'"
            for scopes, value, what, fix in (
                ({"root", "read", "x"}, ["root", "x"], "names unknown scopes", "use: read, ask_tell, create, admin"),
                (set(), [], "is empty", "give at least one of: read, ask_tell, create, admin"),
            ):
                with pytest.raises(ValidationError) as caught:
                    create_token(session, "scoped", scopes)
                problem = caught.value.problems[0]
                assert (problem.field, problem.value, problem.problem, problem.fix) == ("scopes", value, what, fix)
            with pytest.raises(ValidationError) as caught:
                create_token(session, "ci")
            problem = caught.value.problems[0]
            assert (problem.field, problem.value, problem.problem, problem.fix) == (
                "name", "ci", "is already used by another token", "pick another name or revoke the old token"
            )
            from api.auth import TOKEN_PREFIX
            from api.auth import new_token as fresh

            assert all(len(t) == len(TOKEN_PREFIX) + 43 and t.startswith("tnr_") for t in {fresh() for _ in range(20)})  # 32 random bytes
            for name in ("b-3", "a-4"):
                create_token(session, name)
            infos = {t.name: t for t in list_tokens(session)}
            assert list(infos) == ["ci", "ci-2", "b-3", "a-4"]  # in creation order
            assert infos["ci"].owner == "ci" and infos["ci"].scopes == DEFAULT_SCOPES
            assert infos["ci-2"].owner == "team" and infos["ci-2"].scopes == {Scope.ADMIN}
            assert revoke_token(session, "ci") and not revoke_token(session, "ci") and not revoke_token(session, "nope")
    finally:
        engine.dispose()


def test_authorization_header_forms(tmp_path):
    url = sqlite_db(tmp_path)
    token = new_token(url, "w")
    with TestClient(_app(url, read_requires_token=True)) as client:
        for ok in (f"Bearer {token}", f"bearer {token}", f"BEARER  {token} "):  # scheme case-insensitive, spaces tolerated
            assert client.get("/api/v1/workloads", headers={"Authorization": ok}).status_code == 200, ok
        for malformed in ("Basic abc", "Bearer", "Bearer ", token, f"Token {token}"):
            r = client.get("/api/v1/workloads", headers={"Authorization": malformed})
            assert r.status_code == 401, malformed
            problem = r.json()["problems"][0]
            assert r.json()["detail"] == "the Authorization header is not 'Bearer <token>'" == problem["problem"], malformed
            assert problem["fix"] == "send 'Authorization: Bearer <token>'" and r.headers["www-authenticate"] == "Bearer"
        r = client.get("/api/v1/workloads", headers={"Authorization": "Bearer tnr_nope"})
        assert r.status_code == 401 and r.json()["detail"] == "the bearer token is unknown or revoked"
        assert r.json()["problems"][0]["fix"] == "create one with `tuner token create --name NAME`"


def test_require_principal_refuses_none():
    """The defensive check behind WriterDep: unreachable through the table today (a rule that
    needs a token never lets None through), so it is called directly."""
    import asyncio

    from api.deps import require_principal
    from api.problems import ApiProblem

    with pytest.raises(ApiProblem) as caught:
        asyncio.run(require_principal(None))
    problem = caught.value
    assert problem.status == 401 and problem.title == "Unauthorized" and problem.headers == {"WWW-Authenticate": "Bearer"}
    assert problem.detail == "this endpoint needs a bearer token" and problem.problems[0].fix == "send 'Authorization: Bearer <token>'"
    principal = Principal("a", "a", DEFAULT_SCOPES)
    assert asyncio.run(require_principal(principal)) is principal


# -- revocation --------------------------------------------------------------------------------


def test_verifier_cache_bound_and_eviction(tmp_path):
    url = sqlite_db(tmp_path)
    token = new_token(url, "w")
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    try:
        verifier = TokenVerifier(sessions, cache_s=0.5)
        assert verifier.cached(token) is None
        assert verifier.verify(token) == Principal("w", "w", DEFAULT_SCOPES)
        assert verifier.cached(token) is not None
        assert verifier.verify("tnr_unknown") is None and verifier.cached("tnr_unknown") is None  # failures never cached
        with sessions() as session:
            revoke_token(session, "w")
            session.commit()
        assert verifier.verify(token) is not None  # another server's revocation: trusted until the entry expires...
        time.sleep(0.6)
        assert verifier.cached(token) is None and verifier.verify(token) is None  # ...and not a moment longer
        # eviction: immediate, and a verification that read the row before it does not put it back
        other = new_token(url, "v")
        assert verifier.verify(other) is not None
        verifier.evict("v")
        assert verifier.cached(other) is None
        verifier.evict("nobody")  # no such entry: nothing happens
    finally:
        engine.dispose()


def test_a_verification_racing_an_eviction_is_not_cached(tmp_path):
    url = sqlite_db(tmp_path)
    token = new_token(url, "w")
    engine = make_engine(url)
    try:
        verifier = TokenVerifier(make_session_factory(engine), cache_s=60)
        verifier.evict("someone-else")  # an earlier eviction: every eviction must count, not only the first
        real_sessions = verifier._sessions

        def sessions_then_evict():  # the row is read, then the token is revoked and evicted
            verifier.evict("w")
            return real_sessions()

        verifier._sessions = sessions_then_evict
        assert verifier.verify(token) is not None
        assert verifier.cached(token) is None
    finally:
        engine.dispose()


def test_revocation_is_immediate_on_the_revoking_server_and_bounded_on_another(tmp_path):
    url = sqlite_db(tmp_path)
    admin = _bearer(new_token(url, "root", scopes={"admin"}))
    worker = _bearer(new_token(url, "w"))
    with TestClient(_app(url, token_cache_s=1.0)) as a, TestClient(_app(url, token_cache_s=1.0)) as b:
        assert _create(a, worker).status_code == 201
        assert b.post("/api/v1/studies/s1/ask", headers=worker).status_code == 200  # b caches the token
        assert a.post("/api/v1/studies/s1/ask", headers=worker).status_code == 200  # so does a
        assert a.delete("/api/v1/tokens/w", headers=admin).status_code == 204
        revoked_at = time.monotonic()
        r = a.post("/api/v1/studies/s1/ask", headers=worker)
        assert r.status_code == 401 and "revoked" in r.json()["detail"]  # at once, on the server that revoked
        while b.post("/api/v1/studies/s1/ask", headers=worker).status_code != 401:
            assert time.monotonic() - revoked_at < 1.0 + 0.5, "the other server accepted a revoked token past token_cache_s"
            time.sleep(0.05)
        gone = a.delete("/api/v1/tokens/w", headers=admin)  # already revoked: 404 naming the token and the fix
        assert (gone.status_code, gone.json()["detail"], gone.json()["problems"]) == (404, "no active token 'w'", [
            {"field": "name", "value": "w", "problem": "no such active token", "fix": "list tokens with GET /api/v1/tokens", "source": None}
        ])
        listed = {t["name"]: t for t in a.get("/api/v1/tokens", headers=admin).json()}
        assert listed["w"]["revoked_at"] is not None and listed["root"]["scopes"] == ["admin"]
        assert "token" not in listed["w"] and all(hash_token("") not in str(t) for t in listed.values())


def test_tokens_api_creates_a_usable_token_once(tmp_path):
    url = sqlite_db(tmp_path)
    admin = _bearer(new_token(url, "root", scopes={"admin"}))
    with TestClient(_app(url)) as client:
        r = client.post("/api/v1/tokens", json={"name": "ci", "scopes": ["ask_tell", "read"], "owner": "team"}, headers=admin)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["scopes"] == ["ask_tell", "read"] and body["owner"] == "team" and body["token"].startswith("tnr_")
        assert client.post("/api/v1/tokens", json={"name": "ci"}, headers=admin).status_code == 422  # name taken
        assert client.post("/api/v1/tokens", json={"name": "x", "scopes": ["root"]}, headers=admin).status_code == 422
        assert _create(client, _bearer(body["token"])).status_code == 403  # no create scope
        assert client.get("/api/v1/studies", headers=_bearer(body["token"])).status_code == 200


# -- ownership ---------------------------------------------------------------------------------


def test_only_the_owner_or_an_admin_stops_resumes_or_deletes(tmp_path):
    url = sqlite_db(tmp_path)
    alice, bob = _bearer(new_token(url, "alice")), _bearer(new_token(url, "bob"))
    alice_ci = _bearer(new_token(url, "alice-ci", owner="alice"))  # another token of the same owner
    admin = _bearer(new_token(url, "root", scopes={"admin"}))
    with TestClient(_app(url)) as client:
        assert _create(client, alice).status_code == 201
        for method, path in (("POST", "/api/v1/studies/s1/stop"), ("POST", "/api/v1/studies/s1/resume"), ("DELETE", "/api/v1/studies/s1")):
            r = client.request(method, path, headers=bob)
            assert r.status_code == 403, r.text
            assert "owner 'alice'" in r.json()["detail"] and r.json()["problems"][0]["field"] == "name"
        assert client.get("/api/v1/studies/s1").json()["state"] == "ask_tell"  # bob changed nothing
        assert client.post("/api/v1/studies/s1/ask", headers=bob).status_code == 200  # ask/tell is not owner-only
        assert client.post("/api/v1/studies/s1/stop", headers=alice).json()["state"] == "stopped"
        assert client.post("/api/v1/studies/s1/resume", headers=alice_ci).json()["state"] == "ask_tell"
        assert client.post("/api/v1/studies/s1/stop", headers=admin).json()["state"] == "stopped"
        assert client.delete("/api/v1/studies/s1", headers=bob).status_code == 403
        assert client.delete("/api/v1/studies/s1", headers=alice_ci).status_code == 204
        assert client.delete("/api/v1/studies/s1", headers=bob).status_code == 404  # gone: nothing to protect
        # the admin deletes anyone's study
        assert _create(client, bob, "s2").status_code == 201
        assert client.delete("/api/v1/studies/s2", headers=admin).status_code == 204


def test_a_study_without_owner_is_admin_only(tmp_path):
    url = sqlite_db(tmp_path)
    optuna.create_study(study_name="from-cli", storage=url)  # a CLI study: no owner, not yet adopted
    user, admin = _bearer(new_token(url, "alice")), _bearer(new_token(url, "root", scopes={"admin"}))
    with TestClient(_app(url)) as client:
        r = client.delete("/api/v1/studies/from-cli", headers=user)  # before anything listed it
        assert r.status_code == 403
        assert r.json()["detail"] == (
            "study 'from-cli' has no owner (created before owners were recorded, or outside the service); token 'alice' acts for 'alice'"
        )
        assert r.json()["problems"][0]["fix"] == "use a token of the study's owner, or an admin token"
        assert client.get("/api/v1/studies/from-cli").status_code == 200  # adopted: a row with no owner
        assert client.delete("/api/v1/studies/from-cli", headers=user).status_code == 403
        assert client.delete("/api/v1/studies/from-cli", headers=admin).status_code == 204


# -- /ready ------------------------------------------------------------------------------------


def test_ready_tells_anonymous_callers_up_or_down_only(tmp_path):
    url = sqlite_db(tmp_path)
    admin, user = _bearer(new_token(url, "root", scopes={"admin"})), _bearer(new_token(url, "alice"))
    with TestClient(_app(url, read_requires_token=True)) as client:
        for headers in ({}, user, _bearer("tnr_wrong")):
            r = client.get("/api/v1/ready", headers=headers)
            assert r.status_code == 200 and r.json() == {"ready": True}, r.text
            assert "sqlite" not in r.text and "tuner.db" not in r.text
        detail = client.get("/api/v1/ready", headers=admin).json()
        assert detail["ready"] is True and detail["schema_revision"] == migrate.head_revision() and "tuner.db" in detail["database"]
        assert detail["detail"] is None  # nothing to fix
    # an outdated schema: 503, still without details for anonymous callers; the admin (its
    # token verified before the downgrade, cached) is told the revisions and the fix
    with TestClient(_app(url, token_cache_s=60)) as client:
        from alembic import command

        assert client.get("/api/v1/ready", headers=admin).status_code == 200
        command.downgrade(migrate.alembic_config(url), "0004")
        r = client.get("/api/v1/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        r = client.get("/api/v1/ready", headers=admin)
        need = migrate.head_revision()
        assert (r.status_code, r.json()) == (503, {
            "ready": False, "database": url, "schema_revision": "0004",
            "detail": f"schema revision 0004, need {need}: run `tuner db upgrade`",
        })
        # a database that cannot be opened at all (its file replaced by a directory): 503
        # naming the driver error's type, for the admin only
        db_file = tmp_path / "tuner.db"
        db_file.rename(tmp_path / "moved.db")
        db_file.mkdir()
        r = client.get("/api/v1/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        r = client.get("/api/v1/ready", headers=admin)
        assert (r.status_code, r.json()) == (503, {
            "ready": False, "database": url, "schema_revision": None, "detail": "database unreachable: OperationalError",
        })


# -- tuner token, through the real CLI ---------------------------------------------------------


def _tuner(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tuner.cli.main", "token", *args], capture_output=True, text=True, env=env, timeout=120)


def test_tuner_token_create_list_revoke_cli(tmp_path):
    url = sqlite_db(tmp_path)
    made = _tuner("create", "--name", "ci", "--scope", "ask_tell", "--scope", "read", "--owner", "team", "--storage", url)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("tnr_") and len(token) > 40
    default = _tuner("create", "--name", "dev", "--storage", url)
    assert default.returncode == 0, default.stderr
    listed = _tuner("list", "--storage", url)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert lines["ci"][1] == "team" and lines["ci"][2:4] == ["ask_tell", "read"] and lines["ci"][-1] == "-"
    assert lines["dev"][1] == "dev" and lines["dev"][2:5] == ["ask_tell", "create", "read"]
    assert token not in listed.stdout and hash_token(token) not in listed.stdout
    with TestClient(_app(url, token_cache_s=0)) as client:
        assert client.post("/api/v1/studies/x/ask", headers=_bearer(token)).status_code == 404  # valid token, no study
        assert _create(client, _bearer(token)).status_code == 403  # no create scope
        revoked = _tuner("revoke", "--name", "ci", "--storage", url)
        assert revoked.returncode == 0 and "revoked ci" in revoked.stdout
        assert client.post("/api/v1/studies/x/ask", headers=_bearer(token)).status_code == 401
    again = _tuner("revoke", "--name", "ci", "--storage", url)
    assert again.returncode == 1 and "no active token named 'ci'" in again.stdout
    assert _tuner("list", "--storage", url).stdout.splitlines()[1].split()[-2] != "-"  # revoked date shown
    taken = _tuner("create", "--name", "ci", "--storage", url)
    assert taken.returncode == 1 and "already used" in taken.stdout
    assert _tuner("create", "--storage", url).returncode == 2
    assert _tuner("revoke", "--name", "dev", "--scope", "read", "--storage", url).returncode == 2
    bad = _tuner("create", "--name", "x", "--scope", "root", "--storage", url)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# -- revision 0005 -----------------------------------------------------------------------------


def _check_0005_on_a_populated_0004_database(url: str) -> None:
    from alembic import command

    migrate.upgrade(url, "0004")
    optuna.create_study(study_name="old-s", storage=url)
    engine = sa.create_engine(url)
    now = datetime.datetime(2025, 1, 1)
    token = "tnr_an-old-token"
    try:
        with engine.begin() as conn:
            for name, digest, revoked in (("ci", hash_token(token), None), ("gone", "x" * 64, now)):
                conn.execute(
                    sa.text("INSERT INTO tuner_api_tokens (name, token_hash, created_at, revoked_at) VALUES (:n, :h, :t, :r)"),
                    {"n": name, "h": digest, "t": now, "r": revoked},
                )
            conn.execute(
                sa.text(
                    "INSERT INTO tuner_studies (name, workload, mode, state, created_by, created_at, updated_at) "
                    "VALUES ('old-s', 'external', 'ask_tell', 'ask_tell', 'ci', :t, :t)"
                ),
                {"t": now},
            )
        migrate.upgrade(url, "head")
        assert migrate.current_revision(url) == "0005" and migrate.schema_differences(url) == []
        with engine.begin() as conn:
            rows = {r.name: r for r in conn.execute(sa.text("SELECT name, owner, scopes, revoked_at FROM tuner_api_tokens"))}
        assert rows["ci"].owner == "ci" and parse_scopes(rows["ci"].scopes) == DEFAULT_SCOPES
        assert rows["gone"].owner == "gone" and rows["gone"].revoked_at is not None
        # the old token works as before, and still owns the study it created
        other = new_token(url, "other")
        with TestClient(_app(url)) as client:
            assert client.post("/api/v1/studies/old-s/stop", headers=_bearer(other)).status_code == 403
            assert client.post("/api/v1/studies/old-s/stop", headers=_bearer(token)).status_code == 200
            assert client.post("/api/v1/studies/old-s/resume", headers=_bearer(token)).status_code == 200
        # down to 0004 (columns dropped, tokens kept) and up again
        command.downgrade(migrate.alembic_config(url), "0004")
        with engine.begin() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("tuner_api_tokens")}
            assert "scopes" not in columns and "owner" not in columns
            assert conn.execute(sa.text("SELECT count(*) FROM tuner_api_tokens")).scalar_one() == 3
        migrate.upgrade(url, "head")
        assert migrate.schema_differences(url) == []
    finally:
        engine.dispose()


def test_revision_0005_on_a_populated_sqlite_database(tmp_path):
    _check_0005_on_a_populated_0004_database(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_revision_0005_on_a_populated_postgres_database():
    with pg_schema_db() as url:
        _check_0005_on_a_populated_0004_database(url)

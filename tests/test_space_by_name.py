"""Spaces by name over REST, space files through the client, and an error whose fix is a
working example (issue 12)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.services.space_io import parse_space
from api.settings import Settings
from tests._api_support import new_token, sqlite_db
from tuner.client import TunerClient
from tuner.errors import ValidationError
from tuner.space.search_space import load_preset


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    url = sqlite_db(tmp_path_factory.mktemp("spaces"))
    app = create_app(Settings(storage=url, run_studies=False, writer_process=False, sampler_process=False))
    token = new_token(url)
    with TestClient(app) as http:
        yield http, {"Authorization": f"Bearer {token}"}, TunerClient("http://testserver", token, transport=http._transport)


def test_a_preset_name_is_a_space_and_a_path_never_is(service):
    http, headers, _ = service
    r = http.post("/api/v1/studies", json={"name": "by-name", "space": "gpt_tiny_system", "run": False}, headers=headers)
    assert r.status_code == 201, r.text
    preset = load_preset("gpt_tiny_system")
    assert r.json()["spec"]["space"] == preset.to_dict() and r.json()["workload"] == preset.workload
    for path in ("search_spaces/gpt_tiny_system.yaml", "/etc/passwd", "../gpt_tiny_system"):
        refused = http.post("/api/v1/studies", json={"name": "by-path", "space": path, "run": False}, headers=headers)
        assert refused.status_code == 422, (path, refused.text)
        problem = refused.json()["problems"][0]
        assert problem["field"] == "space" and "gpt_tiny_system" in problem["fix"]  # names the presets


def test_the_fix_of_a_space_that_is_not_a_mapping_is_itself_a_valid_space(service):
    http, headers, _ = service
    refused = http.post("/api/v1/studies", json={"name": "bad", "space": "just words", "run": False}, headers=headers)
    assert refused.status_code == 422
    fix = refused.json()["problems"][0]["fix"]
    example = fix.split("e.g. ", 1)[1]
    space = parse_space(example)  # the example as written, parsed and validated
    assert {p.name for p in space.params} == {"micro_batch_size", "learning_rate"}
    assert http.post("/api/v1/studies", json={"name": "fixed", "space": example, "run": False}, headers=headers).status_code == 201


def test_the_client_reads_space_files_from_the_working_directory_and_names_a_missing_one(service, tmp_path, monkeypatch):
    _, _, client = service
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "mine.yaml").write_text("name: mine\nparams:\n  micro_batch_size: {type: int, low: 1, high: 8}\n")
    assert client.create_study("from-file", "spaces/mine.yaml", run=False).info().raw["spec"]["space"]["name"] == "mine"
    with pytest.raises(ValidationError) as missing:
        client.create_study("missing", "spaces/nope.yaml", run=False)
    assert missing.value.problems[0].problem == f"file not found: {tmp_path.resolve() / 'spaces' / 'nope.yaml'}"
    assert client.create_study("preset", "gpt_tiny_system", run=False).name == "preset"  # a name goes to the server

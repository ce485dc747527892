"""`tuner serve --executor local --executor ray --ray-address ADDR` end to end: a real server
(subprocess) joins a real Ray cluster by its address, REST studies pick an executor by
name, the Ray study's trials run on that cluster (each result names its Ray node) and its
REST answers, dashboard JSON and exports have the same shape as the local study's.

The cluster is a private single-node Ray instance of this test process, on 127.0.0.1;
the server joins it by address as any second driver would (Ray on Linux rewrites
127.0.0.1 to the machine's address when joining unless `connect_ray` keeps it on
loopback: without that the server's study waits forever for the GCS). The workload is
the replay table: trials take milliseconds, so the test measures the plumbing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests._api_support import GPT_TABLE, REPLAY_SPACE, LiveServer, new_token, sqlite_db

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]
ray = pytest.importorskip("ray")

from tuner.executors.ray_cluster import connect_ray, disconnect_ray  # noqa: E402

N_TRIALS = 3


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    if not GPT_TABLE.exists():
        pytest.skip(f"needs the measured H200 table {GPT_TABLE}")
    assert not ray.is_initialized(), "another test left a Ray session open in this process"
    connection = connect_ray(None, num_cpus=2, object_store_memory=80 * 2**20)
    try:
        yield {"address": connection.address, "node_ids": {n["NodeID"] for n in ray.nodes() if n["Alive"]}}
    finally:
        disconnect_ray(connection)


@pytest.fixture(scope="module")
def served(cluster, tmp_path_factory) -> Iterator[tuple[httpx.Client, str]]:
    url = sqlite_db(tmp_path_factory.mktemp("serve-ray"))
    server = LiveServer(
        url, "--executor", "local", "--executor", "ray", "--ray-address", cluster["address"], "--max-running-studies", "2"
    ).start()
    try:
        with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {new_token(url)}"}, timeout=30) as client:
            yield client, url
    finally:
        server.stop()


def _run(client: httpx.Client, names: dict[str, str | None]) -> dict[str, dict]:
    """Create the studies (name -> executor, None: the server's default), wait for all."""
    for name, executor in names.items():
        body = {
            "name": name, "space": REPLAY_SPACE, "workload": "replay", "workload_params": {"table": "gpt_124m"},
            "n_trials": N_TRIALS, "sampler": "random", "seed": 7, "use_generator": False,
        } | ({"executor": executor} if executor else {})
        made = client.post("/api/v1/studies", json=body)
        assert made.status_code == 201, made.text
    done: dict[str, dict] = {}
    deadline = time.monotonic() + 90
    while len(done) < len(names) and time.monotonic() < deadline:
        for name in set(names) - set(done):
            answer = client.get(f"/api/v1/studies/{name}").json()
            if answer["state"] not in ("queued", "running"):
                done[name] = answer
        time.sleep(0.2)
    assert set(done) == set(names), f"studies still running after 90 s: {set(names) - set(done)}"
    return done


def _shape(value: Any) -> Any:
    """The structure of a JSON document: keys and value types, not the values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _without_nodes(trial: dict) -> dict:
    telemetry = {k: v for k, v in (trial.get("telemetry") or {}).items() if k != "nodes"}
    return {**trial, "telemetry": telemetry}


def test_a_rest_study_on_the_ray_executor_runs_on_the_cluster_like_a_local_one(served, cluster) -> None:
    client, _url = served
    studies = _run(client, {"on-ray": "ray", "on-local": None})
    for name, answer in studies.items():
        assert answer["state"] == "completed", (name, answer["reason"])
        assert answer["progress"]["complete"] + answer["progress"]["failed"] == N_TRIALS, (name, answer["progress"])
    assert studies["on-ray"]["spec"]["executor"] == "ray"
    assert studies["on-local"]["spec"]["executor"] == "local"  # the first executor offered

    trials = {name: client.get(f"/api/v1/studies/{name}/trials").json()["items"] for name in studies}
    assert "ok" in [t["status"] for t in trials["on-ray"]]
    # every Ray trial ran on the cluster's node (Ray's own node id), none in the server
    for trial in trials["on-ray"]:
        nodes = trial["telemetry"]["nodes"]
        assert [n["rank"] for n in nodes] == [0] and nodes[0]["node_id"] in cluster["node_ids"], nodes
        assert nodes[0]["node_ip"] == "127.0.0.1"
    assert all("nodes" not in (t["telemetry"] or {}) for t in trials["on-local"])
    # same seed, same sampler, same table: the same configs and measurements either way
    assert [t["config"] for t in trials["on-ray"]] == [t["config"] for t in trials["on-local"]]
    assert [(t["status"], t["values"]) for t in trials["on-ray"]] == [(t["status"], t["values"]) for t in trials["on-local"]]

    # the same documents, in the same shape, wherever the trials ran
    ray_trial, local_trial = trials["on-ray"][0], trials["on-local"][0]
    assert _shape(_without_nodes(ray_trial)) == _shape(_without_nodes(local_trial))
    for path in ("", "/best", "/best?raw=true"):
        ray_doc = client.get(f"/api/v1/studies/on-ray{path}").json()
        local_doc = client.get(f"/api/v1/studies/on-local{path}").json()
        for doc in (ray_doc, local_doc):  # names and times differ by design
            for key in ("name", "study", "created_at", "updated_at", "spec"):
                if isinstance(doc, dict):
                    doc.pop(key, None)
        assert _shape(ray_doc) == _shape(local_doc), path
    dash = "/api/v1/dashboard/studies"
    for path in ("", "/charts", "/trials", "/trials/0"):
        ray_doc, local_doc = client.get(f"{dash}/on-ray{path}").json(), client.get(f"{dash}/on-local{path}").json()
        if path == "/trials/0":
            assert ray_doc["telemetry"]["nodes"][0]["node_id"] in cluster["node_ids"]
            ray_doc, local_doc = _without_nodes(ray_doc), _without_nodes(local_doc)
        assert _shape(ray_doc) == _shape(local_doc), path
    for fmt in ("yaml", "json", "torch"):
        ray_text = client.get(f"{dash}/on-ray/export?format={fmt}").text
        local_text = client.get(f"{dash}/on-local/export?format={fmt}").text
        assert ray_text.replace("on-ray", "STUDY") == local_text.replace("on-local", "STUDY"), fmt

"""Choosing where trials run: executor choices (CLI, server, REST), per-node placement,
and the communication knobs that reach each rank's environment.

The multi-host behaviour itself (a real Ray cluster and PostgreSQL across network
namespaces) is in tests/test_multihost_ray.py and tests/test_multihost_workers.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import warnings

import pytest
from fastapi.testclient import TestClient

from api.cli.cmd_serve import executor_settings
from api.cli.cmd_serve import register as register_serve
from api.main import create_app
from api.settings import Settings
from tests._api_support import TINY_SPACE, new_token, sqlite_db
from tuner.errors import ValidationError
from tuner.executors.choice import ExecutorChoice
from tuner.executors.ray_nodes import NodeInfo, plan_placement
from tuner.knobs import comm_environment
from tuner.study.scaling import check_world_sizes, scaling_points
from tuner.types import TrialConfig, TrialResult, TrialStatus

warnings.filterwarnings("ignore", category=DeprecationWarning)

RAY_ADDRESS = "10.231.9.9:6379"


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_serve(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    url = sqlite_db(tmp_path_factory.mktemp("executors"))
    offered = executor_settings(_serve_args("--executor", "local", "--executor", "ray", "--ray-address", RAY_ADDRESS))
    app = create_app(Settings(storage=url, run_studies=False, executors=offered))
    token = new_token(url)
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {token}"}


def _create(client, headers, **body):
    payload = {"name": "s1", "space": TINY_SPACE, "workload": "gpt", "run": True, "n_trials": 2} | body
    return client.post("/api/v1/studies", json=payload, headers=headers)


def test_a_rest_study_picks_one_of_the_servers_executors_by_name(server) -> None:
    client, headers = server
    made = _create(client, headers, executor="ray")
    assert made.status_code == 201, made.text
    assert made.json()["spec"]["executor"] == "ray"
    default = _create(client, headers, name="s2")
    assert default.status_code == 201 and default.json()["spec"]["executor"] == "local"  # the first offered


@pytest.mark.parametrize("executor", [RAY_ADDRESS, "ray://10.0.0.1:10001", "gpu-farm", "os:system"])
def test_a_rest_study_cannot_name_an_address_or_an_unknown_executor(server, executor) -> None:
    client, headers = server
    r = _create(client, headers, name="refused", executor=executor)
    assert r.status_code == 422, r.text
    problem = next(p for p in r.json()["problems"] if p["field"] == "executor")
    assert problem["value"] == executor and "local, ray" in problem["fix"]
    assert client.get("/api/v1/studies/refused").status_code == 404  # nothing half-written


def test_server_executor_options_are_checked() -> None:
    assert executor_settings(_serve_args()) == {"local": {"kind": "local"}}
    offered = executor_settings(_serve_args("--executor", "cluster=ray", "--ray-address", "auto", "--gpus-per-rank", "1"))
    assert offered == {
        "cluster": {"kind": "ray", "ray_address": "auto", "cpus_per_rank": 1.0, "gpus_per_rank": 1.0, "placement": "PACK"}
    }
    with pytest.raises(ValidationError, match="--ray-address"):
        executor_settings(_serve_args("--ray-address", "auto"))
    with pytest.raises(ValidationError, match="twice"):
        executor_settings(_serve_args("--executor", "ray", "--executor", "ray"))
    with pytest.raises(ValidationError, match="executor='slurm'"):
        executor_settings(_serve_args("--executor", "slurm"))


def test_cli_refuses_a_ray_address_without_the_ray_executor(tmp_path) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "tuner", "tune", "gpt_tiny_system", "--ray-address", "10.0.0.1:6379", "--trials", "1",
         "--storage", f"sqlite:///{tmp_path / 't.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert ran.returncode == 2, ran.stderr
    assert "--ray-address" in ran.stderr and "--executor ray" in ran.stderr
    assert not (tmp_path / "t.db").exists() or "study" not in ran.stdout


def test_executor_choice_names_the_bad_field() -> None:
    with pytest.raises(ValidationError, match="--placement"):
        ExecutorChoice(kind="ray", placement="pack")
    with pytest.raises(ValidationError, match="--cpus-per-rank"):
        ExecutorChoice(kind="ray", cpus_per_rank=-1)
    assert ExecutorChoice(kind="ray").describe() == {"name": "ray", "kind": "ray"}


def _node(name: str, cpus: float, gpus: float = 0) -> NodeInfo:
    return NodeInfo(node_id=f"id-{name}", address=name, resources={"CPU": cpus, "GPU": gpus})


def test_placement_is_decided_per_node_not_from_cluster_totals() -> None:
    rank = {"cpu": 2, "gpu": 1}
    nodes = [_node("10.0.0.1", 8, 4), _node("10.0.0.2", 8, 4)]
    assert plan_placement(rank, 4, "PACK", nodes).strategy == "PACK"  # one node holds all 4
    spanning = plan_placement(rank, 6, "PACK", nodes)
    assert spanning.strategy == "SPREAD" and "spans nodes" in spanning.note
    assert plan_placement(rank, 2, "STRICT_SPREAD", nodes).strategy == "STRICT_SPREAD"
    refused = plan_placement(rank, 3, "STRICT_SPREAD", nodes)
    assert refused.strategy is None and "needs 3 nodes" in refused.refused
    # 3 CPUs per rank: cluster totals (16 CPUs) would say 5 fit; per node only 2 x 2 do
    too_wide = plan_placement({"cpu": 3}, 5, "PACK", [_node("10.0.0.1", 8), _node("10.0.0.2", 8)])
    assert too_wide.strategy is None and "hold 4" in too_wide.refused and "10.0.0.2: 2" in too_wide.refused


def test_comm_knobs_become_nccl_environment() -> None:
    assert comm_environment(TrialConfig()) == {}
    assert comm_environment(TrialConfig(world_size=2, nccl_algo="tree", nccl_proto="ll128")) == {
        "NCCL_ALGO": "Tree",
        "NCCL_PROTO": "LL128",
    }
    with pytest.raises(ValidationError, match="nccl_algo"):
        TrialConfig(nccl_algo="butterfly")


def test_scaling_reports_speedup_and_efficiency_against_world_size_one() -> None:
    def ok(rate: float, *ips: str) -> TrialResult:
        nodes = [{"rank": r, "node_ip": ip} for r, ip in enumerate(ips)]
        return TrialResult(status=TrialStatus.OK, items_per_s=rate, telemetry={"nodes": nodes})

    points = scaling_points(
        {1: ok(1000.0, "a"), 2: ok(1800.0, "a", "b"), 4: ok(2800.0, "a", "a", "b", "b"),
         8: TrialResult.failed("config.world_size: world_size=8 needs 8 ranks")}
    )
    by_size = {p.world_size: p for p in points}
    assert by_size[2].speedup == pytest.approx(1.8) and by_size[2].efficiency == pytest.approx(0.9)
    assert by_size[4].speedup == pytest.approx(2.8) and by_size[4].efficiency == pytest.approx(0.7)  # the guide's 70 %
    assert by_size[4].nodes == ("a", "b")
    assert by_size[8].speedup is None and by_size[8].status == "failed" and "world_size=8" in by_size[8].reason
    no_reference = scaling_points({1: TrialResult.failed("oom"), 2: ok(1800.0, "a")})
    assert no_reference[1].speedup is None and no_reference[1].items_per_s == 1800.0
    with pytest.raises(ValidationError, match="include 1"):
        check_world_sizes([2, 4])


def test_the_server_runs_a_study_on_the_executor_it_names_and_refuses_one_it_does_not_offer(tmp_path) -> None:
    from api.runtime.study_runner import StudyRunner
    from tuner.executors.local import LocalExecutor
    from tuner.space.search_space import load_space
    from tuner.study.spec import StudySpec

    spec = StudySpec(name="s", workload="gpt", space=load_space("gpt_tiny_system"), device="cpu")
    runner = StudyRunner(Settings(storage=f"sqlite:///{tmp_path / 'x.db'}"), sessions=None, storage=None)  # type: ignore[arg-type]
    with runner._executor_for(spec) as executor:  # the default offer: local
        assert isinstance(executor, LocalExecutor)
    on_ray = dataclasses.replace(spec, executor="ray")
    with pytest.raises(ValueError, match="executor 'ray', which this server does not offer"):
        runner._executor_for(on_ray)


def test_heartbeat_grace_is_a_checked_study_setting_from_the_cli() -> None:
    from tuner.cli.cmd_tune import build_spec
    from tuner.cli.cmd_tune import register as register_tune
    from tuner.study.recovery import heartbeat_interval_s
    from tuner.study.spec import DEFAULT_HEARTBEAT_GRACE_S, StudySpec

    parser = argparse.ArgumentParser()
    register_tune(parser.add_subparsers())
    spec = build_spec(parser.parse_args(["tune", "gpt_tiny_system", "--heartbeat-grace", "12"]))
    assert spec.heartbeat_grace_s == 12 and heartbeat_interval_s(12) == 2
    assert StudySpec.from_dict(spec.to_dict()).heartbeat_grace_s == 12  # stored with the study, read by workers
    default = build_spec(parser.parse_args(["tune", "gpt_tiny_system"]))
    assert default.heartbeat_grace_s == DEFAULT_HEARTBEAT_GRACE_S <= 30  # seconds to recover, not minutes
    stored_before = {k: v for k, v in default.to_dict().items() if k != "heartbeat_grace_s"}
    assert StudySpec.from_dict(stored_before).heartbeat_grace_s == DEFAULT_HEARTBEAT_GRACE_S  # older studies
    for bad in (0.5, float("inf"), "10", True):
        with pytest.raises(ValidationError, match="heartbeat_grace_s"):
            dataclasses.replace(default, heartbeat_grace_s=bad)


def test_a_resumed_study_keeps_its_heartbeat_grace_unless_the_command_line_sets_one(tmp_path) -> None:
    import optuna

    from tuner.cli.cmd_tune import build_spec, keep_resumed_settings
    from tuner.cli.cmd_tune import register as register_tune
    from tuner.study.attrs import StudyAttr
    from tuner.study.spec import DEFAULT_HEARTBEAT_GRACE_S

    parser = argparse.ArgumentParser()
    register_tune(parser.add_subparsers())
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    argv = ["tune", "gpt_tiny_system", "--study", "kept", "--storage", storage]
    created = build_spec(parser.parse_args([*argv, "--heartbeat-grace", "5"]))
    study = optuna.create_study(study_name="kept", storage=storage)
    study.set_user_attr(StudyAttr.SPEC, created.to_dict())

    resumed = parser.parse_args(argv)  # no --heartbeat-grace: the study's 5 s, not the default
    assert keep_resumed_settings(resumed, build_spec(resumed)).heartbeat_grace_s == 5
    again = parser.parse_args([*argv, "--heartbeat-grace", "9"])  # given again: this run's value
    assert keep_resumed_settings(again, build_spec(again)).heartbeat_grace_s == 9
    new = parser.parse_args(["tune", "gpt_tiny_system", "--study", "new", "--storage", storage])
    assert keep_resumed_settings(new, build_spec(new)).heartbeat_grace_s == DEFAULT_HEARTBEAT_GRACE_S


def test_a_two_rank_gpu_trial_on_ray_gets_nccl_its_own_gpu_and_the_comm_environment() -> None:
    """What each rank of a world_size=2 GPU trial is given on a Ray cluster, checked without
    a GPU: NCCL, the GPU Ray assigned it (cuda:0 under Ray's CUDA_VISIBLE_DEVICES, Ray's id
    where Ray leaves the variable alone), NCCL_ALGO/NCCL_PROTO and the node's interface."""
    from tuner.executors.ray_ranks import gpu_share_problem, rank_device, rank_environment
    from tuner.trial.distributed.rank_spec import process_group_backend
    from tuner.trial.distributed.remote import placed_rank_spec
    from tuner.trial_request import TrialRequest
    from tuner.types import TrialBudget
    from tuner.workloads import get_workload

    workload = get_workload("gpt")
    config = TrialConfig(world_size=2, nccl_algo="tree", nccl_proto="ll128")
    request = TrialRequest(trial_number=0, workload="gpt", params=workload.resolve_params({}), config=config,
                           budget=TrialBudget(max_steps=2, warmup_steps=1), device="cuda")
    assert gpu_share_problem({"cpu": 4, "gpu": 1}, 2) is None
    for sets_visible, gpu_ids, expected in ((True, (["3"], ["5"]), [0, 0]), (False, (["3"], ["5"]), [3, 5])):
        specs = []
        for rank, ids in enumerate(gpu_ids):
            device_type, index = rank_device(request.device, ids, ray_sets_visible_devices=sets_visible)
            env = rank_environment(comm_environment(config), "eth1", {"NCCL_SOCKET_IFNAME": "ib0"})
            specs.append(placed_rank_spec(
                workload, request, store_host="10.0.0.1", store_port=29500, device_type=device_type,
                device_index=index, cpu_threads=None, comm_env=sorted(env.items()), timeout_s=60, owner_pid=rank + 1,
            ))
        assert [process_group_backend(s.device_type) for s in specs] == ["nccl", "nccl"]
        assert [s.device_index for s in specs] == expected  # never both ranks on one GPU
        for spec in specs:
            assert dict(spec.comm_env) == {
                "NCCL_ALGO": "Tree", "NCCL_PROTO": "LL128",
                "NCCL_SOCKET_IFNAME": "ib0",  # the node's own choice wins
                "GLOO_SOCKET_IFNAME": "eth1",
            }
            assert spec.store_host == "10.0.0.1" and spec.cpu_threads is None
            assert spec.total_peak_flops is None
    # a CUDA study whose ranks got no GPU fails with the fix, instead of training on CPUs
    with pytest.raises(ValueError, match="--gpus-per-rank 1"):
        rank_device("cuda", [], ray_sets_visible_devices=True)
    assert rank_device("auto", [], ray_sets_visible_devices=True) == ("cpu", None)
    assert rank_device("cpu", ["0"], ray_sets_visible_devices=True) == ("cpu", None)
    assert process_group_backend("cpu") == "gloo"
    # ranks of one trial never share a GPU (NCCL: duplicate GPU)
    assert "gpus_per_rank=0.5" in (gpu_share_problem({"cpu": 1, "gpu": 0.5}, 2) or "")
    assert gpu_share_problem({"cpu": 1, "gpu": 0.5}, 1) is None


def test_a_rest_study_sets_its_heartbeat_grace_and_a_too_short_one_is_refused(server) -> None:
    client, headers = server
    made = _create(client, headers, name="grace-ok", run=False, heartbeat_grace_s=12)
    assert made.status_code == 201, made.text
    spec = client.get("/api/v1/studies/grace-ok", headers=headers).json()["spec"]
    refused = _create(client, headers, name="grace-bad", heartbeat_grace_s=0.5)
    assert refused.status_code == 422 and "heartbeat_grace_s" in refused.text, refused.text
    assert client.get("/api/v1/studies/grace-bad", headers=headers).status_code == 404  # nothing created
    assert spec["heartbeat_grace_s"] == 12  # stored with the study: its workers read it

"""A real two-node Ray cluster on two network-namespace hosts, driven by `tuner tune`.

Host A (10.231.0.1) runs the Ray head and the study (`tuner tune --executor ray
--ray-address 10.231.0.1:6379`), host B (10.231.0.2) a Ray worker node; each node has one
CPU, so a world_size=2 trial can only run with one rank on each host. One cluster for the
module (starting it costs ~20 s on 2 cores). Shown here:

- single-rank trials of one study run on both nodes, each trial records its node;
- a world_size=2 gloo trial spans both hosts and its result names both;
- killing host B's raylet mid-trial fails that trial with B named, and the study
  finishes on A (the next two-rank trial is refused at once: one node cannot hold it);
- every listening socket the test created is on the test subnet or loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.netns_hosts import NetnsHosts, exposed_listeners, netns_unavailable, wait_for
from tuner.study.attrs import TrialAttr

pytestmark = [pytest.mark.ray, pytest.mark.multihost, pytest.mark.timeout(240)]
ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
TOKEN = "netns-test-token-" + "0" * 16


def _space(path: Path, world_size: int) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            name: netns-{world_size}
            workload: gpt
            workload_params: {{layers: 1, d_model: 32, heads: 2, vocab_size: 256}}
            params:
              micro_batch_size: {{type: categorical, choices: [2, 4]}}
              max_sequence_length: 32
              world_size: {world_size}
              nccl_algo: tree
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[NetnsHosts, dict[str, str]]]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(f"multi-host tests need network namespaces: {why}")
    tmp = tmp_path_factory.mktemp("netns-ray")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        # Notice a lost node in ~3 s instead of Ray's default ~30 s.
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "RAY_health_check_initial_delay_ms": "1000",
    }
    hosts = NetnsHosts(2)
    try:
        a, b = hosts["a"], hosts["b"]
        common = ["--num-cpus=1", "--disable-usage-stats", "--object-store-memory=80000000"]
        # Both nodes start at once (the worker's `ray start` waits for the head's GCS): ~5 s
        # less than one after the other on 2 cores.
        head = a.start(
            [RAY, "start", "--head", f"--node-ip-address={a.address}", "--port=6379", "--include-dashboard=false",
             f"--temp-dir={tmp}/a", *common],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        worker_argv = [RAY, "start", f"--address={a.address}:6379", f"--node-ip-address={b.address}",
                       f"--temp-dir={tmp}/b", *common]
        worker = b.start(worker_argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _out, head_err = head.communicate(timeout=90)
        assert head.returncode == 0, head_err[-2000:]
        _out, worker_err = worker.communicate(timeout=90)
        if worker.returncode != 0:  # gave up before the head was up: join it now
            again = b.run(worker_argv, env=env, timeout=90)
            assert again.returncode == 0, worker_err[-2000:] + again.stderr[-2000:]
        yield hosts, {**env, "TMP": str(tmp)}
    finally:
        hosts.close()


def _tune(host, env, space: Path, storage: str, study: str, trials: int, *extra: str) -> subprocess.Popen:
    return host.start(
        [sys.executable, "-m", "tuner", "tune", str(space), "--executor", "ray", "--ray-address", "10.231.0.1:6379",
         "--storage", storage, "--study", study, "--trials", str(trials), "--steps", "6", "--warmup-steps", "1",
         "--device", "cpu", "--sampler", "random", "--no-baseline", "--no-generator", "--confirm", "0",
         "--free-knobs", "all", "--json", "--output", str(space.with_suffix(".best.yaml")), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _results(storage: str, study: str) -> list[tuple[optuna.trial.FrozenTrial, dict]]:
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return [(t, t.user_attrs.get(TrialAttr.RESULT) or {}) for t in trials]


def _node_ips(result: dict) -> set[str]:
    return {n["node_ip"] for n in (result.get("telemetry") or {}).get("nodes", [])}


def test_single_rank_trials_run_on_both_nodes_and_record_them(cluster, tmp_path) -> None:
    hosts, env = cluster
    storage = f"sqlite:///{tmp_path / 'tuner.db'}"
    # two trials at once (the cluster fits two 1-CPU trials): one on each node
    tune = _tune(hosts["a"], env, _space(tmp_path / "one.yaml", 1), storage, "one", 2)
    out, err = tune.communicate(timeout=150)
    assert tune.returncode == 0, err[-3000:]
    assert json.loads(out)["counts"]["complete"] == 2
    results = _results(storage, "one")
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t, _ in results)
    assert all(len(_node_ips(r)) == 1 for _, r in results), "every trial records the node it ran on"
    assert set().union(*(_node_ips(r) for _, r in results)) == {"10.231.0.1", "10.231.0.2"}


def test_two_rank_trial_spans_both_hosts_and_a_lost_node_fails_only_its_trial(cluster, tmp_path) -> None:
    hosts, env = cluster
    a, b = hosts["a"], hosts["b"]
    storage = f"sqlite:///{tmp_path / 'tuner.db'}"
    # One trial at a time, each long enough that B is killed while the second one trains. A
    # step count is no bound on time: 150 steps finished between the poll that saw trial 1's
    # ranks placed and the kill on a fast CI machine. So each trial trains for a fixed time
    # instead (--max-seconds, agreed by both ranks), the step count only a ceiling.
    tune = _tune(a, env, _space(tmp_path / "two.yaml", 2), storage, "two", 3,
                 "--steps", "1000000", "--max-seconds", "6", "--workers", "1")

    def second_trial_training() -> bool:
        try:
            done = {t.number: t for t, _ in _results(storage, "two")}
        except Exception:
            return False  # the study is not created yet
        if not (0 in done and done[0].state.is_finished() and 1 in done):
            return False
        # rank 0's rendezvous listens on its node's address once the ranks are placed
        return any(address == a.address and "RankActor" in who for address, who in a.listening())

    try:
        wait_for(second_trial_training, 120, "trial 1's ranks to be placed while trial 0 is done")
    except AssertionError:
        tune.kill()
        print(tune.communicate()[1][-3000:])
        raise
    # (c) while two ranks train across the hosts: nothing listens outside the subnet
    for host in hosts.hosts:
        assert exposed_listeners(host) == []
    raylet = [p for p in b.pids() if Path(f"/proc/{p}/comm").read_text().strip() == "raylet"]
    assert raylet, "host B runs a raylet"
    for pid in raylet:
        os.kill(pid, signal.SIGKILL)
    _out, err = tune.communicate(timeout=90)
    assert tune.returncode == 0, err[-3000:]
    by_number = {t.number: (t, r) for t, r in _results(storage, "two")}
    first, lost, after = by_number[0][1], by_number[1][1], by_number[2][1]
    assert first["status"] == "ok" and _node_ips(first) == {a.address, b.address}
    # each rank's own environment: the communication knob and the interface of its node
    envs = {n["node_ip"]: n["env"] for n in first["telemetry"]["nodes"]}
    assert envs[a.address]["GLOO_SOCKET_IFNAME"] == a.interface and envs[b.address]["GLOO_SOCKET_IFNAME"] == b.interface
    assert envs[a.address]["NCCL_ALGO"] == envs[b.address]["NCCL_ALGO"] == "Tree"
    assert first["metrics"]["world_size"] == 2
    print("lost trial:", lost["reason"], "| refused trial:", after["reason"])
    assert lost["status"] == "failed" and b.address in lost["reason"] and "lost" in lost["reason"], lost["reason"]
    # one node left with one CPU: refused with the reason, never queued forever
    assert after["status"] == "failed" and "world_size=2" in after["reason"], after["reason"]
    assert all(t.state.is_finished() for t, _ in by_number.values())


def test_every_listening_socket_is_on_the_test_subnet_or_loopback(cluster) -> None:
    hosts, _ = cluster
    assert hosts["a"].listening(), "host A should have Ray's servers listening"
    for host in hosts.hosts:
        assert exposed_listeners(host) == []

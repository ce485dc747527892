"""`tuner worker` on two hosts sharing one study in a PostgreSQL on a third host.

Three network-namespace hosts: A (10.231.0.1) runs a PostgreSQL the fixture makes
(initdb + pg_ctl in a temp dir, listening on A's address only), B and C run `tuner
worker` (each with its own host name, so trial owners say which host ran them). Host C
is killed mid-trial (every process in it); when C comes back, its new worker recovers
the dead trial at once, and the study ends with every trial run exactly once, results
from both hosts, nothing lost or stuck RUNNING.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns_hosts import NetnsHosts, exposed_listeners, netns_unavailable, wait_for
from tuner.study.attrs import TrialAttr

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 3


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def hosts_with_pg() -> Iterator[tuple[NetnsHosts, str, dict[str, str]]]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(f"multi-host tests need network namespaces: {why}")
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed under /usr/lib/postgresql")
    # Not under pytest's tmp (mode 0700, root's): the postgres user must reach it.
    tmp = Path(tempfile.mkdtemp(prefix="tnr-pg-"))
    data = tmp / "pgdata"
    shutil.chown(tmp, "postgres")
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    init = subprocess.run([*run_as, str(pg_bin / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(data)],
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all 10.231.0.0/24 trust\n")
    hosts: NetnsHosts | None = None
    try:
        hosts = NetnsHosts(3)
        a = hosts["a"]
        start = a.run(
            [*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(tmp / "pg.log"), "-w", "-t", "60",
             "-o", f"-c listen_addresses={a.address} -p 5432 -k {tmp} -c fsync=off", "start"],
            timeout=90,
        )
        assert start.returncode == 0, start.stderr + (tmp / "pg.log").read_text()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMP": str(tmp)}
        yield hosts, f"postgresql+psycopg://postgres@{a.address}:5432/postgres", env
    finally:
        if hosts is not None:
            hosts.close()  # kills PostgreSQL with everything else on the hosts
        shutil.rmtree(tmp, ignore_errors=True)


def _worker(host, storage: str, study: str, env: dict[str, str]) -> subprocess.Popen:
    # Its own UTS namespace and host name: the trial owners then name the host that ran them.
    command = f"hostname tnr-{host.name} && exec {sys.executable} -m tuner worker --storage {storage} --study {study} --json"
    return host.start(["unshare", "--uts", "sh", "-c", command], env=env, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True, cwd=env["TMP"])


class TrialReader:
    """One Python process on a host that prints the study's trials on each request.

    The test process cannot reach the subnet; one long-lived reader costs one interpreter
    start instead of one per poll.
    """

    SCRIPT = textwrap.dedent(
        f"""
        import json, sys, optuna
        storage, study = sys.argv[1], sys.argv[2]
        for _ in sys.stdin:
            trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
            print(json.dumps([{{"number": t.number, "state": t.state.name,
                               "kind": t.user_attrs.get({str(TrialAttr.KIND)!r}, "trial"),
                               "owner": t.user_attrs.get({str(TrialAttr.OWNER)!r}),
                               "reason": (t.user_attrs.get({str(TrialAttr.RESULT)!r}) or {{}}).get("reason")}}
                              for t in trials]), flush=True)
        """
    )

    def __init__(self, host, storage: str, study: str, env: dict[str, str]) -> None:
        self.process = host.start([sys.executable, "-c", self.SCRIPT, storage, study], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def trials(self) -> list[dict]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the trial reader died"
        return json.loads(line)


def test_workers_on_two_hosts_share_a_study_and_survive_a_host_killed_mid_trial(hosts_with_pg) -> None:
    hosts, storage, env = hosts_with_pg
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    study = "netns-shared"
    make = textwrap.dedent(
        f"""
        from tuner.space.search_space import load_space
        from tuner.study import create_study
        from tuner.study.spec import StudySpec
        from tuner.types import TrialBudget
        space = load_space("gpt_tiny_system").without("precision").without("gradient_accumulation_steps")
        create_study(StudySpec(name={study!r}, workload="gpt", space=space,
                               workload_params={{"layers": 1, "d_model": 32, "heads": 2}}, n_trials={N_TRIALS},
                               sampler="random", budget=TrialBudget(max_steps=6, warmup_steps=1, eval_batches=1),
                               baseline=False, use_generator=False, device="cpu"), {storage!r})
        """
    )
    made = b.run([sys.executable, "-c", make], env=env, timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    worker_b = _worker(b, storage, study, env)
    worker_c = _worker(c, storage, study, env)
    reader = TrialReader(b, storage, study, env)

    def c_is_running_a_trial() -> bool:
        return any(t["state"] == "RUNNING" and (t["owner"] or {}).get("host") == "tnr-c" for t in reader.trials())

    wait_for(c_is_running_a_trial, 120, "host C's worker to run a trial", interval=0.5)
    # (c) PostgreSQL and the workers listen on nothing outside the subnet
    for host in hosts.hosts:
        assert exposed_listeners(host) == []
    assert any(address == a.address for address, _ in a.listening()), "PostgreSQL listens on host A's address"
    c.kill_all()  # host C dies: its worker and the worker's trial process, mid-trial
    assert worker_c.poll() is not None
    out_b, err_b = worker_b.communicate(timeout=150)
    assert worker_b.returncode == 0, err_b[-3000:]
    # Host C comes back: its new worker fails C's dead trial at once (its own host, its
    # process is gone), so the study gets its last trial instead of a row stuck RUNNING.
    worker_c2 = _worker(c, storage, study, env)
    out_c2, err_c2 = worker_c2.communicate(timeout=150)
    assert worker_c2.returncode == 0, err_c2[-3000:]

    trials = reader.trials()
    counted = [t for t in trials if t["kind"] == "trial"]
    abandoned = [t for t in trials if t["kind"] == "abandoned"]
    assert [t for t in trials if t["state"] == "RUNNING"] == []
    assert len(counted) == N_TRIALS and all(t["state"] == "COMPLETE" for t in counted), counted
    assert len(abandoned) == 1 and abandoned[0]["owner"]["host"] == "tnr-c", abandoned
    assert "abandoned" in (abandoned[0]["reason"] or "")
    # results from both hosts, each trial run by exactly one worker process
    assert {t["owner"]["host"] for t in counted} == {"tnr-b", "tnr-c"}
    owners = [t["owner"]["pid"] for t in counted]
    assert set(owners) <= {worker_b.pid, worker_c.pid, worker_c2.pid}
    assert owners.count(worker_b.pid) == json.loads(out_b)["trials_run_here"]
    assert owners.count(worker_c2.pid) == json.loads(out_c2)["trials_run_here"]
    assert len({t["number"] for t in trials}) == len(trials)

"""`tuner worker` on two hosts sharing one study in a PostgreSQL on a third host.

Three network-namespace hosts: A (10.231.0.1) runs a PostgreSQL the fixture makes
(initdb + pg_ctl in a temp dir, listening on A's address only), B and C run `tuner
worker` (each with its own host name, so trial owners say which host ran them). The
worker host that first finished a trial and is running another is killed (every process
in it). The surviving worker, still running or waiting for the study's last trial, fails
the lost trial within seconds (the study's heartbeat grace, not the old 90 s), with the
lost host and its last heartbeat in the reason, runs its config again, and the study ends
with every trial run exactly once, results from both hosts, nothing stuck RUNNING.
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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns_hosts import NetnsHosts, exposed_listeners, netns_unavailable, wait_for
from tuner.study.attrs import TrialAttr

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 3
#: The study's heartbeat grace: short, so the test is quick, yet several missed beats
#: (one every 5/6 s) on a loaded machine.
GRACE_S = 5.0
#: Each trial trains for this long (the step count is only a ceiling), so the kill lands
#: mid-trial whatever the machine's speed.
TRIAL_S = 1.0


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
                               "retry_of": t.user_attrs.get({str(TrialAttr.RETRY_OF)!r}),
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


def test_workers_on_two_hosts_share_a_study_and_recover_a_host_killed_mid_trial(hosts_with_pg) -> None:
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
                               sampler="random", heartbeat_grace_s={GRACE_S},
                               budget=TrialBudget(max_steps=100000, max_seconds={TRIAL_S}, warmup_steps=1,
                                                  eval_batches=1),
                               baseline=False, use_generator=False, device="cpu"), {storage!r})
        """
    )
    made = a.run([sys.executable, "-c", make], env=env, timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    workers = {host.name: _worker(host, storage, study, env) for host in (b, c)}
    reader = TrialReader(a, storage, study, env)  # on A, which is never killed

    def host_mid_second_trial() -> str | None:
        trials = reader.trials()
        for name in ("b", "c"):
            mine = [t for t in trials if (t["owner"] or {}).get("host") == f"tnr-{name}" and t["kind"] == "trial"]
            if any(t["state"] == "COMPLETE" for t in mine) and any(t["state"] == "RUNNING" for t in mine):
                return name
        return None

    # Whichever host finished a trial first runs the study's last one: that host dies.
    lost_name = wait_for(host_mid_second_trial, 120, "a worker host to finish a trial and start another", interval=0.3)
    lost, survivor = hosts[lost_name], hosts["c" if lost_name == "b" else "b"]
    # (c) PostgreSQL and the workers listen on nothing outside the subnet
    for host in hosts.hosts:
        assert exposed_listeners(host) == []
    assert any(address == a.address for address, _ in a.listening()), "PostgreSQL listens on host A's address"
    lost.kill_all()  # the host dies: its worker and the worker's trial process, mid-trial
    killed_at = time.monotonic()
    assert workers[lost_name].poll() is not None

    def lost_trial_failed() -> list[dict]:
        return [t for t in reader.trials() if t["kind"] == "abandoned"]

    abandoned = wait_for(lost_trial_failed, 60, "the surviving worker to fail the lost host's trial", interval=0.3)
    recovered_after = time.monotonic() - killed_at
    # grace + one check interval (grace / 6), plus slack for a loaded machine: far under 90 s
    assert recovered_after < GRACE_S + 14, recovered_after
    out, err = workers[survivor.name].communicate(timeout=150)
    assert workers[survivor.name].returncode == 0, err[-3000:]

    trials = reader.trials()
    counted = [t for t in trials if t["kind"] == "trial"]
    abandoned = [t for t in trials if t["kind"] == "abandoned"]
    assert [t for t in trials if t["state"] == "RUNNING"] == []
    assert len(counted) == N_TRIALS and all(t["state"] == "COMPLETE" for t in counted), counted
    assert len(abandoned) == 1 and abandoned[0]["state"] == "FAIL", abandoned
    lost_trial = abandoned[0]
    assert lost_trial["owner"]["host"] == f"tnr-{lost_name}"
    reason = lost_trial["reason"] or ""
    assert f"worker host tnr-{lost_name} lost" in reason and "last heartbeat at" in reason, reason
    assert f"heartbeat_grace_s={GRACE_S:g}" in reason and f"on tnr-{survivor.name}" in reason, reason
    # its config ran again, once, on the surviving host
    retries = [t for t in counted if t["retry_of"] == lost_trial["number"]]
    assert len(retries) == 1 and retries[0]["owner"]["host"] == f"tnr-{survivor.name}", counted
    # results from both hosts, each trial run by exactly one worker process
    assert {t["owner"]["host"] for t in counted} == {"tnr-b", "tnr-c"}
    survivor_pid = workers[survivor.name].pid
    owners = [t["owner"]["pid"] for t in counted]
    assert set(owners) <= {workers["b"].pid, workers["c"].pid}
    outcome = json.loads(out)
    assert owners.count(survivor_pid) == outcome["trials_run_here"]
    assert outcome["counts"]["abandoned"] == 1 and outcome["counts"]["complete"] == N_TRIALS  # the user is told
    assert len({t["number"] for t in trials}) == len(trials)

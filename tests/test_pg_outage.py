"""A real PostgreSQL outage under ask/tell load (issue 16): the test makes its own cluster
(initdb/pg_ctl in a temp dir), serves it with `tuner serve`, and stops PostgreSQL with
`pg_ctl -m immediate` (a crash: no shutdown checkpoint, connections cut) for a few seconds
while 16 client threads ask and tell. Every client retries a 503 until it is answered.

After recovery: every tell answered 200 is COMPLETE with its value, no trial stays
RUNNING, every retried 503 ended in a 200 (a retried tell is answered 200, never 409), and nothing else but 200 and 503 was answered."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest

from tests._api_support import TINY_SPACE, LiveServer, drain, free_port, new_token

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CLIENTS = 16
LOAD_BEFORE_S = 3.0  # ask/tell before the outage
OUTAGE_S = 4.0  # PostgreSQL down
LOAD_AFTER_S = 3.0  # ask/tell after it is back
WORK_S = 0.2  # a trial "trains" up to this long between ask and tell: clients hold trials when PostgreSQL stops
RETRY_DEADLINE_S = 30.0  # a request still failing this long after the outage began fails the test


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found and shutil.which("pg_ctl") is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    return Path(found[-1]).parent if found else Path(shutil.which("pg_ctl")).parent  # type: ignore[arg-type]


class Cluster:
    """A throwaway PostgreSQL cluster; as root, run as the `postgres` user (postgres
    refuses to run as root)."""

    def __init__(self, root: Path) -> None:
        self.bin = _pg_bin()
        self.data = root / "data"
        self.port = free_port()
        self.log = root / "pg.log"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
            self.prefix = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c max_connections=100"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="tuner-pg-outage-"))
    pg = Cluster(root)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


class Client(threading.Thread):
    """Asks and tells in a loop until told to stop, retrying each 503 (and a connection
    error) until answered; the pair in hand is always finished before it stops."""

    def __init__(self, base: str, token: str, name: str, stop: threading.Event, *, reports: bool) -> None:
        super().__init__(daemon=True)
        self.reports = reports  # half the clients report before telling, half tell at once
        self.http = httpx.Client(base_url=base + "/api/v1/studies/" + name, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.stop = stop
        self.told: dict[int, float] = {}  # trial number -> value, each tell answered 200
        self.statuses: Counter[int] = Counter()
        self.retried_tells = 0  # tells answered 503 at least once, then retried
        self.retried_reports = 0
        self.unfinished: list[str] = []  # requests that never got their 200

    def _until_answered(self, path: str, body: dict | None = None) -> tuple[httpx.Response | None, bool]:
        """POST until the answer is not a 503; (final answer, whether a 503 came first)."""
        saw_503 = False
        deadline = time.monotonic() + RETRY_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                r = self.http.post(path, json=body)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            self.statuses[r.status_code] += 1
            if r.status_code != 503:
                return r, saw_503
            saw_503 = True
            time.sleep(0.1)
        return None, saw_503

    def run(self) -> None:
        while not self.stop.is_set():
            asked, _ = self._until_answered("/ask")
            if asked is None or asked.status_code != 200:
                self.unfinished.append(f"ask: {None if asked is None else (asked.status_code, asked.text)}")
                return
            number = asked.json()["trial_number"]
            value = float(number) + 0.25
            time.sleep(random.uniform(0, WORK_S))
            if self.reports:
                reported, retried = self._until_answered(f"/trials/{number}/report", {"step": 1, "value": value})
                self.retried_reports += retried
                if reported is None or reported.status_code != 200:
                    self.unfinished.append(f"report {number}: {None if reported is None else (reported.status_code, reported.text)}")
            told, retried = self._until_answered(f"/trials/{number}/tell", {"values": [value]})
            self.retried_tells += retried
            if told is None or told.status_code != 200 or told.json()["state"] != "COMPLETE":
                self.unfinished.append(f"tell {number}: {None if told is None else (told.status_code, told.text)}")
                continue
            self.told[number] = value


def test_no_tell_is_lost_when_postgresql_crashes_under_load(cluster):
    from api.db.migrate import upgrade

    upgrade(cluster.url)
    token = new_token(cluster.url)
    server = LiveServer(cluster.url, grace=1.0).start()
    output = drain(server)
    clients: list[Client] = []
    try:
        r = httpx.post(
            server.base + "/api/v1/studies",
            json={"name": "outage", "space": TINY_SPACE, "run": False, "sampler": "random", "n_trials": 100_000},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        stop = threading.Event()
        clients = [Client(server.base, token, "outage", stop, reports=i % 2 == 0) for i in range(CLIENTS)]
        for c in clients:
            c.start()
        time.sleep(LOAD_BEFORE_S)
        cluster.stop("immediate")  # a crash: open transactions and connections cut
        time.sleep(OUTAGE_S)
        cluster.start()
        time.sleep(LOAD_AFTER_S)
        stop.set()
        for c in clients:
            c.join(timeout=RETRY_DEADLINE_S + 10)
        assert not any(c.is_alive() for c in clients)
    finally:
        server.stop()
        for c in clients:
            c.http.close()

    statuses = sum((c.statuses for c in clients), Counter())
    told = {n: v for c in clients for n, v in c.told.items()}
    retried = sum(c.retried_tells for c in clients)
    retried_reports = sum(c.retried_reports for c in clients)
    print(f"answers {dict(statuses)}; tells answered 200: {len(told)}; retried after a 503: {retried} tells, {retried_reports} reports")
    assert statuses[503] > 0 and retried > 0, "no tell met the outage: lengthen OUTAGE_S or WORK_S"
    assert set(statuses) <= {200, 503}, f"only 200 and (retried) 503 expected: {dict(statuses)}"
    unfinished = [u for c in clients for u in c.unfinished]
    assert unfinished == [], f"{unfinished}; server log tail:\n{b''.join(output[-40:]).decode(errors='replace')}"
    assert sum(len(c.told) for c in clients) == len(told)  # no number handed out twice
    trials = {t.number: t for t in optuna.load_study(study_name="outage", storage=cluster.url).trials}
    failed = sorted(n for n, t in trials.items() if t.state.name == "FAIL")
    print(f"trials in the database: {len(trials)}; FAIL (asks answered 503 whose row was written): {failed}")
    assert not set(failed) & set(told)
    running = sorted(n for n, t in trials.items() if t.state.name == "RUNNING")
    assert running == [], f"trials left RUNNING after recovery: {running}"
    lost = sorted(n for n, v in told.items() if trials.get(n) is None or trials[n].state.name != "COMPLETE" or trials[n].values != [v])
    assert lost == [], f"tells answered 200 but not COMPLETE with their value: {lost}"

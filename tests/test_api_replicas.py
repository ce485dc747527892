"""Two `tuner serve` processes on one PostgreSQL database (API replicas behind a load
balancer, issue 16), shared by the tests of this module:
- clients alternate between the servers on every request, so most reports and tells reach
  the server that did not hand the trial out: 0 errors, 0 lost tells, 0 duplicate trial
  numbers, and each server's sampler sees the other's trials;
- a stop made through server A refuses asks on server B within `study_state_recheck_s`
  (default 1 s; api.services.hot_state);
- a study's n_trials hold exactly when clients alternate between the servers (the budget is
  counted in the database under the study-row lock: tuner.asktell.batch_commit)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter

import httpx
import optuna
import pytest

from tests._api_support import TINY_SPACE, LiveServer, drain, new_token, pg_schema_db

pytestmark = pytest.mark.postgres

CLIENTS = 8
PAIRS = 15  # per client
RECHECK_S = 1.0  # the server setting's default, which these servers run with


@pytest.fixture(scope="module")
def replicas():
    from api.db.migrate import upgrade

    with pg_schema_db() as url:
        upgrade(url)
        headers = {"Authorization": f"Bearer {new_token(url)}"}
        servers = [LiveServer(url, grace=1.0) for _ in range(2)]
        starting = [threading.Thread(target=s.start) for s in servers]  # side by side: half the wait
        for t in starting:
            t.start()
        for t in starting:
            t.join()
        assert all(s.proc is not None and s.proc.poll() is None for s in servers), "a server did not start"
        outputs = [drain(s) for s in servers]
        try:
            yield url, [s.base for s in servers], headers
        finally:
            for server in servers:
                server.stop()
        del outputs


def test_two_servers_on_one_study_lose_nothing_and_never_repeat_a_number(replicas):
    url, bases, headers = replicas
    r = httpx.post(
        bases[0] + "/api/v1/studies",
        json={"name": "replicas", "space": TINY_SPACE, "run": False, "sampler": "tpe", "n_trials": CLIENTS * PAIRS},
        headers=headers,
        timeout=30,
    )
    assert r.status_code == 201, r.text
    statuses: Counter[int] = Counter()
    told: list[tuple[int, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        targets = itertools.cycle([base + "/api/v1/studies/replicas" for base in bases][index % 2 :] + [bases[0] + "/api/v1/studies/replicas"][: index % 2])
        with httpx.Client(headers=headers, timeout=30) as http:

            def post(path: str, body: dict | None = None) -> httpx.Response:
                r = http.post(next(targets) + path, json=body)  # the other server on every request
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code != 200:
                        errors.append(f"{path}: {r.status_code} {r.text[:200]}")
                return r

            for _ in range(PAIRS):
                asked = post("/ask")
                if asked.status_code != 200:
                    return
                number = asked.json()["trial_number"]
                value = float(asked.json()["config"]["micro_batch_size"])
                post(f"/trials/{number}/report", {"step": 1, "value": value})
                if post(f"/trials/{number}/tell", {"values": [value]}).status_code == 200:
                    with lock:
                        told.append((number, value))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [], errors[:5]
    assert statuses == Counter({200: 3 * CLIENTS * PAIRS})
    numbers = [n for n, _ in told]
    assert len(numbers) == len(set(numbers)) == CLIENTS * PAIRS  # no number handed out twice
    trials = {t.number: t for t in optuna.load_study(study_name="replicas", storage=url).trials}
    assert sorted(trials) == list(range(CLIENTS * PAIRS))
    assert all(trials[n].state.name == "COMPLETE" and trials[n].values == [v] for n, v in told)  # none lost
    assert all(trials[n].intermediate_values == {1: v} for n, v in told)
    # the study's progress, read from either server, counts every trial once
    for base in bases:
        info = httpx.get(base + "/api/v1/studies/replicas", headers=headers, timeout=30).json()
        assert info["progress"]["complete"] == CLIENTS * PAIRS and info["progress"]["running"] == 0


def _create(base: str, headers: dict, name: str, **extra) -> None:
    body = {"name": name, "space": TINY_SPACE, "run": False, **extra}
    r = httpx.post(base + "/api/v1/studies", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text


def test_n_trials_hold_exactly_across_two_servers(replicas):
    url, bases, headers = replicas
    n_trials, clients = 20, 6
    _create(bases[0], headers, "budget", sampler="random", n_trials=n_trials)
    statuses: Counter[int] = Counter()
    handed: list[int] = []
    refusals: list[dict] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        studies = itertools.cycle([f"{bases[(index + k) % 2]}/api/v1/studies/budget" for k in range(2)])
        with httpx.Client(headers=headers, timeout=30) as http:
            while True:
                asked = http.post(next(studies) + "/ask")  # the other server on every request
                with lock:
                    statuses[asked.status_code] += 1
                if asked.status_code != 200:
                    with lock:
                        refusals.append(asked.json())
                    return
                number = asked.json()["trial_number"]
                told = http.post(f"{next(studies)}/trials/{number}/tell", json={"values": [float(number)]})
                assert told.status_code == 200, told.text
                with lock:
                    handed.append(number)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    trials = optuna.load_study(study_name="budget", storage=url).trials
    # exactly n_trials in the database, every one handed out once and told; 0 over
    assert len(trials) == n_trials, f"{len(trials)} trials for n_trials={n_trials}"
    assert sorted(handed) == list(range(n_trials))
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert statuses == Counter({200: n_trials, 409: clients})
    assert all(r["problems"][0]["field"] == "n_trials" and r["problems"][0]["value"] == n_trials for r in refusals), refusals


def test_a_stop_on_one_server_refuses_asks_on_the_other_within_the_bound(replicas):
    url, (a, b), headers = replicas
    _create(a, headers, "halt", n_trials=100_000)
    answers: list[tuple[float, int]] = []  # (when the ask was sent, status) on server B
    refused_fields: set[str] = set()
    stop_answered = threading.Event()
    give_up = threading.Event()  # B never refused: end the clients, fail below
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(headers=headers, timeout=30) as http:
            while not give_up.is_set():
                sent = time.monotonic()
                asked = http.post(f"{b}/api/v1/studies/halt/ask")
                with lock:
                    answers.append((sent, asked.status_code))
                if asked.status_code != 200:
                    with lock:
                        refused_fields.add(asked.json()["problems"][0]["field"])
                    if stop_answered.is_set():
                        return
                    continue
                number = asked.json()["trial_number"]
                assert http.post(f"{b}/api/v1/studies/halt/trials/{number}/tell", json={"values": [1.0]}).status_code == 200

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # B serves the study from its hot copy now
    stop_sent = time.monotonic()
    stopped = httpx.post(f"{a}/api/v1/studies/halt/stop", headers=headers, timeout=30)
    stopped_at = time.monotonic()  # the stop committed before this answer
    stop_answered.set()
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped", stopped.text
    for t in threads:
        t.join(timeout=RECHECK_S + 30)  # each ends at its first refusal (slack: a loaded machine)
    give_up.set()
    for t in threads:
        t.join(timeout=30)
    before = [status for sent, status in answers if sent < stop_sent]
    after_bound = [status for sent, status in answers if sent >= stopped_at + RECHECK_S]
    assert before and set(before) == {200}, "B did not serve the study before the stop"
    assert refused_fields == {"state"}, refused_fields  # B refused, because stopped, for nothing else
    assert all(status == 409 for status in after_bound), f"asks sent to B >= {RECHECK_S} s after the stop were answered: {after_bound}"
    refused = httpx.post(f"{b}/api/v1/studies/halt/ask", headers=headers, timeout=30)
    assert refused.status_code == 409 and refused.json()["problems"][0]["field"] == "state"
    # every trial in the database is one B answered: no ask created one and was then refused
    trials = optuna.load_study(study_name="halt", storage=url).trials
    assert len(trials) == sum(1 for _, status in answers if status == 200)

    # a resume through A: B hands out trials again within the bound
    assert httpx.post(f"{a}/api/v1/studies/halt/resume", headers=headers, timeout=30).status_code == 200
    resumed_at = time.monotonic()
    while (r := httpx.post(f"{b}/api/v1/studies/halt/ask", headers=headers, timeout=30)).status_code == 409:
        assert time.monotonic() - resumed_at < RECHECK_S + 30, r.text
        time.sleep(0.05)
    assert r.status_code == 200, r.text
    assert httpx.post(f"{b}/api/v1/studies/halt/trials/{r.json()['trial_number']}/tell", json={"values": [1.0]}, headers=headers).status_code == 200

    # a delete through A: B answers 404 within the bound, not a 5xx
    assert httpx.delete(f"{a}/api/v1/studies/halt", headers=headers, timeout=30).status_code == 204
    time.sleep(RECHECK_S)
    gone = httpx.post(f"{b}/api/v1/studies/halt/ask", headers=headers, timeout=30)
    assert gone.status_code == 404 and gone.json()["problems"][0]["field"] == "name", gone.text

"""Two `tuner serve` processes on one PostgreSQL ask/tell study (API replicas behind a load
balancer, issue 16): clients alternate between the servers on every request, so most
reports and tells reach the server that did not hand the trial out. 0 errors, 0 lost
tells, 0 duplicate trial numbers, and each server's sampler sees the other's trials."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

import httpx
import optuna
import pytest

from tests._api_support import TINY_SPACE, LiveServer, drain, new_token, pg_schema_db

pytestmark = pytest.mark.postgres

CLIENTS = 8
PAIRS = 15  # per client


def test_two_servers_on_one_study_lose_nothing_and_never_repeat_a_number():
    from api.db.migrate import upgrade

    with pg_schema_db() as url:
        upgrade(url)
        token = new_token(url)
        servers = [LiveServer(url, grace=1.0).start() for _ in range(2)]
        outputs = [drain(s) for s in servers]
        headers = {"Authorization": f"Bearer {token}"}
        try:
            r = httpx.post(
                servers[0].base + "/api/v1/studies",
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
                bases = itertools.cycle([s.base + "/api/v1/studies/replicas" for s in servers][index % 2 :] + [servers[0].base + "/api/v1/studies/replicas"][: index % 2])
                with httpx.Client(headers=headers, timeout=30) as http:

                    def post(path: str, body: dict | None = None) -> httpx.Response:
                        r = http.post(next(bases) + path, json=body)  # the other server on every request
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
            for server in servers:
                info = httpx.get(server.base + "/api/v1/studies/replicas", headers=headers, timeout=30).json()
                assert info["progress"]["complete"] == CLIENTS * PAIRS and info["progress"]["running"] == 0
        finally:
            for server in servers:
                server.stop()
        del outputs

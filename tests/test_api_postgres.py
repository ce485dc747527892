"""The service on real PostgreSQL (127.0.0.1:5432, db `test`, a fresh schema per test)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest

from tests._api_support import REPLAY_SPACE, TINY_SPACE, LiveServer, new_token, pg_schema_db
from tuner.client import AuthError, TunerClient
from tuner.errors import ValidationError

pytestmark = pytest.mark.postgres


def _counted(url, name):
    trials = optuna.load_study(study_name=name, storage=url).trials
    return [t for t in trials if t.state.is_finished() and t.user_attrs.get("tuner.kind", "trial") == "trial"]


#: Trials of the background study: enough that it is still running when the server is
#: killed, after the ask/tell part (a replay trial takes milliseconds).
RUN_TRIALS = 60


def test_postgres_run_ask_tell_and_restart_mid_study():
    import time

    from api.db.migrate import upgrade

    with pg_schema_db() as url:
        upgrade(url)
        token = new_token(url)
        server = LiveServer(url, grace=1.0).start()
        try:
            client = TunerClient(server.base, token=token)
            with pytest.raises(AuthError):
                TunerClient(server.base).create_study("anon", space=TINY_SPACE, run=False)
            with pytest.raises(ValidationError) as err:
                client.create_study("mod", space=REPLAY_SPACE, workload="tuner.workloads.replay:ReplayWorkload")
            assert err.value.problems[0].field == "workload"
            run = client.create_study(
                "pg-run", space=REPLAY_SPACE, workload="replay", workload_params={"table": "gpt_124m"},
                n_trials=RUN_TRIALS, use_generator=False,
            )
            # ask/tell from 4 client threads while the background study runs
            at = client.create_study("pg-at", space=TINY_SPACE, run=False, n_trials=24, sampler="random")

            def loop(_: int) -> None:
                with TunerClient(server.base, token=token) as own:
                    study = own.study("pg-at")
                    for _ in range(6):
                        with study.ask() as trial:
                            trial.report(0, 1.0)
                            trial.tell(float(trial.config.micro_batch_size))

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(loop, range(4)))
            stored = optuna.load_study(study_name="pg-at", storage=url).trials
            assert sorted(t.number for t in stored) == list(range(24))
            assert all(t.value == t.params["micro_batch_size"] for t in stored)
            assert at.best().values == (max(t.value for t in stored),)

            deadline = time.monotonic() + 60
            while run.info().progress["complete"] < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.kill()
            client.close()
            finished = {t.number: t.values for t in optuna.load_study(study_name="pg-run", storage=url).trials if t.state.is_finished()}
            done_at_kill = len(_counted(url, "pg-run"))
            assert done_at_kill < RUN_TRIALS, "the study finished before the kill; raise RUN_TRIALS"
            server = LiveServer(url, grace=1.0).start()
            with TunerClient(server.base, token=token) as client:
                info = client.study("pg-run").wait(timeout=180, poll_s=0.2)
                assert info.state == "completed"
                best = client.study("pg-run").best_config()
            after = {t.number: t for t in optuna.load_study(study_name="pg-run", storage=url).trials}
            assert all(after[n].values == v for n, v in finished.items())
            assert len(_counted(url, "pg-run")) == RUN_TRIALS
            assert best.precision in ("bf16", "fp16", "tf32", "fp32")
        finally:
            server.stop()

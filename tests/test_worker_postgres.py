"""Two `tuner worker` processes share one study on the real PostgreSQL server.

The study (tiny GPT, real training trials) is created here; two workers started at the
same time join it by name and must together finish exactly n_trials trials, each trial
run by exactly one of them. The test gets its own PostgreSQL schema, so Optuna's tables
never meet another test's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import optuna
import pytest

from tuner.space.search_space import load_space
from tuner.study import create_study
from tuner.study.attrs import TrialAttr
from tuner.study.spec import StudySpec
from tuner.types import TrialBudget, TrialResult

pytestmark = pytest.mark.postgres

PG_ADMIN = os.environ.get("TUNER_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")


def _reachable() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def pg_storage():
    why = _reachable()
    if why is not None:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 (db 'test', trust auth): {why}")
    import psycopg

    schema = f"tuner_workers_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_two_workers_share_a_study_and_never_run_a_trial_twice(pg_storage, tmp_path):
    n_trials = 4
    space = load_space("gpt_tiny_system").without("precision").without("gradient_accumulation_steps")
    spec = StudySpec(
        name=f"shared-{uuid.uuid4().hex[:8]}",
        workload="gpt",
        space=space,
        workload_params={"layers": 1, "d_model": 32, "heads": 2},
        n_trials=n_trials,
        sampler="random",
        budget=TrialBudget(max_steps=3, warmup_steps=1, eval_batches=1),
        baseline=False,
        use_generator=False,
        device="cpu",
    )
    create_study(spec, pg_storage)

    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tuner", "worker", "--storage", pg_storage, "--study", spec.name, "--json"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=240) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    ran_here = [json.loads(out)["trials_run_here"] for out, _ in outputs]

    trials = optuna.load_study(study_name=spec.name, storage=pg_storage).get_trials()
    counted = [t for t in trials if t.user_attrs.get(TrialAttr.KIND, "trial") == "trial"]
    assert len(counted) == n_trials == sum(ran_here)
    assert all(t.state.name == "COMPLETE" for t in counted), [
        TrialResult.from_dict(t.user_attrs[TrialAttr.RESULT]).reason for t in counted
    ]
    # Each trial row was run by exactly one worker process, and both workers took part.
    owners = [t.user_attrs[TrialAttr.OWNER]["pid"] for t in counted]
    assert set(owners) == {w.pid for w in workers}
    assert sorted(ran_here) == sorted(owners.count(w.pid) for w in workers)
    assert len({t.number for t in trials}) == len(trials)

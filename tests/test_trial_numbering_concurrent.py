"""Trial numbers stay unique and contiguous when several PROCESSES add trials to one study.

Each spawned process does what the service's writer process does (`tuner.asktell.writer_process.
writer_main`): a `BatchCommitter` on `open_storage(url)` applying batches of `CreateTrial`
with `run_batch`, as two server instances (or a server and a CLI run) sharing one
PostgreSQL would. Optuna's `trials.number` has no unique constraint, so only the
study-row lock `_create_trials` takes (`lock_study`, SELECT .. FOR UPDATE) keeps two
transactions from counting the same trials and inserting the same numbers.

PostgreSQL only: SQLite serialises writers anyway, so it could not show a missing lock.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa

from tests._api_support import pg_schema_db, trial_template

pytestmark = pytest.mark.postgres

PROCESSES = 3
BATCHES = 150  # per process
BATCH_SIZES = (1, 2, 3)  # cycled: small batches, so the processes' transactions interleave often


def _create_many(url: str, study_id: int, index: int, barrier: Any, out: str) -> None:
    """One writer process: connect, wait for the others, then commit BATCHES small batches
    back to back. Writes what it got back (trial id, number, tag) and any errors to `out`."""
    from tuner.asktell.batch_commit import BatchCommitter
    from tuner.asktell.operations import CreateTrial
    from tuner.storage.rdb import open_storage

    committer = BatchCommitter(open_storage(url))
    created: list[tuple[int, int, str]] = []
    errors: list[str] = []
    try:
        committer.commit([])  # open the kept connection before the race starts
        barrier.wait(timeout=60)
        seq = 0
        for batch in range(BATCHES):
            tags = [f"p{index}-{seq + k}" for k in range(BATCH_SIZES[batch % len(BATCH_SIZES)])]
            seq += len(tags)
            ops = [CreateTrial(study_id, trial_template(float(index), tag=tag)) for tag in tags]
            for tag, (ok, value) in zip(tags, committer.run_batch(ops), strict=True):
                if ok:
                    trial_id, number = value
                    created.append((trial_id, number, tag))
                else:
                    errors.append(f"{tag}: {type(value).__name__}: {value}")
    finally:
        committer.close()
        Path(out).write_text(json.dumps({"created": created, "errors": errors}))


def test_trials_created_by_concurrent_writer_processes_are_numbered_0_to_n_minus_1(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with pg_schema_db() as url:
        study = optuna.create_study(study_name="race", storage=url)
        # An existing trial, created by Optuna itself: new numbers must continue after it.
        first = study.ask({"x": optuna.distributions.FloatDistribution(0, 10)})
        study.tell(first, 1.0)
        barrier = ctx.Barrier(PROCESSES)
        outs = [tmp_path / f"p{i}.json" for i in range(PROCESSES)]
        procs = [
            ctx.Process(
                target=_create_many, args=(url, study._study_id, i, barrier, str(outs[i])), daemon=True
            )
            for i in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join(timeout=120)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join(timeout=10)
        assert [p.exitcode for p in procs] == [0] * PROCESSES
        reports = [json.loads(out.read_text()) for out in outs]
        # Straight from the table: Optuna's own reader would hide duplicated numbers.
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT t.trial_id, t.number, a.value_json FROM trials t"
                        " LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'tag'"
                        " WHERE t.study_id = :sid"
                    ),
                    {"sid": study._study_id},
                ).all()
        finally:
            engine.dispose()
        trials = optuna.load_study(study_name="race", storage=url).trials

    errors = [e for r in reports for e in r["errors"]]
    assert errors == [], errors[:5]
    per_process = sum(BATCH_SIZES[b % len(BATCH_SIZES)] for b in range(BATCHES))
    assert [len(r["created"]) for r in reports] == [per_process] * PROCESSES

    # Unique and contiguous: exactly 0..N-1, the one Optuna created first keeping 0.
    total = 1 + PROCESSES * per_process
    assert len(rows) == total
    numbers = sorted(number for _, number, _ in rows)
    duplicates = sorted(n for n, k in Counter(numbers).items() if k > 1)
    assert duplicates == [], f"{len(duplicates)} numbers given to several trials, e.g. {duplicates[:10]}"
    assert numbers == list(range(total))
    stored = {
        trial_id: (number, json.loads(tag) if tag is not None else None) for trial_id, number, tag in rows
    }
    assert stored[first._trial_id] == (0, None)

    # Each process was told the number the database holds for each of its trials.
    for report in reports:
        for trial_id, number, tag in report["created"]:
            assert stored[trial_id] == (number, tag)
    # and within one process numbers only grow (its batches commit one after another)
    for report in reports:
        own = [number for _, number, _ in report["created"]]
        assert own == sorted(own)
    # Optuna reads the same study: every trial, in number order, with its params.
    assert [t.number for t in trials] == list(range(total))
    assert all(t.params == {"x": float(t.user_attrs["tag"][1])} for t in trials[1:])

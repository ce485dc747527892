"""TPE in the sampler process samples exactly what the server's own copy would, and the
server keeps going when that process dies."""

from __future__ import annotations

import asyncio
import os
import signal
from multiprocessing.connection import wait

import optuna
import pytest

from tuner.asktell.service import AskTellService
from tuner.space.search_space import SearchSpace
from tuner.storage.rdb import open_storage
from tuner.study.spec import StudySpec
from tuner.types import TrialConfig

SPACE = {
    "name": "sp",
    "params": {
        "micro_batch_size": {"type": "int", "low": 1, "high": 64, "log": True},
        "precision": {"type": "categorical", "choices": ["fp32", "bf16", "fp16"]},
        "loss_scale": {"type": "float", "low": 1.0, "high": 65536.0, "log": True, "when": {"precision": "fp16"}},
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    },
}


def _objective(config: dict) -> float:
    return config["micro_batch_size"] * (2.0 if config["precision"] == "bf16" else 1.0) - 1e3 * config["learning_rate"]


async def _drive(hot, pairs: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """Sequential asks and tells: most trials pruned after reports that rank them (TPE then
    splits good and bad on the pruned trials' last values), every 7th failed."""
    asked = []
    for i in range(pairs):
        trial = await hot.ask()
        number, config, params = trial.number, trial.config.to_dict(), trial.params
        asked.append(params)
        if i % 7 == 6:
            await hot.tell(number, None, status="failed", reason="oom")
        elif i % 9 != 8:  # so few complete trials that TPE's good set is mostly pruned ones
            steps = 1 + i % 3  # pruned at different steps: TPE ranks by step, then by value
            for step in range(steps):
                await hot.report(number, step, _objective(config) / (step + 1))
            await hot.tell(number, None, status="pruned", reason="pruned")
        else:
            await hot.tell(number, [_objective(config)])
    return asked


def _service(url: str, sampler_process: bool) -> AskTellService:
    return AskTellService(open_storage(url), writer_process=False, sampler_process=sampler_process)


def _spec(name: str, pairs: int) -> StudySpec:
    space = SearchSpace.from_dict(SPACE)
    return StudySpec(name=name, workload="external", space=space, n_trials=pairs, sampler="tpe", pruner="median", seed=7)


@pytest.mark.parametrize("preloaded", [0, 12])
def test_the_replica_samples_exactly_what_the_server_would(tmp_path, preloaded):
    pairs = 40
    runs = {}
    for remote in (False, True):
        url = f"sqlite:///{tmp_path / f'{remote}.db'}"
        spec = _spec("s", pairs + preloaded)
        optuna.create_study(study_name="s", storage=url, directions=spec.directions)
        if preloaded:  # a study with history: the replica is loaded with it
            first = _service(url, sampler_process=False)
            asyncio.run(_drive(first.hot("s", spec, TrialConfig(), accepting=True), preloaded))
            first.close()
        service = _service(url, sampler_process=remote)
        try:
            hot = service.hot("s", spec, TrialConfig(), accepting=True)
            assert (hot._remote is not None) == remote
            runs[remote] = asyncio.run(_drive(hot, pairs))
            assert (hot._remote is not None) == remote  # never fell back
        finally:
            service.close()
        stored = optuna.load_study(study_name="s", storage=url).trials
        assert [t.number for t in stored] == list(range(pairs + preloaded))
        assert sum(t.state.name == "PRUNED" for t in stored) >= pairs // 2
    assert runs[True] == runs[False]
    assert len({tuple(sorted(p.items())) for p in runs[True]}) > pairs // 2  # it did search


def test_asks_go_on_in_the_server_when_the_sampler_process_dies(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    spec = _spec("k", 30)
    optuna.create_study(study_name="k", storage=url, directions=spec.directions)
    service = _service(url, sampler_process=True)
    try:
        hot = service.hot("k", spec, TrialConfig(), accepting=True)
        asyncio.run(_drive(hot, 10))
        child = service.sampler._child
        os.kill(child.pid, signal.SIGKILL)
        assert wait([child.sentinel], timeout=10)
        asyncio.run(_drive(hot, 20))
        assert hot._remote is None  # fell back once, for good
    finally:
        service.close()
    stored = optuna.load_study(study_name="k", storage=url).trials
    assert [t.number for t in stored] == list(range(30))
    assert all(t.state.is_finished() for t in stored)

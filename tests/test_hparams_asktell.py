"""The user's own hyperparameters and objectives over a real `tuner serve` (SQLite and
PostgreSQL): an ask/tell study of knobs plus hparams with objective `val_acc:max` through
`TunerClient`, types kept end to end, the TPE sampler's own draws, best/Pareto named by
objective, one export everywhere, and the 422s of bad spaces and objectives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import optuna
import pytest

from tests._api_support import LiveServer, new_token, pg_schema_db, sqlite_db
from tuner.cli.main import main as tuner_main
from tuner.client import TunerClient
from tuner.space.search_space import SearchSpace
from tuner.study.samplers import make_sampler
from tuner.study.spec import StudySpec

ROOT = Path(__file__).resolve().parents[1]

#: The issue's space: three knobs and four of the user's own hyperparameters.
USER_SPACE = {
    "name": "user-script",
    "params": {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
        "micro_batch_size": {"type": "int", "low": 8, "high": 64, "step": 8},
    },
    "hparams": {
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "n_layers": {"type": "int", "low": 1, "high": 6},
        "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "nesterov": {"type": "bool", "when": {"optimizer": "sgd"}},
    },
}
TYPES = {
    "learning_rate": float, "warmup_ratio": float, "micro_batch_size": int,
    "dropout": float, "n_layers": int, "optimizer": str, "nesterov": bool,
}


def val_acc(p: dict) -> float:
    """A made-up accuracy surface with its optimum inside the space."""
    acc = 0.9 - 0.02 * (math.log10(p["learning_rate"]) + 3) ** 2 - (p["dropout"] - 0.1) ** 2 - 0.01 * abs(p["n_layers"] - 3)
    return acc + (0.02 if p["optimizer"] == "sgd" and p.get("nesterov") else 0.0) - 0.1 * abs(p["warmup_ratio"] - 0.05)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(request, tmp_path_factory):
    if request.param == "sqlite":
        url = sqlite_db(tmp_path_factory.mktemp("hp"))
        yield from _serve(url)
    else:
        from api.db.migrate import upgrade

        with pg_schema_db() as url:
            upgrade(url)
            yield from _serve(url)


def _serve(url):
    server = LiveServer(url).start()
    try:
        token = new_token(url)
        with TunerClient(server.base, token=token) as client:
            yield client, server, url, token
    finally:
        server.stop()


def test_ask_tell_over_knobs_and_hparams_keeps_types_uses_tpe_and_exports_every_value(served, capsys):
    client, server, url, token = served
    study = client.create_study("user-hp", space=USER_SPACE, run=False, n_trials=20, objectives=["val_acc:max"], sampler="tpe", seed=7)
    told = {}
    for _ in range(20):
        with study.ask() as trial:
            p = trial.params
            assert set(trial.hparams) == {"dropout", "n_layers", "optimizer"} | ({"nesterov"} if p["optimizer"] == "sgd" else set())
            for name, value in p.items():
                assert type(value) is TYPES[name], (name, value)  # int stays int, bool stays bool
            assert trial.hparams == {k: p[k] for k in trial.hparams}
            # the knobs are applied to the config, the hparams are not knobs
            assert trial.config.learning_rate == p["learning_rate"] and trial.config.micro_batch_size == p["micro_batch_size"]
            assert trial.config.warmup_ratio == p["warmup_ratio"]
            told[trial.number] = (dict(p), val_acc(p))
            trial.tell({"val_acc": told[trial.number][1]})

    info = study.info()
    assert info.objective_names == ("val_acc",) and info.directions == ("maximize",)
    # Optuna knows the metric's name, so optuna-dashboard labels the axis val_acc.
    assert optuna.load_study(study_name="user-hp", storage=url).metric_names == ["val_acc"]

    # TPE drew these trials: the same sampler, fed the same results, draws the same values.
    spec = StudySpec(name="user-hp", workload="none", space=SearchSpace.from_dict(USER_SPACE), objectives=("val_acc:max",), seed=7)
    local = optuna.create_study(direction="maximize", sampler=make_sampler(spec, spec.space))
    assert type(local.sampler).__name__ == "TPESampler"
    for number in sorted(told):
        t = local.ask()
        assert spec.space.suggest(t) == pytest.approx(told[number][0]), number
        local.tell(t, told[number][1])

    best_number = max(told, key=lambda n: told[n][1])
    best = study.best()
    assert best.number == best_number and best.objective_values == {"val_acc": pytest.approx(told[best_number][1])}
    assert best.hparams == {k: v for k, v in told[best_number][0].items() if k in TYPES and k not in ("learning_rate", "warmup_ratio", "micro_batch_size")}
    assert all(type(v) is TYPES[k] for k, v in best.hparams.items())
    assert [p.number for p in study.pareto()] == [best_number]

    # One export: the client (REST /best), the dashboard and `tuner export` give the same text.
    torch_text = study.export("torch")
    dashboard = httpx.get(f"{server.base}/api/v1/dashboard/studies/user-hp/export", params={"format": "torch"}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    capsys.readouterr()
    assert tuner_main(["export", "user-hp", "--storage", url, "--format", "torch"]) == 0
    assert capsys.readouterr().out == torch_text
    assert dashboard.status_code == 200 and dashboard.text == torch_text
    chosen = told[best_number][0]
    assert f"LEARNING_RATE = {chosen['learning_rate']!r}" in torch_text
    assert f"WARMUP_RATIO = {chosen['warmup_ratio']!r}" in torch_text
    assert f"MICRO_BATCH_SIZE = {chosen['micro_batch_size']}" in torch_text
    assert f"HPARAMS = {best.hparams!r}" in torch_text
    document = json.loads(study.export("json"))
    assert document["hparams"] == best.hparams and document["learning_rate"] == chosen["learning_rate"]
    compile(torch_text, "best.py", "exec")  # tests/test_cli.py runs such a script, hparams applied


def test_two_user_objectives_give_the_pareto_front(served):
    client, _, url, _ = served
    study = client.create_study("user-mo", space=USER_SPACE, run=False, n_trials=10, objectives=["val_acc:max", "latency_ms:min"], sampler="random")
    points = {}
    for _ in range(10):
        with study.ask() as trial:
            p = trial.params
            values = {"val_acc": val_acc(p), "latency_ms": 5.0 * p["n_layers"] + p["micro_batch_size"] / 8}
            trial.tell(values)
            points[trial.number] = (values["val_acc"], values["latency_ms"])
    expected = {
        n for n, (a, lat) in points.items()
        if not any(a2 >= a and l2 <= lat and (a2, l2) != (a, lat) for a2, l2 in points.values())
    }
    front = study.pareto()
    assert {p.number for p in front} == expected and expected
    assert all(set(p.objective_values) == {"val_acc", "latency_ms"} for p in front)
    assert optuna.load_study(study_name="user-mo", storage=url).metric_names == ["val_acc", "latency_ms"]


BAD_INPUTS = [
    ({"hparams": {"dropout": {"type": "float", "low": 0.5, "high": 0.1}}}, "hparams.dropout.low", "swap them"),
    ({"hparams": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "when": {"optimiser": "sgd"}}}}, "hparams.dropout.when.optimiser", "define optimiser"),
    ({"hparams": {"micro_batch_size": {"type": "int", "low": 1, "high": 8}}}, "hparams.micro_batch_size", "knobs under params"),
    ({"hparams": {"learning_rate": 0.1}, "params_only": True}, "hparams.learning_rate", "put it under params"),
    ({"objectives": ["val_acc:maximise"]}, "objectives", '"val_acc:max"'),
    ({"objectives": ["val_acc"]}, "objectives", '"val_acc:max" or "val_acc:min"'),
]


@pytest.mark.parametrize(("change", "field", "fix"), BAD_INPUTS)
def test_bad_hparams_and_objectives_are_422_naming_field_and_fix(served, change, field, fix):
    _, server, _, token = served
    space = {"name": "bad", "params": {"micro_batch_size": {"type": "int", "low": 1, "high": 8}}}
    change = dict(change)
    if change.pop("params_only", False):
        space["params"] = {"micro_batch_size": 4}
    if "hparams" in change:
        space["hparams"] = change.pop("hparams")
    body = {"name": "bad-input", "space": space, "run": False, "n_trials": 5, "objectives": ["val_acc:max"], **change}
    r = httpx.post(f"{server.base}/api/v1/studies", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 422, r.text
    problems = {p["field"]: p for p in r.json()["problems"]}
    assert field in problems, problems
    assert fix in problems[field]["fix"], problems[field]
    listed = httpx.get(f"{server.base}/api/v1/studies", headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    assert "bad-input" not in {s["name"] for s in listed["items"]}  # nothing half-written


def _python_block_after(doc: Path, marker: str) -> str:
    """The first ```python block after `marker` in `doc`, exactly as written."""
    text = doc.read_text()
    start = text.index("```python\n", text.index(marker)) + len("```python\n")
    return text[start : text.index("\n```", start)]


def test_docs_api_ask_tell_sample_runs_as_written(served, monkeypatch, capsys):
    _, server, url, token = served
    if not url.startswith("sqlite"):
        pytest.skip("the sample is run once, against the SQLite server")
    code = _python_block_after(ROOT / "docs" / "api.md", "test_docs_api_ask_tell_sample_runs_as_written")
    monkeypatch.setenv("TUNER_URL", server.base)
    monkeypatch.setenv("TUNER_TOKEN", token)
    import torch

    threads = torch.get_num_threads()
    try:
        exec(compile(code, "docs/api.md", "exec"), {"__name__": "__main__"})
    finally:
        torch.set_num_threads(threads)  # the sample sets one thread for its tiny model
    out = capsys.readouterr().out
    trials = optuna.load_study(study_name="my-script", storage=url).trials
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 20
    accuracies = [t.values[0] for t in trials]
    assert f"best val_acc {max(accuracies):.3f}" in out and "HPARAMS = {" in out
    assert max(accuracies) > 0.75  # the script learns: tuning found a config that does


def test_workloads_list_their_tunable_hyperparameters(served):
    _, server, _, token = served
    gpt = httpx.get(f"{server.base}/api/v1/workloads/gpt", headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    flags = {p["name"]: (p["tunable"], p["changes_shape"]) for p in gpt["params"]}
    assert flags["d_model"] == (True, True) and flags["dropout"] == (True, False) and flags["vocab_size"] == (False, False)

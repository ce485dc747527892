"""The dashboard's read endpoints against a real SQLite database written through Optuna.

Every expectation is recomputed from Optuna's own view of the same database
(`optuna.load_study`), so the dashboard's direct SQL reading is checked against the
library that wrote the data.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
from pathlib import Path

import optuna
import pytest
import yaml
from fastapi.testclient import TestClient

from api.dashboard import views
from api.main import create_app
from api.settings import Settings
from benchmarks.dashboard_data import GPT_TABLE, bulk_replay_study
from tests._api_support import new_token, sqlite_db

STUDY = "dash"
N_TRIALS = 300
LIMIT_GIB = 100.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    url = sqlite_db(tmp_path_factory.mktemp("dashboard"))
    bulk_replay_study(url, STUDY, N_TRIALS, memory_limit_gib=LIMIT_GIB, seed=7)
    app = create_app(Settings(storage=url, run_studies=False, replay_tables={"gpt_124m": GPT_TABLE}))
    with TestClient(app) as client:
        yield client, url


def _optuna_trials(url: str, name: str = STUDY) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _throughput(t: optuna.trial.FrozenTrial) -> float | None:
    result = t.user_attrs.get("tuner.result") or {}
    return result.get("items_per_s") if result.get("status") == "ok" else None


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return all(c <= 0 for c in t.user_attrs.get("constraint", [0.0]))


def _eligible(trials):
    return [t for t in trials if t.state.name == "COMPLETE" and _feasible(t)]


def test_table_is_sorted_and_paged_on_the_server_like_optuna_would(env):
    client, url = env
    trials = _optuna_trials(url)
    expected = sorted((t for t in trials if _throughput(t) is not None), key=lambda t: (-_throughput(t), t.number))
    expected_numbers = [t.number for t in expected] + sorted(t.number for t in trials if _throughput(t) is None)
    seen = []
    for offset in range(0, N_TRIALS, 100):
        r = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials", params={"sort": "throughput", "order": "desc", "offset": offset, "limit": 100})
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["total"] == N_TRIALS and len(page["rows"]) == 100
        seen += [row["number"] for row in page["rows"]]
    # Equal throughputs (the same measured config) may come in any order; the values may not.
    assert [round(_throughput(trials[n]) or -1, 3) for n in seen] == [round(_throughput(trials[n]) or -1, 3) for n in expected_numbers]
    assert sorted(seen) == list(range(N_TRIALS))
    # Trials without a throughput (oom, not in the table) come last in either order.
    r = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials", params={"sort": "throughput", "order": "asc", "offset": len(expected), "limit": 200})
    assert all(row["throughput"] is None for row in r.json()["rows"])


def test_filter_by_status_and_expression_matches_optuna(env):
    client, url = env
    trials = _optuna_trials(url)
    expected = {
        t.number for t in trials
        if (t.user_attrs["tuner.result"]["status"] == "ok") and t.params["precision"] == "bf16" and t.params["micro_batch_size"] >= 64
    }
    r = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials", params={"status": "ok", "q": "precision=bf16, micro_batch_size>=64", "limit": 500})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {row["number"] for row in body["rows"]} == expected and body["total"] == len(expected)
    assert body["study_total"] == N_TRIALS
    assert r.headers["server-timing"].startswith("table;dur=")
    oom = {t.number for t in trials if t.user_attrs["tuner.result"]["status"] == "oom"}
    assert oom, "the seeded study should contain OOM trials (the table has measured OOMs)"
    r = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials", params={"status": "oom", "limit": 500})
    assert {row["number"] for row in r.json()["rows"]} == oom


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [
        ({"sort": "speed"}, "sort", "speed"),
        ({"q": "learning_rat=0.1"}, "q", "learning_rat"),
        ({"q": "precision bf16"}, "q", "precision bf16"),
        ({"status": "done"}, "status", "done"),
    ],
)
def test_bad_table_queries_name_the_field_value_and_fix(env, params, field, value):
    client, _ = env
    r = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials", params=params)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    [problem] = r.json()["problems"]
    assert problem["field"] == field and problem["value"] == value
    assert problem["fix"]


def test_charts_are_columnar_downsampled_and_keep_every_improvement(env, monkeypatch):
    client, url = env
    monkeypatch.setattr(views, "MAX_HISTORY_POINTS", 40)
    monkeypatch.setattr(views, "MAX_PARCOORDS_LINES", 30)
    # A fresh revision, so the charts are computed under the small caps.
    client.app.state.dashboard.store.forget(STUDY)
    data = client.get(f"/api/v1/dashboard/studies/{STUDY}/charts").json()
    eligible = _eligible(_optuna_trials(url))
    history = data["history"]
    assert history["total"] == len(eligible) > 40
    assert len(history["number"]) == history["shown"] <= 40 + len(history["best_steps"]["number"])
    assert history["best"] == sorted(history["best"])  # running best of a maximised objective
    assert history["best"][-1] == pytest.approx(max(t.value for t in eligible))
    improvements, best = [], -math.inf
    for t in sorted(eligible, key=lambda t: t.number):
        if t.value > best:
            best = t.value
            improvements.append(t.number)
    assert history["best_steps"]["number"] == improvements
    assert set(improvements) <= set(history["number"])

    scatter = data["scatter"]
    assert scatter["memory_limit_gib"] == pytest.approx(LIMIT_GIB)
    assert scatter["over_limit"]["total"] == sum(1 for t in _optuna_trials(url) if t.state.name == "COMPLETE" and not _feasible(t))
    assert scatter["oom"]["total"] == sum(1 for t in _optuna_trials(url) if t.user_attrs["tuner.result"]["status"] == "oom")
    front = list(zip(scatter["pareto"]["memory_gib"], scatter["pareto"]["throughput"], strict=True))
    assert front and all(b[0] >= a[0] and b[1] > a[1] for a, b in itertools.pairwise(front))
    ok_points = list(zip(scatter["ok"]["memory_gib"], scatter["ok"]["throughput"], strict=True))
    for mem, tp in front:  # nothing measured dominates a front point
        assert not any(m <= mem and t > tp for m, t in ok_points)

    parallel = data["parallel"]
    assert parallel["shown"] <= 30 and parallel["total"] == len(eligible)
    labels = [d["label"] for d in parallel["dimensions"]]
    assert labels == ["activation_checkpointing", "micro_batch_size", "precision", "throughput"]
    precision = parallel["dimensions"][2]
    by_number = {t.number: t for t in eligible}
    for n, v in zip(parallel["number"], precision["values"], strict=True):
        assert precision["ticktext"][v] == by_number[n].params["precision"]


def test_summary_best_gain_and_studies_list(env):
    client, url = env
    study = optuna.load_study(study_name=STUDY, storage=url)
    eligible = _eligible(study.get_trials(deepcopy=False))
    top = max(eligible, key=lambda t: (t.value, -t.number))
    baseline = study.user_attrs["tuner.baseline"]["items_per_s"]
    s = client.get(f"/api/v1/dashboard/studies/{STUDY}").json()
    assert s["best"]["number"] == top.number and s["best"]["values"][0] == pytest.approx(top.value)
    assert s["best"]["config"]["precision"] == top.params["precision"]
    assert s["gain"] == pytest.approx(top.value / baseline)
    assert s["progress"]["done"] == s["progress"]["target"] == N_TRIALS
    assert s["hardware"]["label"] == "1x NVIDIA H200"
    listed = client.get("/api/v1/dashboard/studies").json()["items"]
    [row] = [r for r in listed if r["name"] == STUDY]
    assert row["best"]["value"] == pytest.approx(top.value) and row["hardware"] == "1x NVIDIA H200"
    assert row["progress"]["done"] == N_TRIALS


def test_exports_render_the_best_config(env):
    client, url = env
    best_number = client.get(f"/api/v1/dashboard/studies/{STUDY}").json()["best"]["number"]
    config = _optuna_trials(url)[best_number].user_attrs["tuner.config"]
    as_yaml = client.get(f"/api/v1/dashboard/studies/{STUDY}/export", params={"format": "yaml"})
    assert as_yaml.status_code == 200 and "attachment" in as_yaml.headers["content-disposition"]
    loaded = yaml.safe_load(as_yaml.text)
    loaded = loaded[0] if isinstance(loaded, list) else loaded
    assert {k: loaded.get(k, (loaded.get("config") or {}).get(k)) for k in ("micro_batch_size", "precision")} == {
        "micro_batch_size": config["micro_batch_size"], "precision": config["precision"]
    }
    torch_snippet = client.get(f"/api/v1/dashboard/studies/{STUDY}/export", params={"format": "torch"}).text
    assert str(config["micro_batch_size"]) in torch_snippet and "torch" in torch_snippet
    assert client.get(f"/api/v1/dashboard/studies/{STUDY}/export", params={"format": "xml"}).status_code == 422


def test_trial_detail_has_reason_and_missing_trial_is_404(env):
    client, url = env
    oom = next(t for t in _optuna_trials(url) if t.user_attrs["tuner.result"]["status"] == "oom")
    d = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials/{oom.number}").json()
    assert d["status"] == "oom" and "out of memory" in d["reason"].lower()
    assert d["config"] == oom.user_attrs["tuner.config"] and d["params"] == oom.params
    assert d["result"]["peak_memory_bytes"] == oom.user_attrs["tuner.result"]["peak_memory_bytes"]
    r = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials/{N_TRIALS + 5}")
    assert r.status_code == 404 and r.json()["problems"][0]["field"] == "number"
    assert client.get("/api/v1/dashboard/studies/nope/charts").status_code == 404


def test_importance_uses_optunas_evaluator_and_is_cached(env):
    client, _ = env
    first = client.get(f"/api/v1/dashboard/studies/{STUDY}/importance").json()
    assert {i["param"] for i in first["importances"]} == {"activation_checkpointing", "micro_batch_size", "precision"}
    assert sum(i["importance"] for i in first["importances"]) == pytest.approx(1.0)
    assert first["used_trials"] == first["complete_trials"] > 0
    cache = client.app.state.dashboard.importance
    assert client.get(f"/api/v1/dashboard/studies/{STUDY}/importance").json() is not None
    assert (STUDY, "ped_anova") in cache._cache
    r = client.get(f"/api/v1/dashboard/studies/{STUDY}/importance", params={"evaluator": "shap"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "evaluator"


def test_live_study_refreshes_incrementally(env):
    """Trials added by another writer show up; an unchanged study keeps its revision."""
    client, url = env
    study = optuna.create_study(study_name="live", storage=url, direction="maximize")
    store = client.app.state.dashboard.store

    def summary():
        store.view("live").checked_at = 0.0  # skip the poll-coalescing interval
        return client.get("/api/v1/dashboard/studies/live").json()

    first = summary()
    assert first["progress"]["total_trials"] == 0
    assert summary()["revision"] == first["revision"]
    trial = study.ask({"micro_batch_size": optuna.distributions.IntDistribution(1, 64)})
    running = summary()
    assert running["revision"] > first["revision"] and running["progress"]["running"] == 1
    trial.set_user_attr("tuner.result", {"status": "ok", "items_per_s": 1234.0, "peak_memory_bytes": 2**30})
    study.tell(trial, 1234.0)
    done = summary()
    assert done["revision"] > running["revision"]
    assert done["progress"]["running"] == 0 and done["best"]["values"] == [1234.0]
    rows = client.get("/api/v1/dashboard/studies/live/trials").json()["rows"]
    assert rows[0]["status"] == "ok" and rows[0]["throughput"] == 1234.0


def test_pages_assets_and_plotly_from_the_python_package(env):
    import plotly

    client, _ = env
    for path, page in (("/", "studies"), (f"/studies/{STUDY}", "study"), (f"/studies/{STUDY}/trials/3", "trial")):
        r = client.get(path)
        assert r.status_code == 200 and f'data-page="{page}"' in r.text
    assert 'data-study="a&lt;b"' in client.get("/studies/a<b").text  # names are escaped
    shipped = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    r = client.get("/dashboard/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.content == shipped  # httpx undoes the gzip
    raw = client.get("/dashboard/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert raw.content == shipped and "content-encoding" not in raw.headers
    assert gzip.decompress(gzip.compress(shipped)) == shipped
    assert client.get("/dashboard/vendor/plotly.min.js", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    assert client.get("/dashboard/static/app.css").status_code == 200
    assert client.get("/dashboard/static/../router.py").status_code == 404
    assert client.get("/dashboard/static/%2e%2e/router.py").status_code == 404


def test_presets_offer_the_replay_tables_space_and_the_preset_files(env):
    client, _ = env
    presets = client.get("/api/v1/dashboard/presets").json()
    replay = next(p for p in presets if p["name"] == "replay-gpt_124m")
    assert replay["workload"] == "replay" and replay["table"] == "gpt_124m"
    space = yaml.safe_load(replay["text"])
    assert set(space["params"]) == {"micro_batch_size", "precision", "activation_checkpointing"}
    assert any(p["workload"] is None and p["text"] for p in presets)
    assert str(GPT_TABLE) not in json.dumps(presets)  # server paths never reach the browser


def test_reads_need_a_token_when_the_server_says_so(tmp_path):
    url = sqlite_db(tmp_path)
    bulk_replay_study(url, "s", 5)
    app = create_app(Settings(storage=url, run_studies=False, read_requires_token=True))
    token = new_token(url)
    with TestClient(app) as client:
        assert client.get("/api/v1/dashboard/studies/s/charts").status_code == 401
        ok = client.get("/api/v1/dashboard/studies/s/charts", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["history"]["total"] >= 0
        assert client.get("/").status_code == 200  # the page shell itself holds no data


# -- cold sorts and filters on a many-trial study ----------------------------------------------
# The table's contract, written out plainly in Python: the oracle the numpy implementation
# (api/dashboard/trial_table.py) is checked against.
MANY = 2200  # above store._BULK_THRESHOLD, so the first read takes the whole-study queries


def _finite(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _expected_order(trials, value_of, descending):
    """Trials with the value by value (as text when text and numbers mix), ties by number in
    both orders; trials without it last, by number."""
    present = sorted(((value_of(t), t.number) for t in trials if value_of(t) is not None), key=lambda p: p[1])
    if any(isinstance(v, str) for v, _ in present):
        present = [(str(v), n) for v, n in present]
    present.sort(key=lambda p: p[0], reverse=descending)  # stable: ties stay by number
    return [n for _, n in present] + sorted(t.number for t in trials if value_of(t) is None)


def _expected_match(value, op, raw):
    """One filter clause on one value: numbers compare as numbers, text and booleans only
    with = and != (case-insensitive), a missing value never matches."""
    if value is None:
        return False
    text = raw.strip().strip("'\"")
    if isinstance(value, bool) or text.lower() in ("true", "false"):
        wanted = text.lower() in ("true", "1", "yes", "on")
    else:
        try:
            wanted = float(text)
        except ValueError:
            wanted = text
    if isinstance(value, (bool, str)) or isinstance(wanted, (bool, str)):
        equal = str(value).lower() == str(wanted).lower()
        return {"=": equal, "!=": not equal}.get(op, False)
    return {"=": value == wanted, "!=": value != wanted, "<": value < wanted, "<=": value <= wanted, ">": value > wanted, ">=": value >= wanted}[op]


def _forget(client, study):
    dashboard = getattr(client.app.state, "dashboard", None)  # made by the first dashboard request
    if dashboard is not None:
        dashboard.store.forget(study)


def _all_numbers(client, study, **params):
    numbers, offset = [], 0
    while True:
        r = client.get(f"/api/v1/dashboard/studies/{study}/trials", params={**params, "offset": offset, "limit": 500})
        assert r.status_code == 200, r.text
        page = r.json()
        numbers += [row["number"] for row in page["rows"]]
        offset += 500
        if offset >= page["total"]:
            return numbers, page


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    url = sqlite_db(tmp_path_factory.mktemp("many"))
    bulk_replay_study(url, "many", MANY, memory_limit_gib=LIMIT_GIB, seed=3)
    _add_mixed_study(url)
    app = create_app(Settings(storage=url, run_studies=False))
    with TestClient(app) as client:
        yield client, url


@pytest.fixture(scope="module")
def many_trials(many):
    """The oracle's input, read from Optuna once per study: nothing writes to `many` or
    `mixed` after the fixture, and each test still makes its own cold read of the server."""
    _, url = many
    return {study: _optuna_trials(url, study) for study in ("many", "mixed")}


def _add_mixed_study(url):
    """A study whose knobs mix types (a categorical of ints, floats and strings, a knob only
    some trials have, a boolean) and whose results include a NaN and a legacy double-encoded
    attr: the cases the columnar table and the SQL-side result extraction must get right."""
    from benchmarks.dashboard_data import insert_finished_trials
    from tuner.storage.rdb import open_storage

    dists = {
        "choice": optuna.distributions.CategoricalDistribution([3, "b", 2.5, "a", "10"]),
        "flag": optuna.distributions.CategoricalDistribution([True, False]),
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
    }
    storage = open_storage(url)
    study = optuna.create_study(study_name="mixed", storage=storage, direction="minimize")
    study.set_user_attr("tuner.spec", {"objectives": ["val_loss"], "n_trials": 60})
    frozen = []
    for i in range(60):
        params = {"choice": dists["choice"].choices[(i * 7) % 5], "flag": i % 3 == 0}
        if i % 4:
            params["lr"] = 10 ** -(1 + (i * 13 % 30) / 10)
        result = {"status": "ok", "val_loss": 3.0 - (i * 37 % 60) / 30, "items_per_s": float(1000 + (i * 11 % 17)), "peak_memory_bytes": (i % 9) * 2**30}
        if i == 5:
            result["items_per_s"] = math.nan  # Python writes NaN, SQLite's JSON parser refuses it
        if i == 2:
            del result["items_per_s"]  # missing, and before the NaN one: both go last, by number
        attrs = {"tuner.result": json.dumps(result) if i == 8 else result, "tuner.config": {"knob": i}, "tuner.kind": "trial"}
        frozen.append(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=result["val_loss"], user_attrs=attrs,
        ))
    insert_finished_trials(storage, study._study_id, frozen)


def _value_of(key):
    def value(t):
        result = t.user_attrs.get("tuner.result") or {}
        if isinstance(result, str):
            result = json.loads(result)
        if key == "number":
            return t.number
        if key == "throughput":
            return _finite(result.get("items_per_s"))
        if key == "peak_memory_gib":
            v = _finite(result.get("peak_memory_bytes"))
            return v / 2**30 if v is not None else None
        if key == "status":
            return result.get("status") or {"COMPLETE": "ok", "FAIL": "failed", "PRUNED": "pruned"}[t.state.name]
        if key == "duration_s":
            return (t.datetime_complete - t.datetime_start).total_seconds()
        if key == "value":
            return _finite(t.value)
        if key == "val_loss":
            return _finite(result.get("val_loss"))
        return t.params.get(key.removeprefix("param."))
    return value


@pytest.mark.parametrize(
    ("study", "sort", "descending"),
    [
        ("many", "throughput", True),
        ("many", "peak_memory_gib", False),
        ("many", "param.micro_batch_size", True),
        ("many", "param.precision", False),
        ("many", "param.activation_checkpointing", True),
        ("many", "status", False),
        ("many", "duration_s", True),
        ("mixed", "param.choice", False),  # ints, floats and strings: compared as text
        ("mixed", "param.choice", True),
        ("mixed", "param.lr", False),  # a knob only some trials have: the others last
        ("mixed", "throughput", True),  # NaN and a double-encoded result
        ("mixed", "val_loss", False),
    ],
)
def test_a_cold_sort_of_a_many_trial_study_is_the_right_order(many, many_trials, study, sort, descending):
    client, _ = many
    _forget(client, study)  # nothing of the study cached: a cold view
    trials = many_trials[study]
    numbers, page = _all_numbers(client, study, sort=sort, order="desc" if descending else "asc")
    assert page["total"] == len(trials)
    assert numbers == _expected_order(trials, _value_of(sort), descending)


@pytest.mark.parametrize(
    ("study", "status", "query", "sort"),
    [
        ("many", "ok", "precision=BF16, micro_batch_size>=64", "throughput"),
        ("many", "", "activation_checkpointing=yes; throughput>50000", "peak_memory_gib"),
        ("many", "oom,failed", "precision!=fp32", "number"),
        ("mixed", "", "choice=3", "number"),  # the int 3, not the text "3.0"
        ("mixed", "", "choice>2", "number"),  # numbers only: text has no order
        ("mixed", "", "choice!=a", "param.choice"),
        ("mixed", "", "flag=true, lr<0.01", "param.lr"),
        ("mixed", "", "throughput>=1005", "throughput"),  # the NaN result never matches
    ],
)
def test_a_cold_filter_of_a_many_trial_study_keeps_exactly_the_matching_trials(many, many_trials, study, status, query, sort):
    client, _ = many
    _forget(client, study)
    trials = many_trials[study]
    statuses = {s for s in status.split(",") if s}
    clauses = [re.match(r"\s*([\w.]+)\s*(<=|>=|!=|=|<|>)\s*(.+?)\s*$", c).groups() for c in re.split(r"[,;]", query)]
    kept = [
        t for t in trials
        if (not statuses or _value_of("status")(t) in statuses)
        and all(_expected_match(_value_of(name if name in ("throughput",) else f"param.{name}")(t), op, raw) for name, op, raw in clauses)
    ]
    assert kept, "the filter should keep some trials, else the test shows little"
    numbers, page = _all_numbers(client, study, sort=sort, order="desc", status=status, q=query)
    assert page["total"] == len(kept) and page["study_total"] == len(trials)
    assert numbers == _expected_order(kept, _value_of(sort), True)


def test_the_sqlite_fast_read_equals_the_generic_one(many):
    """SQLite cuts the result attr down with json_extract; every other database decodes it
    in Python. Both must build the same trials (NaN and a double-encoded attr included)."""
    from api.dashboard.store import DashboardStore

    client, _ = many
    engine = client.app.state.ctx.engine
    for study in ("many", "mixed"):
        fast = DashboardStore(engine, extract_in_sql=True).view(study)
        generic = DashboardStore(engine, extract_in_sql=False).view(study)
        assert len(fast.trials) == len(generic.trials) > 0
        for trial_id, trial in generic.trials.items():
            other = fast.trials[trial_id]
            # NaN != NaN: compare the results with NaN spelled out
            assert json.dumps(other.result, sort_keys=True) == json.dumps(trial.result, sort_keys=True)
            assert (other.number, other.status, other.values, other.params, other.feasible) == (trial.number, trial.status, trial.values, trial.params, trial.feasible)
    mixed = DashboardStore(engine).view("mixed")
    by_number = {t.number: t for t in mixed.trials.values()}
    assert by_number[8].result["items_per_s"] == 1000 + 8 * 11 % 17  # decoded from the double-encoded attr
    assert math.isnan(by_number[5].result["items_per_s"]) and by_number[5].throughput is None


def test_configs_are_read_on_demand_and_match_what_the_loop_stored(many, many_trials):
    client, _ = many
    best = client.get("/api/v1/dashboard/studies/many").json()["best"]
    trials = many_trials["many"]
    assert best["config"] == trials[best["number"]].user_attrs["tuner.config"]
    detail = client.get("/api/v1/dashboard/studies/mixed/trials/17").json()
    assert detail["config"] == {"knob": 17}


def test_trial_page_json_has_the_per_rank_nvml_table_and_the_launch_overhead(env):
    """A multi-rank trial's per-rank NVML lines (built by the same functions a trial uses,
    from real H200 samples), a CPU multi-rank trial's reasons, and a profiled trial's
    launch latency / idle gaps, as the trial page receives them."""
    from tests.shared_data import H200_DIR
    from tests.test_launch_overhead import GPU_TRACE
    from tuner.hardware.profile import load_profile
    from tuner.hardware.telemetry_summary import (
        CPU_RANK_REASON,
        BandwidthPeaks,
        per_rank_telemetry,
        rank_row,
        summarise_samples,
    )
    from tuner.study.profiling import profile_attr_key
    from tuner.trial.launch_overhead import analyse_trace

    client, url = env
    samples = json.loads((H200_DIR / "telemetry_and_compile.json").read_text())["nvml_samples_under_load"]
    peaks = BandwidthPeaks.from_profile(load_profile(H200_DIR / "probe.json"))
    capped = [dict(s, sm_clock=s["sm_clock"] - 300) for s in samples]
    gpu_table = per_rank_telemetry(
        [rank_row({**summarise_samples(s, peaks), "available": True}) for s in (samples, capped)] + [None]
    )
    cpu_table = per_rank_telemetry([rank_row(None, reason=CPU_RANK_REASON)] * 2)
    study = optuna.create_study(study_name="ranks", storage=url, direction="maximize")
    for telemetry in ({"nvml_per_rank": gpu_table}, {"nvml_per_rank": cpu_table}, {}):
        trial = study.ask()
        trial.set_user_attr("tuner.result", {"status": "ok", "items_per_s": 100.0, "telemetry": telemetry})
        study.tell(trial, 100.0)
    study.set_user_attr(
        profile_attr_key(0), {"device": "cuda", "launch_overhead": analyse_trace(GPU_TRACE), "cpu": None}
    )

    gpu = client.get("/api/v1/dashboard/studies/ranks/trials/0").json()
    table = gpu["rank_telemetry"]
    assert [c["key"] for c in table["columns"]][:3] == ["util_gpu_mean", "util_mem_mean", "mem_bw_share_mean"]
    assert [r["rank"] for r in table["rows"]] == [0, 1, 2]
    rank0, rank1, dead = table["rows"]
    assert rank0["available"] and rank0["reason"] is None and rank0["samples"] == 5
    assert rank0["values"]["util_gpu_mean"] == pytest.approx(99.2)
    assert rank0["values"]["sm_clock_mean_mhz"] == pytest.approx(1896.0)
    assert rank0["values"]["mem_bw_share_mean"] == pytest.approx(0.61 * 4.8e12 / 4.258131900187103e12)
    assert 0 < rank0["values"]["pcie_rx_share_mean"] < 0.01
    assert rank0["throttle_reasons"] == ["sw_power_cap"]
    # the power-capped rank (lower SM clock) is the worst, and flagged on its row
    assert (table["worst_rank"], table["worst_by"]) == (1, "lowest mean SM clock")
    assert rank1["worst"] and not rank0["worst"]
    assert dead == {
        "rank": 2, "available": False, "reason": "the rank sent no result", "samples": 0, "worst": False,
        "values": {c["key"]: None for c in table["columns"]}, "throttle_reasons": [],
    }  # fmt: skip
    assert table["sampled_ranks"] == 2
    launch = gpu["launch_overhead"]
    assert launch["device"] == "cuda" and launch["gpu_launch"]["idle_share"] == pytest.approx(210 / 570)
    assert launch["gpu_launch"]["launch_latency_us"]["p50"] == 40

    cpu = client.get("/api/v1/dashboard/studies/ranks/trials/1").json()
    assert cpu["status"] == "ok"  # no NVML on CPU ranks never fails the trial
    assert [r["reason"] for r in cpu["rank_telemetry"]["rows"]] == [CPU_RANK_REASON] * 2
    assert cpu["rank_telemetry"]["worst_rank"] is None and cpu["rank_telemetry"]["reason"] == CPU_RANK_REASON
    assert cpu["launch_overhead"] is None  # never profiled

    single = client.get("/api/v1/dashboard/studies/ranks/trials/2").json()
    assert single["rank_telemetry"] is None and single["launch_overhead"] is None


def test_rank_telemetry_view_tolerates_odd_stored_values():
    assert views.rank_telemetry({}) is None
    assert views.rank_telemetry({"nvml_per_rank": "x"}) is None
    odd = views.rank_telemetry({"nvml_per_rank": {"ranks": [None, {"rank": 0, "available": True, "util_gpu_mean": float("nan")}]}})
    assert len(odd["rows"]) == 1 and odd["rows"][0]["values"]["util_gpu_mean"] is None
    assert views.launch_overhead({"profile": {"launch_overhead": None}}) is None

"""The dashboard of an inference (serving) study, on a real tiny study run on this CPU:
the JSON API (QPS vs p99 scatter with the SLO and the Pareto front, serving columns,
best vs default, a trial's histograms) checked against tuner's own outcome, and the
pages in real headless Chromium.

The study (tests/test_inference_study.py's tiny classifier with an outlier input
channel, grid-searched) has every kind of result the page must tell apart: `ok` configs,
one over the SLO (a 400 ms batching window against a 150 ms SLO), and int8 configs the
accuracy guard rejects.
"""

from __future__ import annotations

import warnings

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests._api_support import LiveServer, sqlite_db
from tests.inference_test_workloads import TinyServed
from tests.test_dashboard_browser import CHROMIUM, SHOTS, browser, page  # noqa: F401 - the shared Chromium fixtures
from tests.test_inference_study import QUICK_RAMP
from tuner.inference.objectives import pareto_front
from tuner.space.search_space import SearchSpace
from tuner.study.inference_study import run_inference_study
from tuner.study.spec import StudySpec
from tuner.workloads import register_workload

warnings.filterwarnings("ignore", category=DeprecationWarning)
register_workload(TinyServed)
STUDY = "serving-dash"
SLO_MS = 150.0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    url = sqlite_db(tmp_path_factory.mktemp("inference-dash"))
    space = SearchSpace.from_dict(
        {
            "name": "tiny-serving",
            "kind": "inference",
            "params": {
                "max_batch_size": 64,
                "int8_backend": "fbgemm",
                "serving_precision": {"type": "categorical", "choices": ["fp32", "int8_dynamic"]},
                # 400 ms: a batch that never fills holds every request past the 150 ms SLO
                "batch_window_ms": {"type": "categorical", "choices": [0, 2, 400]},
            },
        }
    )
    spec = StudySpec(
        name=STUDY,
        workload="tiny-served",
        workload_params={"outlier": 1000.0},
        space=space,
        objectives=("qps_at_slo",),
        sampler="grid",
        n_trials=6,
        slo_p99_ms=SLO_MS,
    )
    # confirm_rounds=0: what the dashboard draws, not the confirmation (test_inference_starting)
    outcome = run_inference_study(spec, storage=url, progress=False, ramp=QUICK_RAMP, confirm_rounds=0)
    return url, outcome


@pytest.fixture(scope="module")
def client(served):
    url, _ = served
    with TestClient(create_app(Settings(storage=url, run_studies=False))) as c:
        yield c


def test_study_api_draws_qps_vs_p99_with_the_slo_and_the_pareto_front(served, client):
    _, outcome = served
    base = f"/api/v1/dashboard/studies/{STUDY}"
    assert client.get(base).json()["kind"] == "inference"
    data = client.get(f"{base}/inference").json()
    assert data["slo_p99_ms"] == SLO_MS and data["objectives"] == ["qps_at_slo"]
    by_status: dict[str, set[int]] = {}
    for number, _, result in outcome.trials:
        by_status.setdefault(result.status.value, set()).add(number)
    assert {"ok", "over_slo", "inaccurate"} <= set(by_status), by_status
    sc = data["scatter"]
    # Every trial with a measured (QPS, p99) is one point, grouped by what may be best.
    assert set(sc["ok"]["number"]) == by_status["ok"]
    assert set(sc["over_slo"]["number"]) == by_status["over_slo"]
    for n, qps, p99 in zip(sc["ok"]["number"], sc["ok"]["qps"], sc["ok"]["p99_ms"], strict=True):
        result = next(r for m, _, r in outcome.trials if m == n)
        assert (qps, p99) == (result.qps, result.p99_ms) and p99 <= SLO_MS
    assert all(p99 > SLO_MS for p99 in sc["over_slo"]["p99_ms"])
    # The accuracy guard ran no load test on the int8 configs: listed, not plotted.
    assert {u["number"] for u in sc["unplotted"] if u["status"] == "inaccurate"} == by_status["inaccurate"]
    results = [r for _, _, r in outcome.trials]
    assert sc["pareto"]["number"] == [outcome.trials[i][0] for i in pareto_front(results, SLO_MS)]
    assert sc["pareto"]["number"] and set(sc["pareto"]["number"]) <= by_status["ok"]
    # Serving columns, not training ones; over-SLO and inaccurate rows never best.
    keys = [c["key"] for c in data["columns"]]
    assert keys == ["number", "status", "qps", "p99_ms", "serving_precision", "max_batch_size", "batch_window_ms", "instances", "accuracy_delta"]
    rows = {r["number"]: r for r in data["trials"]}
    assert len(rows) == len(outcome.trials)
    assert [n for n, r in rows.items() if r["best"]] == [outcome.best_trial]
    for n in by_status["inaccurate"]:
        assert rows[n]["serving_precision"] == "int8_dynamic" and rows[n]["accuracy_metric"] == "top1_disagreement"
        assert rows[n]["accuracy_delta"] > 0.05 and rows[n]["qps"] is None
    for n in by_status["over_slo"]:
        assert rows[n]["batch_window_ms"] == 400 and rows[n]["qps"] is None
    # The best card: the serving config and its QPS ratio to the default, as `tuner tune --json`.
    best = data["best"]
    assert best["number"] == outcome.best_trial and best["config"] == outcome.best_config.to_dict()
    assert best["ratio"] == pytest.approx(outcome.ratio)
    assert data["baseline"]["qps"] == outcome.baseline_result.qps
    assert best["notes"] == list(outcome.best_result.notes)
    # A training study has no inference view: a 404 naming the field, not a 5xx.
    r = client.get("/api/v1/dashboard/studies/no-such/inference")
    assert r.status_code == 404 and r.json()["problems"][0]["field"] == "name"


def test_studies_list_shows_the_serving_best_and_its_qps_ratio_to_the_default(served, client):
    _, outcome = served
    item = next(i for i in client.get("/api/v1/dashboard/studies").json()["items"] if i["name"] == STUDY)
    # tuner's serving best (ok, within the SLO, accurate), not Optuna's raw best value
    assert item["best"] == {"number": outcome.best_trial, "value": outcome.best_result.qps}
    assert item["gain"] == pytest.approx(outcome.ratio)
    report = item["gain_report"]
    assert report["figure"] == f"x{outcome.ratio:.2f}" and report["source"] == "search"
    assert f"QPS at p99 <= {SLO_MS:g} ms vs the default config" in report["description"]
    assert f"{outcome.baseline_result.qps:,.0f} QPS" in report["measured"]


def test_trial_api_has_both_histograms_the_accuracy_guard_and_the_notes(served, client):
    _, outcome = served
    number, config, result = next(t for t in outcome.trials if t[0] == outcome.best_trial)
    detail = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials/{number}").json()["inference"]
    assert detail["status"] == "ok" and detail["config"] == config.to_dict()
    lat, batch = detail["latency_histogram"], detail["batch_histogram"]
    assert dict(zip(lat["bucket"], lat["count"], strict=True)) == result.latency_histogram_ms
    assert dict(zip(batch["bucket"], batch["count"], strict=True)) == result.batch_histogram
    assert [float(b) for b in batch["bucket"]] == sorted(float(b) for b in batch["bucket"])  # by batch size
    edges = [float(b.lstrip("<=>")) for b in lat["bucket"]]
    assert edges == sorted(edges) and sum(lat["count"]) > 0
    assert detail["p99_ms"] == result.p99_ms and detail["qps"] == result.qps and detail["is_best"]
    assert detail["accuracy"]["top1_agreement"] == result.accuracy["top1_agreement"]
    inaccurate = next(t for t in outcome.trials if t[2].status.value == "inaccurate")
    shown = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials/{inaccurate[0]}").json()["inference"]
    assert shown["status"] == "inaccurate" and "fp32 eager reference" in shown["reason"]
    assert shown["notes"] == list(inaccurate[2].notes) and any("fbgemm" in n or "quantize_dynamic" in n for n in shown["notes"])
    assert shown["latency_histogram"] == {"bucket": [], "count": []} and not shown["is_best"]


@pytest.mark.browser
def test_the_pages_draw_the_scatter_with_the_slo_and_the_trial_histograms(served, page):  # noqa: F811 - a fixture
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    url, outcome = served
    measured = {n for n, _, r in outcome.trials if r.status.value in ("ok", "over_slo")}
    live = LiveServer(url, "--no-run").start()
    try:
        page.goto(f"{live.base}/studies/{STUDY}")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        chart = page.locator("#chart-qps-p99")
        drawn = chart.evaluate(
            """(el) => ({
                // plotly draws one <g class="trace"> per trace, in order, each marker a path.point
                traces: el.data.map((t, i) => ({ name: t.name, numbers: t.customdata || [],
                    drawn: el.querySelectorAll('.scatterlayer .trace')[i].querySelectorAll('path.point').length })),
                shapes: el.layout.shapes.map((s) => ({ y0: s.y0, y1: s.y1 })),
                drawnShapes: el.querySelectorAll('.shapelayer path').length,
            })"""
        )
        trials_plotted = [n for t in drawn["traces"] if t["name"].startswith(("ok", "over SLO")) for n in t["numbers"]]
        assert sorted(trials_plotted) == sorted(measured)  # one point per measured trial
        for trace in drawn["traces"]:
            if trace["name"].startswith(("ok", "over SLO")):
                assert trace["drawn"] == len(trace["numbers"]), trace  # and each is on screen
        assert {"y0": SLO_MS, "y1": SLO_MS} in drawn["shapes"] and drawn["drawnShapes"] >= 1  # the SLO line
        assert any(t["name"].startswith("Pareto front") for t in drawn["traces"])
        assert page.locator("#trials tbody tr").count() == len(outcome.trials)
        headers = page.locator("#trials th").all_text_contents()
        assert any(h.startswith("QPS at SLO") for h in headers) and not any("MFU" in h or "tokens" in h for h in headers)
        assert "QPS" in page.locator("#best-config").text_content()
        page.screenshot(path=str(SHOTS / "inference-study.png"), full_page=True)
        # the studies list: the QPS-at-SLO ratio to the default, as the gain of a training study
        page.goto(live.base + "/")
        row = page.locator(f'#studies tr[data-study="{STUDY}"]')
        row.wait_for()
        assert row.locator('[data-role="gain-figure"]').inner_text() == f"x{outcome.ratio:.2f}"
        assert "QPS at p99" in row.locator('[data-role="gain-description"]').inner_text()
        page.goto(f"{live.base}/studies/{STUDY}/trials/{outcome.best_trial}")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        for chart_id in ("#chart-latency-histogram", "#chart-batch-histogram"):
            bars = page.locator(f"{chart_id} .barlayer path").count()
            assert bars >= 1, chart_id
        assert "top1_agreement" in page.locator("#serving-accuracy").text_content()
        page.screenshot(path=str(SHOTS / "inference-trial.png"), full_page=True)
    finally:
        live.stop()

"""The dashboard end to end in real headless Chromium, against a real `tuner serve`.

The study shown is run by the real study loop (`run_study`, replay workload on the H200
table, the config generator with the H200 probe) into the SQLite database the server
uses; a tiny GPT study trains for real on the CPU and has its best trial profiled by
torch.profiler; an ask/tell trial carries the NVML readings taken on the real H200
(shared data) as a GPU worker would send them; the study started from the form is run by
the server's own background runner. Screenshots (1280x800) go to artifacts/screenshots/.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path

import optuna
import pytest

from tests._api_support import GPT_TABLE, ROOT, LiveServer, new_token, sqlite_db
from tests.shared_data import H200_DIR
from tests.test_study_profiling import SPACE as TINY_GPT_SPACE
from tests.test_study_profiling import gpt_spec

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
STUDY = "browser-demo"
SLOWER = "only-slower-configs"
TRAINED = "tiny-gpt-trained"
EXTERNAL = "gpu-worker"
H200_PROBE = H200_DIR / "probe.json"
H200_NVML = json.loads((H200_DIR / "telemetry_and_compile.json").read_text())["nvml_samples_under_load"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from benchmarks.dashboard_data import replay_space_dict
    from tuner.executors.inline import InlineExecutor
    from tuner.hardware.profile import load_profile
    from tuner.space.search_space import SearchSpace
    from tuner.study import run_study
    from tuner.study.profiling import profile_trial
    from tuner.study.spec import StudySpec
    from tuner.types import TrialBudget

    url = sqlite_db(tmp_path_factory.mktemp("browser"))
    # A second server on the same database whose reads need a token: started now, so it
    # starts while the studies below run (the test_the_dashboard_works_on_a_server_whose_reads_need_a_token test)
    locked = LiveServer(url, "--read-requires-token", "--no-run")
    locked_start = threading.Thread(target=locked.start)
    locked_start.start()
    spec = StudySpec(
        name=STUDY, workload="replay", space=SearchSpace.from_dict(replay_space_dict()),
        workload_params={"table": str(GPT_TABLE)}, n_trials=12, memory_limit_bytes=100 * 2**30, sampler="tpe",
    )
    # test_study_profiling's tiny GPT study, trained for 8 steps so the curves have points
    trained = dataclasses.replace(gpt_spec(TRAINED, n_trials=2), budget=TrialBudget(max_steps=8, warmup_steps=1, eval_batches=1))
    # Only tf32/fp32 at small batches: every trial is slower than the default (bf16, 8).
    slower = StudySpec(
        name=SLOWER, workload="replay", workload_params={"table": str(GPT_TABLE)}, n_trials=4, sampler="grid", use_generator=False,
        space=SearchSpace.from_dict({"name": "slower", "params": {"micro_batch_size": {"type": "categorical", "choices": [8, 16]}, "precision": {"type": "categorical", "choices": ["tf32", "fp32"]}}}),
    )  # fmt: skip
    with InlineExecutor(1) as executor:
        run_study(spec, storage=url, executor=executor, hardware=load_profile(str(H200_PROBE)))
        run_study(trained, storage=url, executor=executor)
        run_study(slower, storage=url, executor=executor)
    profiled, _ = profile_trial(url, TRAINED, steps=2, device="cpu")
    live = LiveServer(url).start()
    locked_start.join()
    try:
        token = new_token(url)
        yield live, url, token, {"profiled": profiled, "external": _tell_a_gpu_workers_trial(live.base, token), "locked": locked}
    finally:
        live.stop()
        locked.stop()


def _tell_a_gpu_workers_trial(base: str, token: str) -> int:
    """One ask/tell trial told through the REST API the way a GPU worker reports one: its
    learning curve and the NVML record of the real H200 readings."""
    from tuner.client import TunerClient
    from tuner.hardware.telemetry_summary import summarise_samples, telemetry_record

    client = TunerClient(base, token)
    study = client.create_study(EXTERNAL, space=TINY_GPT_SPACE, workload="gpt", run=False, n_trials=4, sampler="random")
    with study.ask() as trial:
        for step, loss in enumerate([5.6, 5.1, 4.7, 4.4], start=1):
            trial.report(step, loss)
        nvml = telemetry_record(summarise_samples(H200_NVML), H200_NVML)
        trial.tell(378_571.1, metrics={"val_loss": 4.4}, telemetry={"nvml": nvml})
        return trial.number


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.screenshot(path=str(SHOTS / f"{name}-full.png"), full_page=True)


def _points(page, chart_id: str, trace: int | None = None) -> int:
    """Data points plotly holds for a chart (its gd.data; one trace or all), 0 when never drawn."""
    return page.evaluate(
        """([id, trace]) => { const gd = document.getElementById(id);
             if (!gd || !gd.data) return 0;
             const traces = trace === null ? gd.data : [gd.data[trace]];
             return traces.reduce((n, t) => n + ((t.x || (t.dimensions && t.dimensions[0].values) || []).length), 0); }""",
        [chart_id, trace],
    )


def test_study_list_study_page_charts_and_trial_page(server, page):
    live, url, _, _ = server
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    page.goto(live.base + "/")
    row = page.locator(f'#studies tr[data-study="{STUDY}"]')
    row.wait_for()
    done = sum(1 for t in trials if t.state.name in ("COMPLETE", "FAIL", "PRUNED") and t.user_attrs.get("tuner.result", {}).get("status") != "infeasible")
    assert row.locator('[data-role="progress"]').inner_text() == f"{done}/12"
    assert "NVIDIA H200" in row.inner_text()
    _shot(page, "studies")

    row.locator("a").first.click()
    page.wait_for_url(re.compile(f"/studies/{STUDY}$"))
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    assert page.locator("#study-name").inner_text() == STUDY
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert _points(page, "chart-history", trace=0) == len([t for t in complete if all(c <= 0 for c in t.user_attrs.get("constraint", [0]))])
    assert _points(page, "chart-scatter") >= len(complete)
    assert page.locator("#chart-history .scatterlayer path.point").count() > 0  # drawn, not just data
    assert page.locator("#chart-parallel .parcoords").count() == 1 and _points(page, "chart-parallel") > 0
    assert _points(page, "chart-importance") == 3  # one bar per knob of the space
    assert page.locator("#trials tbody tr").count() == min(25, len(trials))
    _shot(page, "study")

    # Sorting by throughput puts the study's best trial on top.
    page.locator('#trials th[data-key="throughput"]').click()
    page.wait_for_function("document.querySelector('#trials th[data-key=throughput] .arrow') !== null")
    best = max((t for t in complete if all(c <= 0 for c in t.user_attrs.get("constraint", [0]))), key=lambda t: (t.value, -t.number))
    first = page.locator("#trials tbody tr").first
    assert float(first.get_attribute("data-number")) in {t.number for t in complete if t.value == best.value}

    number = int(first.get_attribute("data-number"))
    first.locator("td").nth(2).click()
    page.wait_for_url(re.compile(f"/studies/{STUDY}/trials/{number}$"))
    page.wait_for_function("document.body.dataset.ready === '1'")
    config = page.locator("#trial-config").inner_text()
    trial = next(t for t in trials if t.number == number)
    assert re.search(rf"micro_batch_size\s+{trial.params['micro_batch_size']}(?!\d)", config)
    assert re.search(rf"precision\s+{trial.params['precision']}(?![0-9a-z])", config)
    assert page.locator("#trial-title").inner_text() == f"Trial #{number}"
    _shot(page, "trial")


def test_start_a_study_from_the_form_watch_it_grow_without_reloading_and_stop_it(server, page):
    live, _, token, _ = server
    page.goto(live.base + "/")
    page.locator("#studies").wait_for()
    page.click("#token-button")
    page.fill("#token-input", token)
    page.click('#token-form button[value="save"]')
    page.click("#new-study-button")
    form = page.locator("#new-study")
    form.locator('input[name="name"]').fill("from-the-form")
    form.locator('select[name="preset"]').select_option("replay-gpt_124m")
    assert form.locator('select[name="workload"]').input_value() == "replay"
    # Replayed trials take ~50 ms each: far more trials than the test watches, so the
    # study is still running when the page is checked, whatever this machine's speed.
    form.locator('input[name="n_trials"]').fill("5000")
    form.locator('select[name="sampler"]').select_option("random")
    _shot(page, "new-study-form")
    page.evaluate("window.__notReloaded = true")
    form.locator('button[type="submit"]').click()

    row = page.locator('#studies tr[data-study="from-the-form"]')
    progress = row.locator('[data-role="progress"]')
    progress.wait_for(timeout=15_000)
    growing = """n => { const p = document.querySelector('#studies tr[data-study="from-the-form"] [data-role="progress"]');
                        return p && parseInt(p.textContent) > n; }"""
    page.wait_for_function(growing, arg=0, timeout=60_000)
    seen = int(progress.inner_text().split("/")[0])
    page.wait_for_function(growing, arg=seen, timeout=60_000)
    assert int(progress.inner_text().split("/")[0]) > seen
    assert page.evaluate("window.__notReloaded") is True  # the same page updated itself
    # A replayed table is planned for the machine that measured it (the probe.json beside it).
    assert "NVIDIA H200" in row.inner_text()
    _shot(page, "studies-live")

    # Stop it from its row: the state turns to stopped and the count stays short of 5000.
    row.get_by_role("button", name="Stop").click()
    page.wait_for_function(
        """() => { const r = document.querySelector('#studies tr[data-study="from-the-form"]');
                   return r && r.textContent.includes('stopped') && r.querySelector('button') && r.querySelector('button').textContent === 'Resume'; }""",
        timeout=60_000,
    )
    stopped_at = int(progress.inner_text().split("/")[0])
    assert stopped_at < 5000
    assert page.evaluate("window.__notReloaded") is True

    # Resume it from the row: it runs again and its count grows past where it stopped.
    row.get_by_role("button", name="Resume").click()
    page.wait_for_function(growing, arg=stopped_at, timeout=60_000)

    # The study page is live too: its trial count grows on the same page, and its own
    # Stop button stops the study.
    page.goto(f"{live.base}/studies/from-the-form")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    page.evaluate("window.__notReloaded = true")
    count = page.locator("#trial-count")
    shown = int(count.inner_text().split("/")[0])
    page.wait_for_function(
        "n => parseInt(document.getElementById('trial-count').textContent) > n", arg=shown, timeout=60_000
    )
    page.locator(".page-head").get_by_role("button", name="Stop").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('button')].some((b) => b.textContent === 'Resume')", timeout=60_000
    )
    assert page.evaluate("window.__notReloaded") is True
    _shot(page, "study-stopped")


def test_bad_form_input_shows_the_servers_problem_next_to_the_field(server, page):
    live, _, token, _ = server
    page.goto(live.base + "/")
    page.evaluate("t => localStorage.setItem('tuner.token', t)", token)
    page.reload()
    page.click("#new-study-button")
    form = page.locator("#new-study")
    form.locator('input[name="name"]').fill("bad-space")
    form.locator('select[name="workload"]').select_option("replay")
    form.locator('textarea[name="space"]').fill("params:\n  micro_bach_size: {type: int, low: 1, high: 8}\n")
    form.locator('button[type="submit"]').click()
    error = form.locator('.field[data-field="space"] .error')
    error.wait_for()
    page.wait_for_function("() => document.querySelector('.field[data-field=space] .error').textContent.length > 0")
    assert "micro_bach_size" in error.inner_text() and "micro_batch_size" in error.inner_text()


def test_a_trained_trial_shows_its_loss_curve_lr_schedule_and_profiler_hotspots(server, page):
    from tuner.study.profiling import stored_profile

    live, url, _, made = server
    number = made["profiled"]
    trial = optuna.load_study(study_name=TRAINED, storage=url).trials[number]
    losses = trial.user_attrs["tuner.result"]["loss_curve"]
    page.goto(f"{live.base}/studies/{TRAINED}/trials/{number}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    # A throughput study reports no intermediate values: the chart is the training loss.
    assert _points(page, "chart-loss") == len(losses) == 8
    assert page.evaluate("document.getElementById('chart-loss').data[0].y") == pytest.approx(losses)
    assert _points(page, "chart-lr") == len(trial.user_attrs["tuner.result"]["lr_trace"]) == 8
    hotspots = page.locator("section.card", has_text="Profiler hotspots")
    hotspots.wait_for()
    stored = stored_profile(optuna.load_study(study_name=TRAINED, storage=url), number)["cpu"]["hotspots"]
    rows = hotspots.locator("tbody tr")
    # the table is readable at 1280 px: every column, the share included, is inside the card
    assert hotspots.evaluate("c => { const w = c.querySelector('.table-wrap'); return w.scrollWidth <= w.clientWidth; }")
    assert rows.count() == min(15, len(stored))
    assert rows.first.locator("td").first.get_attribute("title") == stored[0]["name"]
    _shot(page, "trial-trained")

    page.goto(f"{live.base}/studies/{TRAINED}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    page.wait_for_function("() => { const gd = document.getElementById('chart-curves'); return gd && gd.data && gd.data.length > 0; }", timeout=30_000)
    curves = [t.user_attrs["tuner.result"]["loss_curve"] for t in optuna.load_study(study_name=TRAINED, storage=url).trials]
    assert _points(page, "chart-curves") == sum(len(c) for c in curves) == 16


def test_a_gpu_workers_trial_shows_its_nvml_telemetry(server, page):
    live, _, _, made = server
    page.goto(f"{live.base}/studies/{EXTERNAL}/trials/{made['external']}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    card = page.locator("section.card", has_text="NVML telemetry")
    card.wait_for()
    text = card.inner_text()
    # the H200 ran at its power cap in every sample (throttle bit 0x4), SM clock 1785-1965 MHz
    assert "sw_power_cap (100% of samples)" in text
    clock = card.locator("tr", has_text="SM clock").inner_text()
    assert "1785" in clock and "1965" in clock
    assert f"{len(H200_NVML)} samples" in text
    assert _points(page, "chart-nvml") == 3 * len(H200_NVML)  # util, power and SM clock series
    assert _points(page, "chart-loss") == 4
    measured = page.locator("section.card", has_text="Measured")
    assert measured.locator("td", has_text=re.compile("^val_loss$")).count() == 1  # sent twice, shown once
    _shot(page, "trial-nvml")


def test_a_study_whose_default_config_won_says_to_keep_it(server, page):
    live, _, _, _ = server
    page.goto(f"{live.base}/studies/{SLOWER}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    assert "keep the default config" in page.locator("#default-wins").inner_text()
    gain = page.locator("#kpi-gain .value span")
    assert gain.get_attribute("class") == "gain-down" and float(gain.inner_text().lstrip("x")) < 1
    _shot(page, "default-wins")
    page.goto(f"{live.base}/studies/{STUDY}")  # a real gain: green, no advice to keep the default
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    assert page.locator("#default-wins").count() == 0
    assert page.locator("#kpi-gain .value span").get_attribute("class") == "gain-up"
    # One figure, one wording (tuner.study.gain): the card, the list and the best trial's page.
    said = _gain_said(page.locator("#kpi-gain"))
    assert said == _server_gain_text(live.base) and "median of 3 back-to-back pairs" in said
    best_trial = page.locator("#kpi-best a").get_attribute("href")
    page.goto(live.base + "/")
    page.locator(f'#studies tr[data-study="{SLOWER}"]').wait_for()
    assert page.locator(f'#studies tr[data-study="{SLOWER}"] .gain-down').count() == 1
    assert page.locator(f'#studies tr[data-study="{STUDY}"] .gain-up').count() == 1
    assert _gain_said(page.locator(f'#studies tr[data-study="{STUDY}"]')) == said
    page.goto(live.base + best_trial)
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    assert _gain_said(page.locator("#kpi-gain")) == said
    assert "search-time single measurement: x" in page.locator("#kpi-gain").inner_text()  # said apart, not instead


def _gain_said(scope) -> str:
    """The gain as a page shows it: figure, then which measurement it is."""
    figure = scope.locator('[data-role="gain-figure"]').inner_text()
    description = scope.locator('[data-role="gain-description"]').inner_text()
    return f"{figure}, {description}"


def _server_gain_text(base: str) -> str:
    """The demo study's gain as the server words it (tuner.study.gain)."""
    from urllib.request import urlopen

    with urlopen(f"{base}/api/v1/dashboard/studies/{STUDY}") as response:
        return json.loads(response.read())["gain_report"]["text"]


def test_a_multi_rank_trial_shows_its_per_rank_nvml_table_and_a_profile_its_launch_overhead(server, page):
    from tuner.client import TunerClient
    from tuner.hardware.profile import load_profile
    from tuner.hardware.telemetry_summary import (
        BandwidthPeaks,
        per_rank_telemetry,
        rank_row,
        summarise_samples,
    )

    live, _, token, made = server
    peaks = BandwidthPeaks.from_profile(load_profile(str(H200_PROBE)))
    capped = [dict(s, sm_clock=s["sm_clock"] - 300) for s in H200_NVML]
    table = per_rank_telemetry([rank_row({**summarise_samples(s, peaks), "available": True}) for s in (H200_NVML, capped)] + [None])
    with TunerClient(live.base, token).study(EXTERNAL).ask() as trial:
        trial.tell(1000.0, telemetry={"nvml_per_rank": table})
        number = trial.number
    page.goto(f"{live.base}/studies/{EXTERNAL}/trials/{number}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    rows = page.locator("#rank-telemetry tbody tr")
    assert rows.count() == 3
    assert rows.nth(1).inner_text().startswith("1 (worst)") and "1596" in rows.nth(1).inner_text()
    assert "the rank sent no result" in rows.nth(2).inner_text()
    assert "worst: rank 1 (lowest mean SM clock) · 2 of 3 ranks sampled" in page.locator("section.card", has_text="NVML telemetry per rank").inner_text()
    _shot(page, "trial-ranks")

    # a single GPU trial's NVML card with the bandwidth shares (real H200 readings and probe)
    from tuner.hardware.telemetry_summary import telemetry_record

    with TunerClient(live.base, token).study(EXTERNAL).ask() as trial:
        trial.tell(1000.0, telemetry={"nvml": telemetry_record(summarise_samples(H200_NVML, peaks), H200_NVML)})
        single = trial.number
    page.goto(f"{live.base}/studies/{EXTERNAL}/trials/{single}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    memory = page.locator("tr", has_text="memory bw / probed peak").inner_text()
    # an upper bound (no GPM): 61% / 65% busy x 4.8 TB/s over the measured 4.26 TB/s
    assert "≤ 68.8%" in memory and "≤ 73.3%" in memory
    card = page.locator("section.card", has_text="memory bw / probed peak")
    assert card.evaluate("c => c.querySelector('table').getBoundingClientRect().right <= c.getBoundingClientRect().right")
    assert "0.071%" in page.locator("tr", has_text="PCIe RX / link peak").inner_text()
    _shot(page, "trial-nvml-bandwidth")

    page.goto(f"{live.base}/studies/{TRAINED}/trials/{made['profiled']}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    launch = page.locator("#launch-overhead")
    launch.wait_for()
    assert "CPU dispatch overhead" in launch.inner_text() and "% of operator time" in launch.inner_text()


@pytest.fixture(scope="module")
def locked_server(server):
    """The second `tuner serve` on the same database, started with --read-requires-token."""
    _, url, _, made = server
    assert made["locked"].proc is not None and made["locked"].proc.poll() is None, "the --read-requires-token server did not start"
    return made["locked"], new_token(url, "dashboard-reader", scopes={"read"}, owner="viewer")


def test_the_dashboard_works_on_a_server_whose_reads_need_a_token(locked_server, page):
    live, token = locked_server
    api_calls: list[tuple[str, str | None]] = []
    page.on("request", lambda r: api_calls.append((r.url, r.headers.get("authorization"))) if "/api/v1/" in r.url else None)
    page.goto(live.base + "/")
    # no token yet: the server answers 401, and the page asks for a token, saying why
    dialog = page.locator("#token-dialog")
    dialog.wait_for(state="visible")
    assert "needs a bearer token with scope read" in page.locator("#token-why").inner_text()
    assert page.locator(f'#studies tr[data-study="{STUDY}"]').count() == 0
    page.fill("#token-input", "tnr_wrong")
    page.click('#token-form button[value="save"]')  # a bad token: the page reloads and asks again
    dialog.wait_for(state="visible")
    assert "unknown or revoked" in page.locator("#token-why").inner_text()
    page.fill("#token-input", token)
    page.click('#token-form button[value="save"]')
    # the page reloads with the token: the studies, the workloads and the presets load
    page.locator(f'#studies tr[data-study="{STUDY}"]').wait_for()
    assert page.evaluate("[sessionStorage.getItem('tuner.token'), localStorage.getItem('tuner.token')]") == [token, None]
    page.wait_for_function("document.querySelectorAll('#studies tr[data-study]').length >= 3")
    with_token = {url.split("?")[0].removeprefix(live.base) for url, auth in api_calls if auth == f"Bearer {token}"}
    assert {"/api/v1/dashboard/studies", "/api/v1/workloads", "/api/v1/dashboard/presets"} <= with_token, with_token
    assert all(auth is None or auth in (f"Bearer {token}", "Bearer tnr_wrong") for _, auth in api_calls)
    assert not page.locator("#token-dialog").is_visible()


def test_an_ask_tell_study_shows_only_its_own_parameters_and_objectives(server, page):
    """A user's ask/tell study (no workload, an objective told by their job, no throughput
    or memory measured): the best-config card lists the study's own parameters and nothing
    else, the table has no empty throughput/memory columns, the scatter card is gone, and
    once its n_trials are told the study reads completed (issue 12)."""
    from tuner.client import TunerClient

    live, _, token, _ = server
    space = {
        "name": "users-own",
        "params": {
            "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
            "micro_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
        },
        "hparams": {"dropout": {"type": "float", "low": 0.0, "high": 0.5}},  # the job's own
    }
    study = TunerClient(live.base, token).create_study("users-own", space, run=False, n_trials=3, objectives=["val_acc:max"], sampler="random")
    told = {}
    for acc in (0.6, 0.9, 0.7):
        with study.ask() as trial:
            trial.report(1, acc - 0.1)
            trial.tell({"val_acc": acc})
            told[trial.number] = trial.params
    page.goto(f"{live.base}/studies/users-own")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    best_number = max(told, key=lambda n: [0.6, 0.9, 0.7][list(told).index(n)])
    rows = page.locator("#best-config table.kv tr")
    assert rows.count() == 4  # its own three knobs and one hparam, not the 15 system knobs
    names = [rows.nth(i).locator("td").first.inner_text() for i in range(4)]
    assert names == sorted([*space["params"], *space["hparams"]])
    card = page.locator("#best-config").inner_text()
    assert "null" not in card and "other knobs" not in card and f"trial #{best_number}" in card and "val_acc 0.9" in card
    assert re.search(rf"micro_batch_size\s+{told[best_number]['micro_batch_size']}(?!\d)", card)
    headers = page.locator("#trials thead th").all_inner_texts()
    assert any(h.startswith("val_acc") for h in headers)  # the objective column, by its name
    # labelled by the objective's name with its direction beside it, not the stored "val_acc:max"
    head = page.locator(".page-head").inner_text()
    assert "val_acc (max)" in head and "val_acc:max" not in head, head
    assert not any(h.startswith(("throughput", "peak memory", "step time")) for h in headers), headers
    assert page.locator("#chart-scatter").is_hidden() and "No measured trials yet" not in page.inner_text("main")
    assert page.locator("#kpi-expiry").inner_text().splitlines()[1] == "3600 s"
    assert page.locator(".page-head").inner_text().count("completed") == 1  # n_trials told: finished
    _shot(page, "asktell-study")
    page.goto(f"{live.base}/studies/users-own/trials/{best_number}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    config_rows = page.locator("#trial-config table.kv tr")
    assert config_rows.count() == 4 and "gradient_accumulation_steps" not in page.locator("#trial-config").inner_text()
    # the GPU worker's ask/tell study told throughput but never a peak memory: no scatter card either
    page.goto(f"{live.base}/studies/{EXTERNAL}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    assert page.locator("#chart-scatter").is_hidden() and "No measured trials yet" not in page.inner_text("main")

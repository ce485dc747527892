"""Noise made visible: the one rule for a significant gain, the run-to-run variation of the
back-to-back confirmation, and ONE wording of the gain (`tuner.study.gain`) that `tuner
tune`, `tuner best` and the dashboard (study card, studies list, trial page) all show.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from concurrent.futures import Future
from pathlib import Path

import optuna
import pytest

from tests.test_study_confirm import replay_spec
from tuner.cli.cmd_tune import outcome_to_dict, ratio_sentence
from tuner.executors.inline import InlineExecutor
from tuner.study import run_study
from tuner.study.attrs import StudyAttr
from tuner.study.confirm import (
    DEFAULT_CONFIRM_PAIRS,
    Confirmation,
    ConfirmationPair,
    coefficient_of_variation,
)
from tuner.study.gain import describe_gain
from tuner.trial_request import ReportCallback, TrialRequest
from tuner.types import TrialResult


def confirmation(*pairs: tuple[float, float], best: int = 7) -> Confirmation:
    return Confirmation(best_trial_number=best, pairs=tuple(ConfirmationPair(b, t) for b, t in pairs))


# -- the rule and the numbers -------------------------------------------------------------
def test_coefficient_of_variation_of_each_side_from_the_measurements():
    c = confirmation((100.0, 150.0), (110.0, 160.0), (90.0, 170.0))
    # best 150/160/170: sample sd 10 around 160; default 100/110/90: sd 10 around 100
    assert c.best_cv == pytest.approx(10 / 160) and c.baseline_cv == pytest.approx(0.1)
    assert coefficient_of_variation([126_000.0, 26_000.0]) == pytest.approx(
        statistics.stdev([126_000.0, 26_000.0]) / 76_000.0
    )
    assert coefficient_of_variation([5.0]) is None and confirmation((1.0, 2.0)).best_cv is None


@pytest.mark.parametrize(
    ("ratios", "significant"),
    [
        ((1.5, 1.6, 1.9), True),  # every pair faster
        ((0.8, 0.85, 0.9), True),  # every pair slower: a real loss
        ((0.95, 1.74, 2.28), False),  # the range crosses 1.0
        ((1.0, 1.1, 1.2), False),  # one pair measured no gain at all
        ((1.8,), False),  # one pair has no range to judge
    ],
)
def test_a_gain_whose_range_crosses_one_is_not_significant(ratios, significant):
    c = confirmation(*((1000.0, 1000.0 * r) for r in ratios))
    assert c.significant is significant
    gain = describe_gain("throughput", confirmation=c, best_value=1.0, baseline_value=1.0, unit="tokens")
    assert gain.significant is significant
    assert gain.text.endswith(", not significant") is (not significant)


def test_the_one_wording_of_a_confirmed_and_a_search_time_gain():
    c = confirmation((1000.0, 950.0), (1000.0, 1740.0), (1000.0, 2280.0))
    gain = describe_gain("throughput", confirmation=c, best_value=126_500.0, baseline_value=96_400.0, unit="tokens")
    assert gain.text == "x1.74, median of 3 back-to-back pairs, range 0.95-2.28, not significant"
    assert (gain.value, gain.source, gain.figure) == (pytest.approx(1.74), "confirmation", "x1.74")
    assert gain.text == f"{gain.figure}, {gain.description}"
    assert gain.search_text == "search-time single measurement: x1.31"  # shown beside, never instead
    assert gain.measured == "back to back: best 1,740 vs default 1,000 tokens/s (medians)"
    assert gain.noise == f"run-to-run variation (CV): best {c.best_cv:.1%}, default 0.0% over 3 runs each"

    search = describe_gain("throughput", confirmation=None, best_value=126_500.0, baseline_value=96_400.0, unit="tokens")
    assert search.text == "x1.31, search-time single measurement (no confirmation)"
    assert (search.source, search.significant, search.noise) == ("search", None, None)
    assert search.measured == "best 126,500 vs default 96,400 tokens/s"

    loss = describe_gain("val_loss", confirmation=None, best_value=3.0, baseline_value=3.3)
    assert loss.text == "x1.10, lower val_loss, search-time single measurement (no confirmation)"
    none = describe_gain("throughput", confirmation=None, best_value=5.0, baseline_value=None)
    assert none.value is None and none.figure is None and none.text == "no ratio: the default config was not measured"


def test_a_confirmation_stored_by_an_older_study_still_reads():
    """Stored before the variation and the verdict were: they are derived from the pairs,
    so an old study shows them too; one old pair has no variation (None)."""
    old = {
        "pairs": [{"baseline_items_per_s": 100.0, "best_items_per_s": 150.0, "ratio": 1.5},
                  {"baseline_items_per_s": 120.0, "best_items_per_s": 156.0, "ratio": 1.3}],
        "ratio_median": 1.4, "ratio_min": 1.3, "ratio_max": 1.5, "best_trial_number": 3,
    }  # fmt: skip
    c = Confirmation.from_dict(old)
    assert c.significant and c.baseline_cv == pytest.approx(statistics.stdev([100, 120]) / 110)
    one = Confirmation.from_dict({**old, "pairs": old["pairs"][:1]})
    assert one.best_cv is None and one.baseline_cv is None and not one.significant
    gain = describe_gain("throughput", confirmation=one, best_value=150.0, baseline_value=100.0)
    assert gain.noise is None and gain.text == "x1.50, median of 1 back-to-back pair, range 1.50-1.50, not significant"
    assert {"significant", "best_cv", "baseline_cv"} <= set(c.to_dict())


# -- a real study: every place states the same figure in the same words -------------------
class LoadSwingExecutor(InlineExecutor):
    """The real inline executor on the deterministic replay table, with the machine load of
    a shared box laid over it: the k-th measurement's throughput is scaled by `swings[k]`
    (as another job starting and stopping would), so the back-to-back pairs disagree."""

    def __init__(self, swings: list[float]) -> None:
        super().__init__()
        self.swings = swings
        self.calls = 0

    def submit(self, request: TrialRequest, on_report: ReportCallback | None = None) -> Future[TrialResult]:
        result = super().submit(request, on_report).result()
        factor = self.swings[self.calls % len(self.swings)]
        self.calls += 1
        swung: Future[TrialResult] = Future()
        swung.set_result(
            dataclasses.replace(result, items_per_s=result.items_per_s * factor) if result.items_per_s else result
        )
        return swung


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def test_tune_best_and_the_dashboard_state_the_same_gain_in_the_same_words(storage, capsys, monkeypatch):
    from fastapi.testclient import TestClient

    from api.db.migrate import upgrade
    from api.main import create_app
    from api.settings import Settings
    from tuner.cli.main import main

    upgrade(storage)
    # baseline + 3 trials at full speed, then 3 (default, best) pairs; the second pair's
    # best ran while the machine was loaded (x0.5): its ratio falls below 1.0.
    swings = [1.0] * 4 + [1.0, 1.0, 1.0, 0.5, 1.0, 1.2]
    with LoadSwingExecutor(swings) as executor:
        outcome = run_study(replay_spec("noisy-gain"), storage=storage, executor=executor)
    assert executor.calls == 4 + 2 * DEFAULT_CONFIRM_PAIRS  # three pairs by default
    gain = outcome.gain
    ratios = sorted(p.ratio for p in outcome.confirmation.pairs)
    table_ratio = outcome.search_ratio
    assert ratios == pytest.approx(sorted([table_ratio, table_ratio * 0.5, table_ratio * 1.2]))
    assert ratios[0] < 1.0 < ratios[-1] and not gain.significant
    text = (
        f"x{statistics.median(ratios):.2f}, median of 3 back-to-back pairs, "
        f"range {ratios[0]:.2f}-{ratios[-1]:.2f}, not significant"
    )
    assert gain.text == text
    stored = optuna.load_study(study_name="noisy-gain", storage=storage).user_attrs[StudyAttr.CONFIRMATION]
    assert stored["significant"] is False and stored["best_cv"] == pytest.approx(gain.best_cv)
    assert gain.best_cv > 0.2 and gain.baseline_cv == 0.0  # the load hit only the best runs

    # `tuner tune`'s line and its --json
    assert ratio_sentence(outcome) == f"gain over the default config: {text}"
    tuned = outcome_to_dict(outcome)
    assert tuned["gain_report"]["text"] == text and tuned["ratio"] == pytest.approx(gain.value)

    # `tuner best`, YAML and JSON, through the real command
    monkeypatch.chdir(Path(storage.removeprefix("sqlite:///")).parent)
    capsys.readouterr()
    assert main(["best", "noisy-gain", "--storage", storage, "--format", "json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["gain"] == text and best["gain_report"] == json.loads(json.dumps(gain.to_dict()))
    assert main(["best", "noisy-gain", "--storage", storage]) == 0
    assert f"gain: {text}\n" in capsys.readouterr().out

    # the dashboard's JSON: study card, studies list, the best trial's page, another trial's
    with TestClient(create_app(Settings(storage=storage, run_studies=False))) as client:
        base = "/api/v1/dashboard/studies"
        summary = client.get(f"{base}/noisy-gain").json()
        listed = next(s for s in client.get(base).json()["items"] if s["name"] == "noisy-gain")
        top = client.get(f"{base}/noisy-gain/trials/{outcome.best_trial}").json()
        assert summary["gain_report"]["text"] == listed["gain_report"]["text"] == top["gain_report"]["text"] == text
        assert summary["gain"] == pytest.approx(gain.value) and top["is_best"]
        assert top["gain_report"]["search_text"] == f"search-time single measurement: x{table_ratio:.2f}"
        other = next(n for n in (0, 1, 2) if n != outcome.best_trial)
        report = client.get(f"{base}/noisy-gain/trials/{other}").json()["gain_report"]
        assert report["source"] == "search" and report["text"].endswith("search-time single measurement (no confirmation)")

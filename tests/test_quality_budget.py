"""Quality objectives (tuner.study.quality_budget): a fixed validation set, task metrics,
budgets in items or seconds, validation checkpoints for the pruner, time to a target with
censored trials ranked, and the batch-size LR rule. Real training on the CPU, with the
smallest shapes of the gpt and recsys workloads so the whole file runs in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch

from tuner.errors import ValidationError
from tuner.executors.inline import InlineExecutor
from tuner.space.search_space import load_space
from tuner.study import create_study, run_study
from tuner.study.attrs import StudyAttr
from tuner.study.quality_budget import BudgetPlan
from tuner.study.results import best_record, records_of
from tuner.study.samplers import make_pruner
from tuner.study.spec import OBJECTIVES, StudySpec
from tuner.trial.schedule import lr_at_fraction
from tuner.trial.target import CENSORED_OFFSET_S, MAX_EXTRAPOLATION, time_to_target
from tuner.trial_request import TrialRequest
from tuner.types import TrialBudget, TrialConfig, TrialResult, TrialStatus
from tuner.workloads import get_workload
from tuner.workloads.gpt_model import VALIDATION_SPAN_TOKENS
from tuner.workloads.recsys_model import roc_auc

TINY_GPT = {"layers": 1, "d_model": 16, "heads": 2}
SMALL_RECSYS = {"tables": 2, "rows": 500, "dim": 8, "dense_features": 8}


class Recorder:
    """A reporter that keeps every (step, value) it is given and never prunes."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, float]] = []

    def report(self, step: int, value: float) -> bool:
        self.reports.append((step, value))
        return False


def run(workload: str, params: dict, config: TrialConfig, budget: TrialBudget, reporter=None) -> TrialResult:
    w = get_workload(workload)
    request = TrialRequest(0, workload, w.resolve_params(params), config, budget, device="cpu")
    return w.run_trial(request, reporter or Recorder())


# -- the validation data ----------------------------------------------------------------------------


def test_gpt_validation_is_the_same_tokens_whatever_the_micro_batch_and_sequence_length():
    gpt = get_workload("gpt")
    params = gpt.resolve_params(TINY_GPT)
    configs = [
        TrialConfig(micro_batch_size=2, max_sequence_length=16),
        TrialConfig(micro_batch_size=8, max_sequence_length=128),
        TrialConfig(micro_batch_size=3, max_sequence_length=100),  # does not divide the span
    ]
    token_sets = []
    for config in configs:
        spans = gpt.build(params, config, "cpu", seed=0).validation_batches
        tokens = [torch.cat([inputs.reshape(-1) for inputs, _ in span.pieces]) for span in spans]
        assert all(t.numel() == VALIDATION_SPAN_TOKENS for t in tokens)
        token_sets.append(torch.cat(tokens))
    assert all(torch.equal(token_sets[0], other) for other in token_sets[1:])
    # The same weights score the same on it whatever the micro batch: val_loss compares configs.
    losses = []
    for micro_batch in (2, 8):
        torch.manual_seed(0)
        setup = gpt.build(params, TrialConfig(micro_batch_size=micro_batch, max_sequence_length=64), "cpu", 0)
        with torch.no_grad():
            losses.append(float(setup.loss_fn(setup.model, setup.validation_batches[0])))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_recsys_validation_is_fixed_and_its_auc_sees_the_planted_signal():
    recsys = get_workload("recsys")
    params = recsys.resolve_params(SMALL_RECSYS)
    small, large = (recsys.build(params, TrialConfig(micro_batch_size=mb), "cpu", 0) for mb in (16, 2048))
    for a, b in zip(small.validation_batches, large.validation_batches, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # roc_auc against the pairwise definition, ties counted half
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (60,), generator=generator).float()
    labels = (torch.rand(60, generator=generator) < 0.4).float()
    pos, neg = scores[labels > 0.5], scores[labels < 0.5]
    pairwise = ((pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()).mean()
    assert roc_auc(scores, labels) == pytest.approx(float(pairwise), abs=1e-6)
    # A short real training: the model's held-out AUC beats guessing, below the planted model's.
    result = run("recsys", SMALL_RECSYS, TrialConfig(micro_batch_size=256, learning_rate=1e-2),
                 TrialBudget(max_items=256 * 16, eval_every_items=256 * 8, eval_batches=4, warmup_steps=1))
    assert result.ok, result.reason
    auc, planted = result.val_metrics["auc"], result.val_metrics["auc_planted"]
    assert 0.6 < auc < planted and planted > 0.85


# -- the runner under a quality budget ------------------------------------------------------------


def test_an_items_budget_spans_the_schedule_and_reports_validation_checkpoints():
    budget = TrialBudget(max_items=8 * 32 * 6, eval_every_items=8 * 32 * 3, eval_batches=1, warmup_steps=1)
    curves = {}
    for micro_batch in (4, 8):
        reporter = Recorder()
        config = TrialConfig(micro_batch_size=micro_batch, max_sequence_length=32, learning_rate=2e-3)
        result = run("gpt", TINY_GPT, config, budget, reporter)
        assert result.ok, result.reason
        steps = 6 * 8 // micro_batch  # equal tokens: half the batch, twice the steps
        assert result.steps_run == steps == len(result.lr_trace)
        assert result.lr_trace[0] == pytest.approx(2e-3) and result.lr_trace[-1] < 0.2 * 2e-3  # cosine ends with the data
        assert [p[0] for p in result.val_curve] == [768.0, 1536.0]  # the same checkpoints for every config
        # the pruner got the validation losses at checkpoints 1 and 2, not training losses
        assert reporter.reports == [(1, result.val_curve[0][2]), (2, result.val_curve[1][2])]
        assert result.val_loss == result.val_curve[-1][2]
        assert result.val_metrics["perplexity"] == pytest.approx(math.exp(result.val_loss))
        curves[micro_batch] = result.val_curve
    assert curves[4][0][2] != curves[8][0][2]


def test_a_trial_stops_at_the_target_and_records_its_time_to_it():
    config = TrialConfig(micro_batch_size=256, learning_rate=3e-3)
    budget = TrialBudget(max_items=256 * 60, eval_every_items=256 * 5, eval_batches=2, warmup_steps=1,
                         target_val_loss=0.68)  # just under ln 2: reached early
    result = run("recsys", SMALL_RECSYS, config, budget)
    assert result.ok and result.val_metrics["target_reached"] == 1.0
    reached_at = result.val_curve[-1]
    assert reached_at[2] <= 0.68 and all(p[2] > 0.68 for p in result.val_curve[:-1])
    assert result.steps_run == reached_at[0] / 256 < 60  # stopped there, not at the budget's end
    assert result.val_metrics["time_to_target"] == result.val_metrics["time_to_target_s"] == reached_at[1]
    assert result.val_metrics["items_to_target"] == reached_at[0]


def test_censored_estimates_rank_behind_every_reached_time_and_by_progress():
    reached = time_to_target([(100, 50.0, 2.0), (200, 900.0, 1.0)], target=1.0)
    assert reached.reached and reached.value == reached.seconds == 900.0
    close = time_to_target([(100, 1.0, 2.0), (200, 2.0, 1.2)], target=1.0)  # 0.8 per s: 0.25 s more
    far = time_to_target([(100, 1.0, 2.0), (200, 2.0, 1.9)], target=1.0)
    flat = time_to_target([(100, 1.0, 2.0), (200, 2.0, 2.5)], target=1.0)
    assert not close.reached and close.seconds == pytest.approx(2.25) and close.items == pytest.approx(225)
    assert close.value == CENSORED_OFFSET_S + close.seconds
    assert reached.value < close.value < far.value < flat.value
    assert flat.seconds == 2.0 * MAX_EXTRAPOLATION
    assert time_to_target([(100, 1.0, None)], target=1.0) is None


def test_the_time_schedule_is_warmup_then_cosine_over_the_fraction_spent():
    assert lr_at_fraction(0.05, peak_lr=1.0, warmup_ratio=0.1) == pytest.approx(0.5)
    assert lr_at_fraction(0.1, peak_lr=1.0, warmup_ratio=0.1) == pytest.approx(1.0)
    assert lr_at_fraction(0.55, peak_lr=1.0, warmup_ratio=0.1) == pytest.approx(0.5)
    assert lr_at_fraction(1.5, peak_lr=1.0, warmup_ratio=0.0) == 0.0


# -- studies --------------------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def recsys_spec(name: str, objectives: tuple[str, ...], params: dict, **changes) -> StudySpec:
    fields = {
        "name": name,
        "workload": "recsys",
        "space": load_space({"name": name, "params": params}),
        "workload_params": SMALL_RECSYS,
        "objectives": objectives,
        "n_trials": 3,
        "sampler": "random",
        "budget": TrialBudget(max_items=256 * 24, eval_every_items=256 * 6, eval_batches=2, warmup_steps=1),
        "use_generator": False,
        "device": "cpu",
    }
    fields.update(changes)
    return StudySpec(**fields)


def test_time_to_target_study_ranks_censored_trials_and_prunes_on_validation(storage):
    lr = {"type": "float", "low": 1e-6, "high": 10.0, "log": True}
    spec = recsys_spec("ttt", ("time_to_target",), {"learning_rate": lr}, n_trials=4, pruner="median")
    study = create_study(spec, storage)
    for value in (1e-2, 1e-6, 10.0):  # fast, never gets there (censored), diverging
        study.enqueue_trial({"learning_rate": value})
    with InlineExecutor() as executor:
        outcome = run_study(spec, storage=storage, executor=executor, confirm=0)
    stored = optuna.load_study(study_name="ttt", storage=storage)
    target = stored.user_attrs[StudyAttr.TARGET]
    baseline = outcome.baseline_result
    assert target == baseline.val_loss and baseline.val_metrics["target_reached"] == 1.0  # derived from the default
    records = {r.config.learning_rate: r for r in records_of(stored) if r.config}
    fast, censored, diverging = records[1e-2], records[1e-6], records[10.0]
    assert fast.state == "COMPLETE" and fast.result.val_metrics["target_reached"] == 1.0
    # the censored trial is ranked, not dropped: a value, after every trial that got there
    assert censored.state == "COMPLETE" and censored.result.val_metrics["target_reached"] == 0.0
    assert censored.values[0] > CENSORED_OFFSET_S > fast.values[0]
    # a diverging config is never best
    assert diverging.status is not TrialStatus.OK or diverging.values[0] > CENSORED_OFFSET_S
    best = best_record(records_of(stored), spec.objectives)
    reached = [r for r in records_of(stored) if r.state == "COMPLETE" and r.values[0] < CENSORED_OFFSET_S]
    assert best.number == outcome.best_trial and best.values[0] == min(r.values[0] for r in reached)
    assert best.number not in (censored.number, diverging.number)
    assert outcome.ratio == pytest.approx(baseline.val_metrics["time_to_target"] / best.values[0])
    # the pruner received validation values at the checkpoints, never training losses
    for trial in stored.trials:
        record = next(r for r in records_of(stored) if r.number == trial.number)
        expected = {k + 1: p[2] for k, p in enumerate(record.result.val_curve) if (p[0] / (256 * 6)).is_integer()}
        assert trial.intermediate_values == expected and expected


def test_quality_at_budget_scales_the_lr_with_the_batch_unless_lr_is_tuned(storage):
    spec = recsys_spec("qab", ("quality_at_budget",), {"micro_batch_size": {"type": "categorical", "choices": [64, 1024]}},
                       n_trials=2, pruner="none")
    study = create_study(spec, storage)
    for micro_batch in (64, 1024):
        study.enqueue_trial({"micro_batch_size": micro_batch})
    with InlineExecutor() as executor:
        outcome = run_study(spec, storage=storage, executor=executor, confirm=0)
    records = [r for r in records_of(optuna.load_study(study_name="qab", storage=storage)) if r.config]
    lrs = {r.config.micro_batch_size: r.config.learning_rate for r in records}
    assert lrs == {64: pytest.approx(1e-3 * 0.5), 1024: pytest.approx(1e-3 * 2.0)}  # sqrt(B / 256)
    for r in records:  # equal data: every config trained the budget's samples
        assert r.result.metrics["items_trained"] >= 256 * 24 and r.values[0] == r.result.val_loss
    assert outcome.best_result.val_loss == min(r.result.val_loss for r in records)
    reference = TrialConfig(micro_batch_size=256, learning_rate=1e-3)
    tuned = load_space({"name": "t", "params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    plan = BudgetPlan.for_study(("quality_at_budget",), spec.budget, reference, tuned)
    assert plan.configure(TrialConfig(micro_batch_size=1024, learning_rate=5e-3)).learning_rate == 5e-3


def test_quality_objectives_are_built_in_and_need_their_budget():
    assert {k: OBJECTIVES[k] for k in ("quality_at_budget", "time_to_target", "auc", "perplexity")} == {
        "quality_at_budget": "minimize", "time_to_target": "minimize", "auc": "maximize", "perplexity": "minimize"}
    with pytest.raises(ValidationError) as caught:
        recsys_spec("bad", ("time_to_target",), {"precision": "fp32"}, budget=TrialBudget(max_steps=5))
    fields = [p.field for p in caught.value.problems]
    assert fields == ["budget.max_items", "budget.eval_every_items"]
    assert "max_train_seconds" in caught.value.problems[0].fix
    with pytest.raises(ValidationError, match="eval_every_items"):
        TrialBudget(max_items=100, eval_every_items=0)
    spec = recsys_spec("hb", ("auc",), {"precision": "fp32"}, pruner="hyperband",
                       budget=TrialBudget(max_items=1000, eval_every_items=300))
    assert make_pruner(spec)._max_resource == 4


# -- learning-curve tables ------------------------------------------------------------------------


def write_curves(path: Path) -> Path:
    """A small learning-curve table: loss falls faster with the LR up to 3e-3 (then it
    diverges) and a micro batch of 4 takes 0.6x the seconds of 8 per item."""
    import json

    lines = [{"meta": {"kind": "curves", "workload": "gpt", "item_unit": "tokens"}}]
    for lr in (3e-4, 1e-3, 3e-3, 1e-2):
        for micro_batch in (4, 8):
            speed = 1000.0 / (0.6 if micro_batch == 4 else 1.0)  # items per second
            rate = {3e-4: 0.3, 1e-3: 1.0, 3e-3: 2.5, 1e-2: -0.5}[lr]
            curve = [[k * 1000, k * 1000 / speed, 2.0 + 3.0 * math.exp(-rate * k / 5)] for k in range(1, 11)]
            row = {"learning_rate": lr, "micro_batch_size": micro_batch, "status": "ok", "curve": curve}
            if lr == 1e-3 and micro_batch == 8:
                row["default"] = True
            lines.append(row)
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path


def test_replay_compares_time_to_target_strategies_on_learning_curves(tmp_path, capsys):
    from tuner.cli.main import main
    from tuner.replay.curve_strategies import run_curve_strategy
    from tuner.replay.curves import CurveTableError, load_curve_table, parse_curve_table

    table = load_curve_table(write_curves(tmp_path / "curves.jsonl"))
    assert table.target == pytest.approx(2.0 + 3.0 * math.exp(-2.0))  # the default's final loss
    summaries = {}
    for strategy in ("tuner", "tpe"):
        records, summary = run_curve_strategy(table, strategy, budget_s=200.0, seed=0)
        assert sum(r.seconds for r in records) == pytest.approx(records[-1].clock_s)
        assert summary.best_time_to_target_s >= summary.table_best_time_to_target_s
        summaries[strategy] = (records, summary)
    tuner_records, tuner = summaries["tuner"]
    tpe_records, tpe = summaries["tpe"]
    # stopping at the target (and pruning on checkpoints) buys more trials in the same seconds
    assert tuner.trials > tpe.trials and all(r.checkpoints_run == 10 for r in tpe_records)
    assert any(r.checkpoints_run < 10 and r.state == "complete" for r in tuner_records)
    assert tuner.default_time_to_target_s == pytest.approx(10.0)
    assert tuner.table_best_time_to_target_s == pytest.approx(2.4)  # lr 3e-3, micro batch 4: checkpoint 4
    with pytest.raises(CurveTableError) as caught:
        parse_curve_table('{"meta": {"kind": "curves"}}\n{"learning_rate": 0.001, "status": "ok", "curve": [[2, 1, 3.0], [1, 2, 2.0]]}')
    assert [p.field for p in caught.value.problems] == ["curve"] and caught.value.problems[0].source == "<curves>:2"
    assert main(["replay", str(tmp_path / "curves.jsonl"), "--strategy", "tuner", "--budget-seconds", "50"]) == 0
    assert "best time to target" in capsys.readouterr().out


def test_ask_tell_takes_a_task_metric_from_a_trial_result(tmp_path):
    import asyncio

    from tuner.asktell import AskTellService
    from tuner.space.search_space import SearchSpace
    from tuner.storage.rdb import open_storage

    url = f"sqlite:///{tmp_path / 'a.db'}"
    space = SearchSpace.from_dict({"name": "a", "params": {"micro_batch_size": {"type": "int", "low": 1, "high": 8}}})
    spec = StudySpec(name="auc", workload="external", space=space, n_trials=3, sampler="random", objectives=("auc",))
    optuna.create_study(study_name="auc", storage=url, directions=spec.directions)
    service = AskTellService(open_storage(url), writer_process=False, sampler_process=False)
    try:
        hot = service.hot("auc", spec, TrialConfig(), accepting=True)
        asked = asyncio.run(hot.ask())
        told = TrialResult(status=TrialStatus.OK, val_metrics={"auc": 0.8})
        assert asyncio.run(hot.tell(asked.number, told)) == "COMPLETE"
        second = asyncio.run(hot.ask())
        with pytest.raises(ValidationError) as caught:
            asyncio.run(hot.tell(second.number, TrialResult(status=TrialStatus.OK, val_loss=0.5)))
        assert [p.field for p in caught.value.problems] == ["result.val_metrics.auc"]
    finally:
        service.close()
    assert optuna.load_study(study_name="auc", storage=url).trials[0].values == [0.8]

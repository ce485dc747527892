"""Replay tables, the replay workload and the strategy runner (on the real H200 tables)."""

from __future__ import annotations

import json

import pytest

from tests.shared_data import H200_DIR
from tests.trial_requests import trial_request
from tuner.cli.main import main
from tuner.errors import ValidationError
from tuner.hardware.profile import load_profile
from tuner.replay.strategies import median, run_strategy
from tuner.replay.table import TableError, load_table, parse_table
from tuner.types import TrialBudget, TrialConfig, TrialStatus
from tuner.workloads import NullReporter, get_workload
from tuner.workloads.replay import replay_space

DATA = H200_DIR
GPT = DATA / "gpt_124m.jsonl"
DLRM = DATA / "dlrm_8x1m.jsonl"
PROBE = DATA / "probe.json"
pytestmark = pytest.mark.skipif(not GPT.exists(), reason="shared H200 data not mounted")
META = '{"meta": {"layers": 2, "d": 64, "heads": 4, "seq": 128, "vocab": 256, "params": 120000, "workload": "t"}}'


def test_table_errors_name_line_field_value_and_fix():
    text = "\n".join(
        [
            META,
            '{"micro_batch_size": 8, "status": "ok", "step_s": 0.1, "items_per_s": 100, "peak_alloc_bytes": 10}',
            '{"micro_bach_size": 8, "status": "ok"}',
            '{"micro_batch_size": 16, "status": "done"}',
            '{"micro_batch_size": 8, "status": "ok", "step_s": 0.1, "items_per_s": 100, "peak_alloc_bytes": 10}',
            '{"micro_batch_size": 32, "status": "ok", "step_s": 0.1}',
        ]
    )
    with pytest.raises(TableError) as err:
        parse_table(text, "t.jsonl")
    message = str(err.value)
    assert "t.jsonl:3: micro_bach_size=8" in message and "did you mean 'micro_batch_size'" in message
    assert "t.jsonl:4: status='done'" in message
    assert "t.jsonl:5" in message and "repeats the config of line 2" in message
    assert "t.jsonl:6: items_per_s=None: is missing on an ok row" in message
    with pytest.raises(TableError, match="line 1 must be exactly"):
        parse_table('{"micro_batch_size": 8}', "t.jsonl")
    with pytest.raises(TableError, match="file not found"):
        load_table("/nonexistent/table.jsonl")


def test_replay_workload_answers_ok_oom_and_not_in_table():
    workload = get_workload("replay")
    params = {"table": str(GPT), "hardware": str(PROBE)}
    assert workload.shape(params)["layers"] == 12
    ok = workload.run_trial(trial_request(workload, TrialConfig(micro_batch_size=64, precision="bf16"), params, TrialBudget()), NullReporter())
    assert ok.status is TrialStatus.OK and ok.item_unit == "tokens"
    assert ok.items_per_s == pytest.approx(376629.0, rel=1e-6)
    assert ok.peak_memory_bytes == 63475987456 and ok.memory_kind == "replay_table"
    assert ok.timed_steps == 8 and 0 < ok.mfu < 1
    oom = workload.run_trial(trial_request(workload, TrialConfig(micro_batch_size=256, precision="bf16"), params, TrialBudget()), NullReporter())
    assert oom.status is TrialStatus.OOM and oom.peak_memory_bytes == 116392935424
    missing = workload.run_trial(trial_request(workload, TrialConfig(micro_batch_size=64, precision="fp32"), params, TrialBudget()), NullReporter())
    assert missing.status is TrialStatus.FAILED and missing.reason.startswith("not in table")
    dlrm = workload.run_trial(trial_request(workload, TrialConfig(micro_batch_size=2048, precision="bf16"), {"table": str(DLRM)}, TrialBudget()), NullReporter())
    assert dlrm.item_unit == "samples" and dlrm.ok
    with pytest.raises(ValidationError, match=r"params\.table"):
        workload.resolve_params({})


def test_replay_space_offers_exactly_the_table_values():
    table = load_table(GPT)
    space = replay_space(table)
    assert set(space.names) == {"micro_batch_size", "precision", "activation_checkpointing"}
    assert space.get("micro_batch_size").finite_values() == (8, 16, 32, 64, 128, 256)
    measured = {table.key_of(r.knobs) for r in table.rows}
    points = [table.key_of(space.to_config(v)) for v in space.grid()]
    assert measured <= set(points)  # every row reachable; the rest are the table's gaps (fp32 > 32)
    assert len(set(points) - measured) == 6


@pytest.mark.parametrize("path", [GPT, DLRM])
def test_tuner_strategy_reaches_95_percent_fast_without_oom(path):
    hardware = load_profile(PROBE)
    table = load_table(path)
    summaries = [run_strategy(table, "tuner", trials=4, seed=seed, hardware=hardware)[1] for seed in range(3)]
    assert median([s.trials_to_95pct for s in summaries]) <= 3
    assert sum(s.oom_trials for s in summaries) <= 1


def test_replay_cli_prints_trials_then_summary(capsys):
    assert main(["replay", str(GPT), "--strategy", "random", "--trials", "5", "--seed", "3", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = records[-1]
    assert summary["summary"] is True and summary["strategy"] == "random" and summary["trials"] == 5
    counted = [r for r in records[:-1] if r["counted"]]
    assert [r["trial"] for r in counted] == [1, 2, 3, 4, 5]
    assert summary["oom_trials"] == sum(r["status"] == "oom" for r in counted)
    assert summary["table_best_items_per_s"] == pytest.approx(384861.85, rel=1e-6)
    first = summary["trials_to_95pct"]
    if first is not None:
        assert counted[first - 1]["items_per_s"] >= 0.95 * summary["table_best_items_per_s"]
    # Same seed, same trials: the comparison is reproducible.
    assert main(["replay", str(GPT), "--strategy", "random", "--trials", "5", "--seed", "3", "--json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records


def test_replay_cli_tuner_without_hardware_says_why(capsys):
    assert main(["replay", str(GPT), "--strategy", "tuner", "--trials", "2"]) == 2
    assert "--hardware" in capsys.readouterr().err

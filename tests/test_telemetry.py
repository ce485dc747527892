"""NVML telemetry: the summariser on real H200 samples, and the sampler on this machine."""

from __future__ import annotations

import itertools
import json
import statistics
import time

import pytest

from tests.shared_data import H200_DIR
from tests.trial_requests import trial_request
from tuner.errors import ValidationError
from tuner.hardware.probe import decode_clock_event_reasons
from tuner.hardware.telemetry import (
    MAX_STORED_SAMPLES,
    METRICS,
    TelemetrySampler,
    summarise_samples,
    summary_metrics,
    telemetry_for_device,
    telemetry_record,
    thin_samples,
)

TELEMETRY_JSON = H200_DIR / "telemetry_and_compile.json"


@pytest.fixture(scope="module")
def h200_samples() -> list[dict]:
    return json.loads(TELEMETRY_JSON.read_text())["nvml_samples_under_load"]


def _nvml_works() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_summary_of_real_h200_samples(h200_samples: list[dict]) -> None:
    summary = summarise_samples(h200_samples)
    assert summary["samples"] == len(h200_samples) == 5
    columns = {
        "util_gpu": [s["util"][0] for s in h200_samples],
        "util_mem": [s["util"][1] for s in h200_samples],
        **{key: [s[key] for s in h200_samples] for key in METRICS if key not in ("util_gpu", "util_mem")},
    }
    for metric, values in columns.items():
        assert summary["metrics"][metric]["mean"] == pytest.approx(statistics.fmean(values)), metric
        assert summary["metrics"][metric]["max"] == max(values), metric
        assert summary["metrics"][metric]["min"] == min(values), metric
    times = [s["t"] for s in h200_samples]
    assert summary["duration_s"] == pytest.approx(max(times) - min(times))
    # Every sample under load had bit 4 set: the H200 was capped by its 700 W power limit.
    assert summary["throttle"]["reasons"] == ["sw_power_cap"]
    assert summary["throttle"]["share"] == {"sw_power_cap": 1.0}
    assert summary["throttle"]["masks_seen"] == [4]
    json.dumps(summary)


def test_clock_event_reasons_decode_from_pynvml_constants() -> None:
    import pynvml

    assert decode_clock_event_reasons(4) == ["sw_power_cap"]
    assert decode_clock_event_reasons(pynvml.nvmlClocksEventReasonGpuIdle) == ["gpu_idle"]
    both = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert decode_clock_event_reasons(both) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_clock_event_reasons(0) == []
    assert decode_clock_event_reasons(0x4 | 0x10000) == ["sw_power_cap", "unknown_0x10000"]


def test_summary_skips_refused_readings(h200_samples: list[dict]) -> None:
    samples = [dict(s) for s in h200_samples[:3]]
    for sample in samples:
        sample["power_mw"] = None  # e.g. NVML refused power readings on this board
    samples[0]["util"] = None
    samples[1]["throttle"] = None
    summary = summarise_samples(samples)
    assert "power_mw" not in summary["metrics"]
    assert summary["metrics"]["util_gpu"]["mean"] == pytest.approx(
        statistics.fmean(s["util"][0] for s in samples[1:])
    )
    assert summary["throttle"]["share"] == {"sw_power_cap": 1.0}  # over the 2 samples that have one
    assert summarise_samples([])["samples"] == 0


def test_flat_metrics_for_trial_results(h200_samples: list[dict]) -> None:
    flat = summary_metrics(summarise_samples(h200_samples))
    assert flat["gpu_power_capped_share"] == 1.0
    assert flat["gpu_thermal_throttled_share"] == 0.0
    assert flat["gpu_sm_clock_max"] == max(s["sm_clock"] for s in h200_samples)
    assert all(isinstance(v, float) for v in flat.values())


def test_a_trials_record_keeps_the_full_summary_and_a_thinned_series(h200_samples: list[dict]) -> None:
    # 1,000 real H200 readings (the 5 shifted 200 times along the clock), as a long trial has.
    many = [dict(s, t=s["t"] + k * 0.7) for k in range(200) for s in h200_samples]
    record = telemetry_record(summarise_samples(many), many, limit=300)
    assert record["summary"]["samples"] == 1000  # the summary counts every reading
    assert record["summary"]["throttle"]["reasons"] == ["sw_power_cap"]
    kept = record["samples"]
    assert len(kept) == 300 and kept[0] is many[0] and kept[-1] is many[-1]
    times = [s["t"] for s in kept]
    assert times == sorted(times) and len(set(times)) == 300
    # evenly spread: no gap between kept readings is more than twice the mean gap
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 2 * (times[-1] - times[0]) / len(gaps)
    # what a trial stores by default stays small: ~170 bytes per kept reading
    default = telemetry_record(summarise_samples(many), many)
    assert len(default["samples"]) == MAX_STORED_SAMPLES and len(json.dumps(default)) < 15_000
    short = telemetry_record(summarise_samples(h200_samples), h200_samples)
    assert short["samples"] == h200_samples  # under the limit every reading is kept
    json.dumps(record)
    with pytest.raises(ValueError, match="limit must be >= 2"):
        thin_samples(many, 1)


def test_a_training_trial_on_this_machines_device_records_nvml_only_on_a_gpu() -> None:
    import torch

    from tuner.trial.runner import run_training_trial
    from tuner.types import TrialBudget, TrialConfig, TrialStatus
    from tuner.workloads import NullReporter
    from tuner.workloads.gpt import GPTWorkload

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = run_training_trial(
        GPTWorkload(),
        trial_request(
            GPTWorkload(),
            TrialConfig(micro_batch_size=4, max_sequence_length=32),
            {"layers": 1, "d_model": 32, "heads": 2},
            TrialBudget(max_steps=3, warmup_steps=1),
            device=device,
        ),
        NullReporter(),
    )
    assert result.status is TrialStatus.OK
    if device == "cpu":
        assert "nvml" not in result.telemetry
        assert not any(key.startswith("gpu_") for key in result.metrics)
        return
    record = result.telemetry["nvml"]
    if _nvml_works():
        assert record["summary"]["available"] and record["summary"]["samples"] >= 1
        assert record["samples"][0]["mem_used"] > 0
        assert result.metrics["gpu_util_gpu_max"] >= 0 and "gpu_power_capped_share" in result.metrics
    else:
        assert record["summary"]["available"] is False and record["summary"]["reason"]


def test_a_gpu_trial_keeps_why_nvml_could_not_sample() -> None:
    from tuner.trial.runner import with_nvml_telemetry
    from tuner.types import TrialResult, TrialStatus

    result = TrialResult(status=TrialStatus.OK, items_per_s=10.0, item_unit="tokens", metrics={"x": 1.0})
    with TelemetrySampler(interval_s=0.02) as sampler:
        time.sleep(0.1)
    stored = with_nvml_telemetry(result, sampler)
    record = stored.telemetry["nvml"]
    assert record["summary"]["samples"] == len(sampler.samples) == len(record["samples"])
    if _nvml_works():
        assert stored.metrics["gpu_util_gpu_mean"] >= 0 and stored.metrics["x"] == 1.0
    else:  # this machine: no NVML driver; the trial says why instead of failing
        assert record["summary"]["available"] is False and "NVML" in record["summary"]["reason"]
        assert stored.metrics == {"x": 1.0}
    assert result.telemetry == {}  # the original result is not changed
    json.dumps(stored.to_dict())


def test_sampler_on_this_machine() -> None:
    with TelemetrySampler(interval_s=0.02) as sampler:
        time.sleep(0.1)
    summary = sampler.summary()
    if _nvml_works():
        assert sampler.available and summary["samples"] >= 2
        assert set(sampler.samples[0]) == {
            "t", "util", "mem_used", "power_mw", "sm_clock", "temp", "pcie_tx_kbs", "pcie_rx_kbs", "throttle"
        }  # fmt: skip
        return
    assert sampler.available is False
    assert sampler.reason.startswith("NVML unavailable (")
    assert summary["available"] is False and summary["samples"] == 0
    assert summary["reason"] == sampler.reason


def test_sampler_rejects_bad_interval() -> None:
    with pytest.raises(ValidationError) as info:
        TelemetrySampler(interval_s=0)
    assert info.value.problems[0].field == "interval_s"


def test_telemetry_for_device_maps_torch_indices_to_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    assert telemetry_for_device("cpu") is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert telemetry_for_device("cuda").device_index == 0
    assert telemetry_for_device("cuda:1").device_index == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert telemetry_for_device("cuda:1").device_index == 5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa,GPU-bbbb")
    sampler = telemetry_for_device("cuda:1")
    assert sampler.uuid == "GPU-bbbb"

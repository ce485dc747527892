"""NVML telemetry: the summariser on real H200 samples, and the sampler on this machine."""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import time

import pytest

from tests.shared_data import H200_DIR
from tests.trial_requests import trial_request
from tuner.errors import ValidationError
from tuner.hardware.gpu_specs import pcie_peak_bytes_per_s
from tuner.hardware.probe import decode_clock_event_reasons
from tuner.hardware.profile import GpuInfo, load_profile
from tuner.hardware.telemetry import GpmDramReader, TelemetrySampler, read_peaks, telemetry_for_device
from tuner.hardware.telemetry_summary import (
    CPU_RANK_REASON,
    MAX_STORED_SAMPLES,
    METRICS,
    PCIE_KB_BYTES,
    BandwidthPeaks,
    bandwidth_utilisation,
    per_rank_telemetry,
    rank_row,
    summarise_samples,
    summary_metrics,
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


# -- bandwidth as a share of the probed peaks ------------------------------------------------

def test_pcie_peaks_per_generation_and_width() -> None:
    # usable rate per lane and direction: transfer rate x line code / 8 bits
    assert pcie_peak_bytes_per_s(5, 16) == pytest.approx(32e9 * 128 / 130 / 8 * 16)  # 63.0 GB/s
    assert pcie_peak_bytes_per_s(5, 16) / 1e9 == pytest.approx(63.015, abs=1e-3)
    assert pcie_peak_bytes_per_s(4, 16) / 1e9 == pytest.approx(31.508, abs=1e-3)
    assert pcie_peak_bytes_per_s(3, 8) / 1e9 == pytest.approx(7.877, abs=1e-3)
    assert pcie_peak_bytes_per_s(2, 16) == pytest.approx(8e9)  # 8b/10b: 500 MB/s a lane
    assert pcie_peak_bytes_per_s(1, 1) == pytest.approx(250e6)
    assert pcie_peak_bytes_per_s(6, 16) == pytest.approx(64e9 * 242 / 256 / 8 * 16)
    assert pcie_peak_bytes_per_s(None, 16) is None and pcie_peak_bytes_per_s(5, None) is None
    assert pcie_peak_bytes_per_s(9, 16) is None  # unknown generation: no guess


def test_an_idle_downtrained_link_still_gives_the_loaded_peak() -> None:
    # an idle GPU drops its link to gen 1; the max (device + slot) is what it runs at under load
    idle = GpuInfo(index=0, pcie_gen=1, pcie_gen_max=4, pcie_width=16, pcie_width_max=16)
    assert idle.pcie_link == (4, 16)
    assert idle.pcie_peak_bytes_per_s == pytest.approx(pcie_peak_bytes_per_s(4, 16))
    only_current = GpuInfo(index=0, pcie_gen=3, pcie_width=8)
    assert only_current.pcie_peak_bytes_per_s == pytest.approx(pcie_peak_bytes_per_s(3, 8))
    assert GpuInfo(index=0).pcie_peak_bytes_per_s is None


def test_h200_peaks_from_the_recorded_probe() -> None:
    profile = load_profile(H200_DIR / "probe.json")
    gpu = profile.gpus[0]
    assert gpu.pcie_link == (5, 16)
    peaks = BandwidthPeaks.from_profile(profile)
    assert peaks.pcie_link == "gen5 x16"
    assert peaks.pcie_bytes_per_s == pytest.approx(63.015e9, rel=1e-4)
    assert peaks.dram_bytes_per_s == pytest.approx(4.8e12)  # datasheet
    assert peaks.memory_bytes_per_s == pytest.approx(4.258131900187103e12)  # the measured copy
    assert peaks.memory_source.startswith("measured")
    # with no datasheet entry, 2 x memory clock x bus width from NVML (H200: 3201 MHz, 6016 bit)
    unnamed = GpuInfo(index=0, name="Some GPU", max_mem_clock_mhz=3201, memory_bus_width_bits=6016)
    assert unnamed.dram_peak_bytes_per_s == pytest.approx(2 * 3201e6 * 6016 / 8)
    # no probed peak: the share is of the theoretical one, and says so
    fallback = BandwidthPeaks.for_gpu(unnamed)
    assert fallback.memory_bytes_per_s == fallback.dram_bytes_per_s
    assert fallback.memory_source == "theoretical (no probed peak)"


def test_bandwidth_shares_of_real_h200_samples(h200_samples: list[dict]) -> None:
    peaks = BandwidthPeaks.from_profile(load_profile(H200_DIR / "probe.json"))
    summary = summarise_samples(h200_samples, peaks)
    pcie = summary["bandwidth"]["pcie"]
    rx = [s["pcie_rx_kbs"] * 1024 for s in h200_samples]
    assert pcie["rx"]["bytes_per_s"]["mean"] == pytest.approx(statistics.fmean(rx))
    assert pcie["rx"]["share_of_peak"]["max"] == pytest.approx(max(rx) / (32e9 * 128 / 130 / 8 * 16))
    # gpt_124m bf16 training barely touches PCIe: well under 1% of the gen5 x16 link
    assert 0 < pcie["rx"]["share_of_peak"]["mean"] < 0.01 and 0 < pcie["tx"]["share_of_peak"]["mean"] < 0.01
    memory = summary["bandwidth"]["memory"]
    assert memory["method"] == "nvml_memory_busy_upper_bound"
    # util.memory 65, 60, 60, 60, 60 % of 4.8 TB/s, divided by the measured 4.258 TB/s
    assert memory["estimate_bytes_per_s"]["mean"] == pytest.approx(0.61 * 4.8e12)
    assert memory["share_of_probed_peak"]["mean"] == pytest.approx(0.61 * 4.8e12 / 4.258131900187103e12)
    assert memory["share_of_probed_peak"]["max"] == pytest.approx(0.65 * 4.8e12 / 4.258131900187103e12)
    flat = summary_metrics(summary)
    assert flat["gpu_mem_bw_share_mean"] == pytest.approx(memory["share_of_probed_peak"]["mean"])
    assert flat["gpu_pcie_rx_share_max"] == pytest.approx(pcie["rx"]["share_of_peak"]["max"])
    json.dumps(summary)


def test_bandwidth_shares_of_hand_made_samples() -> None:
    peaks = BandwidthPeaks(
        memory_bytes_per_s=1e12, memory_source="measured", dram_bytes_per_s=2e12, pcie_bytes_per_s=1e9
    )
    samples = [
        {"t": 0.0, "util": [90, 25], "pcie_tx_kbs": 0, "pcie_rx_kbs": 1e9 / 2 / PCIE_KB_BYTES},
        {"t": 0.1, "util": [90, 75], "pcie_tx_kbs": None, "pcie_rx_kbs": 1e9 / PCIE_KB_BYTES},
    ]
    out = bandwidth_utilisation(samples, peaks)
    assert out["pcie"]["rx"]["share_of_peak"] == pytest.approx({"mean": 0.75, "max": 1.0})
    assert out["pcie"]["tx"]["share_of_peak"] == {"mean": 0.0, "max": 0.0}  # the refused reading is skipped
    # busy 25% / 75% of a 2 TB/s bus: at most 0.5 / 1.5 TB/s, i.e. 0.5 / 1.5 of the probed 1 TB/s
    assert out["memory"]["share_of_probed_peak"] == pytest.approx({"mean": 1.0, "max": 1.5})
    # GPM's DRAM readings, when there are any, replace the busy-time upper bound
    gpm = bandwidth_utilisation(samples, peaks, dram_bw_util=[10.0, 30.0])
    assert gpm["memory"]["method"] == "gpm_dram_bw_util"
    assert gpm["memory"]["estimate_bytes_per_s"] == pytest.approx({"mean": 0.4e12, "max": 0.6e12})
    assert gpm["memory"]["share_of_probed_peak"] == pytest.approx({"mean": 0.4, "max": 0.6})
    # unknown peaks: the readings stay, the shares say why they are missing
    bare = bandwidth_utilisation(samples, BandwidthPeaks())
    assert "share_of_peak" not in bare["pcie"]["rx"] and "PCIe link" in bare["pcie"]["reason"]
    assert "share_of_probed_peak" not in bare["memory"] and "theoretical" in bare["memory"]["reason"]
    none = bandwidth_utilisation([{"t": 0.0}], peaks)
    assert none["pcie"]["rx"]["reason"] and none["memory"]["reason"].startswith("NVML gave no")


class _FakeNvml:
    """Just enough of pynvml for `read_peaks` and `GpmDramReader` (an H200 under load)."""

    class NVMLError(Exception):
        pass

    NVML_CLOCK_MEM = 2
    NVML_SUCCESS = 0
    NVML_GPM_METRICS_GET_VERSION = 1
    NVML_GPM_METRIC_DRAM_BW_UTIL = 10

    class _Metric:
        metricId = 0
        nvmlReturn = 0
        value = 0.0

    class c_nvmlGpmMetricsGet_t:
        def __init__(self) -> None:
            self.metrics = [_FakeNvml._Metric()]

    def __init__(self, dram: list[float], gpm_supported: bool = True) -> None:
        self.dram = list(dram)
        self.gpm_supported = gpm_supported
        self.samples_taken = 0
        self.freed = 0

    def nvmlDeviceGetName(self, handle: object) -> str:
        return "NVIDIA H200"

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> object:
        return type("M", (), {"total": 150754820096})()

    def nvmlDeviceGetMaxClockInfo(self, handle: object, clock: int) -> int:
        return 3201

    def nvmlDeviceGetMemoryBusWidth(self, handle: object) -> int:
        return 6016

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: object) -> int:
        return 1  # idle, downtrained

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: object) -> int:
        return 5

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: object) -> int:
        return 16

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: object) -> int:
        raise self.NVMLError("Not Supported")

    def nvmlGpmQueryDeviceSupport(self, handle: object) -> object:
        return type("S", (), {"isSupportedDevice": int(self.gpm_supported)})()

    def nvmlGpmSampleAlloc(self) -> object:
        return object()

    def nvmlGpmSampleFree(self, sample: object) -> None:
        self.freed += 1

    def nvmlGpmSampleGet(self, handle: object, sample: object) -> object:
        self.samples_taken += 1
        return sample

    def nvmlGpmMetricsGet(self, request: object) -> object:
        assert request.numMetrics == 1 and request.sample1 is not request.sample2
        metric = request.metrics[0]
        assert metric.metricId == self.NVML_GPM_METRIC_DRAM_BW_UTIL
        metric.value = self.dram.pop(0)
        return request


def test_peaks_read_through_nvml_use_the_max_link_and_the_datasheet() -> None:
    errors: dict[str, str] = {}
    peaks = read_peaks(_FakeNvml([]), handle=None, probed_bytes_per_s=4.2e12, errors=errors)
    # max width refused: the current x16 stands in; max generation 5, not the idle gen 1
    assert peaks.pcie_link == "gen5 x16" and peaks.pcie_bytes_per_s == pytest.approx(pcie_peak_bytes_per_s(5, 16))
    assert peaks.dram_bytes_per_s == pytest.approx(4.8e12) and peaks.memory_bytes_per_s == 4.2e12
    assert errors == {"peaks.nvmlDeviceGetMaxPcieLinkWidth": "Not Supported"}


def test_gpm_reader_takes_a_sample_pair_per_reading_and_frees_them() -> None:
    nvml = _FakeNvml([42.0, 55.5])
    errors: dict[str, str] = {}
    reader = GpmDramReader.open(nvml, handle=None, errors=errors)
    assert reader is not None and nvml.samples_taken == 1  # the first sample of the first pair
    assert reader.read() == 42.0 and reader.read() == 55.5 and nvml.samples_taken == 3
    reader.close()
    assert nvml.freed == 2 and errors == {}
    unsupported = _FakeNvml([], gpm_supported=False)
    assert GpmDramReader.open(unsupported, handle=None, errors=errors) is None
    assert "Hopper" in errors["dram_bw_util"]


def test_a_sampler_without_nvml_has_no_bandwidth_section_and_keeps_its_reason() -> None:
    sampler = TelemetrySampler(interval_s=0.02, probed_memory_bandwidth=4e12)
    with sampler:
        time.sleep(0.05)
    summary = sampler.summary()
    if _nvml_works():  # a GPU machine: the peaks come from NVML, the shares are there
        assert sampler.peaks is not None and "bandwidth" in summary
        assert summary["bandwidth"]["memory"]["probed_peak_bytes_per_s"] == 4e12
        return
    assert sampler.peaks is None and "bandwidth" not in summary and summary["reason"]


# -- every rank of a multi-rank trial ----------------------------------------------------------


def test_rank_rows_and_the_worst_rank_from_real_h200_samples(h200_samples: list[dict]) -> None:
    peaks = BandwidthPeaks.from_profile(load_profile(H200_DIR / "probe.json"))
    # rank 1: the same readings, its SM clock 300 MHz lower (a power-capped GPU)
    slower = [dict(s, sm_clock=s["sm_clock"] - 300) for s in h200_samples]
    row0 = rank_row({**summarise_samples(h200_samples, peaks), "available": True})
    row1 = rank_row({**summarise_samples(slower, peaks), "available": True})
    assert row0["available"] and row0["samples"] == 5
    assert row0["util_gpu_mean"] == pytest.approx(99.2)
    assert row0["power_w_mean"] == pytest.approx(statistics.fmean(s["power_mw"] for s in h200_samples) / 1000)
    assert row0["sm_clock_mean_mhz"] == pytest.approx(1896.0)
    assert row1["sm_clock_mean_mhz"] == pytest.approx(1596.0)
    assert row0["mem_bw_share_mean"] == pytest.approx(0.61 * 4.8e12 / 4.258131900187103e12)
    assert row0["power_capped_share"] == 1.0 and row0["throttle_reasons"] == ["sw_power_cap"]
    table = per_rank_telemetry([row0, row1, None])
    assert [r["rank"] for r in table["ranks"]] == [0, 1, 2]
    assert table["ranks"][2] == {"rank": 2, "available": False, "reason": "the rank sent no result"}
    assert table["sampled_ranks"] == 2
    assert (table["worst_rank"], table["worst_by"]) == (1, "lowest mean SM clock")
    assert "reason" not in table
    json.dumps(table)


def test_without_clocks_the_worst_rank_is_the_least_utilised() -> None:
    rows = [
        {"available": True, "util_gpu_mean": 97.0, "sm_clock_mean_mhz": None},
        {"available": True, "util_gpu_mean": 71.0, "sm_clock_mean_mhz": None},
    ]
    table = per_rank_telemetry(rows)
    assert (table["worst_rank"], table["worst_by"]) == (1, "lowest mean GPU utilisation")


def test_cpu_ranks_keep_their_reason_and_have_no_worst_rank() -> None:
    rows = [rank_row(None, reason=CPU_RANK_REASON), rank_row(None, reason=CPU_RANK_REASON)]
    assert rows[0] == {"available": False, "reason": CPU_RANK_REASON, "samples": 0}
    table = per_rank_telemetry(rows)
    assert table["sampled_ranks"] == 0 and table["worst_rank"] is None and table["worst_by"] is None
    assert table["reason"] == CPU_RANK_REASON
    # a GPU rank whose NVML did not start keeps the sampler's reason
    failed = rank_row({"available": False, "reason": "NVML unavailable (driver not loaded)", "samples": 0})
    assert failed == {"available": False, "reason": "NVML unavailable (driver not loaded)", "samples": 0}


@pytest.mark.skipif(not _nvml_works(), reason="needs NVML (a GPU machine)")
def test_live_sampler_reads_link_and_memory_peaks_and_gpm_on_hopper() -> None:
    with TelemetrySampler(interval_s=0.05, probed_memory_bandwidth=1e12) as sampler:
        time.sleep(0.3)
    peaks = sampler.peaks
    assert peaks is not None and peaks.pcie_bytes_per_s and peaks.pcie_bytes_per_s > 1e9
    assert peaks.dram_bytes_per_s and peaks.dram_bytes_per_s > 1e11
    bandwidth = sampler.summary()["bandwidth"]
    assert "share_of_peak" in bandwidth["pcie"]["rx"] and "share_of_probed_peak" in bandwidth["memory"]
    if "dram_bw_util" not in sampler.errors:  # GPM (Hopper+) answered: the measured figure is used
        assert sampler.dram_bw_util and bandwidth["memory"]["method"] == "gpm_dram_bw_util"
    # the summary names the GPU it sampled, as nvidia-smi does (GPU 0 here)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True)
    assert sampler.summary()["uuid"] == smi.stdout.split()[0]


def test_a_gpm_failure_of_any_kind_is_a_reason_not_a_dead_sampler() -> None:
    class OldBinding(_FakeNvml):
        def nvmlGpmQueryDeviceSupport(self, handle: object) -> object:
            raise AttributeError("no c_nvmlGpmSupport_t")

    errors: dict[str, str] = {}
    assert GpmDramReader.open(OldBinding([]), handle=None, errors=errors) is None
    assert errors["dram_bw_util"] == "GPM: AttributeError: no c_nvmlGpmSupport_t"
    # a reading that fails mid-run: the sampler records why and stops asking
    sampler = TelemetrySampler()
    nvml = _FakeNvml([])  # no readings left: the next read raises IndexError
    sampler._gpm = GpmDramReader(nvml, handle=None)
    assert sampler._read_gpm() is None and sampler._gpm is None
    assert sampler.errors["dram_bw_util"].startswith("GPM: IndexError") and nvml.freed == 2


def test_combining_rank_results_builds_the_table_and_names_the_worst_rank(h200_samples: list[dict]) -> None:
    from tuner.trial.distributed.aggregate import combine
    from tuner.trial.distributed.supervise import RankState, Supervision
    from tuner.types import TrialResult, TrialStatus

    def rank_result(samples: list[dict] | None) -> TrialResult:
        telemetry = {"nvml_rank": rank_row({**summarise_samples(samples), "available": True})} if samples else {}
        return TrialResult(status=TrialStatus.OK, items_per_s=10.0, step_time_s=0.1, telemetry=telemetry)

    hot = [dict(s, sm_clock=s["sm_clock"] - 100) for s in h200_samples]
    states = [
        RankState(0, result=rank_result(h200_samples)),
        RankState(1, result=rank_result(hot)),
        RankState(2, result=rank_result(None)),  # a result without a telemetry line
    ]
    combined = combine(Supervision(states), item_unit="tokens", world_size=3, duration_s=1.0, notes=[])
    assert combined.status is TrialStatus.OK
    table = combined.telemetry["nvml_per_rank"]
    assert table["worst_rank"] == 1 and combined.metrics["gpu_worst_rank"] == 1.0
    assert table["ranks"][2] == {
        "rank": 2, "available": False, "reason": "the rank's result has no NVML line", "samples": 0
    }  # fmt: skip
    assert "nvml_rank" not in combined.telemetry and "per_rank" in combined.telemetry

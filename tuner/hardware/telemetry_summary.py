"""What NVML telemetry means once sampled: summaries, bandwidth shares, per-rank rows.

Pure functions over samples (no NVML, no threads), so they run on recorded data (the
shared H200 readings) as well as on a live sampler's (`tuner.hardware.telemetry`).
Each sample has the keys of the shared H200 data's `nvml_samples_under_load`: t, util
[gpu %, memory %], mem_used (bytes), power_mw, sm_clock (MHz), temp (°C), pcie_tx_kbs,
pcie_rx_kbs (KB/s), throttle (bitmask).

Bandwidth as a share of the peaks (`bandwidth_utilisation`, in the summary's
`bandwidth` when the sampler knows the peaks, `BandwidthPeaks`):

- PCIe, per direction: NVML's TX/RX throughput (KB/s, taken as KiB/s) x 1024 divided by
  the link's peak (`tuner.hardware.gpu_specs.pcie_peak_bytes_per_s`: lanes x the
  generation's usable rate; gen5 x16 = 63.0 GB/s each way).
- Memory bandwidth: on GPUs with NVML's GPU performance monitoring (GPM: Hopper and
  newer) its DRAM bandwidth utilisation (% of the theoretical peak) x the theoretical
  peak; elsewhere an *upper bound*: NVML's memory utilisation (the share of time the
  memory was read or written) x the theoretical peak, since a bus busy x % of the time
  moves at most x % of its peak. The estimate (bytes/s) is then divided by the probed
  peak (`HardwareProfile.memory_bandwidth_bytes_per_s`: a measured copy bandwidth with
  `probe --measure`, else the datasheet's), which is what the study can reach.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from tuner.hardware.probe import decode_clock_event_reasons
from tuner.hardware.profile import GpuInfo, HardwareProfile

__all__ = [
    "MAX_STORED_SAMPLES",
    "SUMMARY_SCHEMA_VERSION",
    "BandwidthPeaks",
    "bandwidth_utilisation",
    "per_rank_telemetry",
    "rank_row",
    "summarise_samples",
    "summary_metrics",
    "telemetry_record",
    "thin_samples",
]

SUMMARY_SCHEMA_VERSION = 1
#: Samples kept with a trial's result (~170 bytes of JSON each): a 10-minute trial at 0.1 s
#: has 6,000, a trend chart of utilisation, power and clock needs far fewer, and every
#: reader of a 10,000-trial study loads each trial's result (60 -> ~10 KB a trial).
MAX_STORED_SAMPLES = 60

# Scalar metrics of a sample (util is a [gpu, memory] pair, split into two metrics).
_SCALAR_METRICS: tuple[str, ...] = (
    "mem_used",
    "power_mw",
    "sm_clock",
    "temp",
    "pcie_tx_kbs",
    "pcie_rx_kbs",
)
METRICS: tuple[str, ...] = ("util_gpu", "util_mem", *_SCALAR_METRICS)
#: NVML's PCIe throughput unit ("KB/s"), taken as KiB.
PCIE_KB_BYTES = 1024


@dataclass(frozen=True)
class BandwidthPeaks:
    """The ceilings bandwidth readings are divided by, in bytes/s (None: unknown).

    `memory_bytes_per_s` is the probed peak (what a share is "of"); `dram_bytes_per_s`
    the theoretical one (what a busy share or GPM's % is converted with);
    `pcie_bytes_per_s` the link's peak in each direction.
    """

    memory_bytes_per_s: float | None = None
    memory_source: str | None = None
    dram_bytes_per_s: float | None = None
    pcie_bytes_per_s: float | None = None
    pcie_link: str | None = None  # e.g. "gen5 x16"

    @classmethod
    def for_gpu(
        cls, gpu: GpuInfo, probed_bytes_per_s: float | None = None, probed_source: str | None = None
    ) -> BandwidthPeaks:
        """Peaks of `gpu`; the probed memory peak when given, else the theoretical one."""
        generation, width = gpu.pcie_link
        dram = gpu.dram_peak_bytes_per_s
        if probed_bytes_per_s:
            memory, source = float(probed_bytes_per_s), probed_source or "probed"
        else:
            memory, source = dram, "theoretical (no probed peak)" if dram else None
        return cls(
            memory_bytes_per_s=memory,
            memory_source=source,
            dram_bytes_per_s=dram,
            pcie_bytes_per_s=gpu.pcie_peak_bytes_per_s,
            pcie_link=f"gen{generation} x{width}" if generation and width else None,
        )

    @classmethod
    def from_profile(cls, profile: HardwareProfile, gpu_index: int = 0) -> BandwidthPeaks:
        """Peaks of one GPU of a hardware profile, with the profile's probed bandwidth."""
        gpu = profile.gpus[gpu_index]
        return cls.for_gpu(
            gpu, profile.memory_bandwidth_bytes_per_s, profile.peak_sources.get("bandwidth") or "probed"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean_max(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "max": max(values)}


def _pcie_direction(samples: list[dict[str, Any]], key: str, peak: float | None) -> dict[str, Any]:
    values = [v * PCIE_KB_BYTES for v in _metric_values(samples, key)]
    if not values:
        return {"reason": "NVML gave no PCIe throughput reading"}
    out: dict[str, Any] = {"bytes_per_s": _mean_max(values)}
    if peak:
        out["share_of_peak"] = {k: v / peak for k, v in out["bytes_per_s"].items()}
    return out


def bandwidth_utilisation(
    samples: list[dict[str, Any]], peaks: BandwidthPeaks, dram_bw_util: list[float] | None = None
) -> dict[str, Any]:
    """PCIe throughput and memory bandwidth as shares of `peaks` (see the module docstring).

    Pure: `samples` are NVML samples (the shared H200 data's or a sampler's),
    `dram_bw_util` GPM's DRAM bandwidth utilisation readings (%), when there are any.
    """
    pcie: dict[str, Any] = {"peak_bytes_per_s": peaks.pcie_bytes_per_s, "link": peaks.pcie_link}
    if not peaks.pcie_bytes_per_s:
        pcie["reason"] = "no PCIe link generation/width from NVML: no peak to divide by"
    for direction, key in (("tx", "pcie_tx_kbs"), ("rx", "pcie_rx_kbs")):
        pcie[direction] = _pcie_direction(samples, key, peaks.pcie_bytes_per_s)

    memory: dict[str, Any] = {
        "probed_peak_bytes_per_s": peaks.memory_bytes_per_s,
        "probed_peak_source": peaks.memory_source,
        "theoretical_peak_bytes_per_s": peaks.dram_bytes_per_s,
    }
    gpm = [float(v) for v in dram_bw_util or () if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if gpm:
        memory["method"] = "gpm_dram_bw_util"
        percents = gpm
    else:
        memory["method"] = "nvml_memory_busy_upper_bound"
        percents = _metric_values(samples, "util_mem")
    if not percents:
        memory["reason"] = "NVML gave no memory utilisation reading"
    elif not peaks.dram_bytes_per_s:
        memory["reason"] = "no theoretical memory bandwidth (datasheet or NVML clocks) to convert with"
    else:
        estimate = _mean_max([p / 100 * peaks.dram_bytes_per_s for p in percents])
        memory["estimate_bytes_per_s"] = estimate
        if peaks.memory_bytes_per_s:
            memory["share_of_probed_peak"] = {k: v / peaks.memory_bytes_per_s for k, v in estimate.items()}
    return {"pcie": pcie, "memory": memory}


def _metric_values(samples: Iterable[dict[str, Any]], metric: str) -> list[float]:
    values: list[float] = []
    for sample in samples:
        if metric in ("util_gpu", "util_mem"):
            util = sample.get("util")
            value = util[0 if metric == "util_gpu" else 1] if isinstance(util, (list, tuple)) else None
        else:
            value = sample.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
    return values


def summarise_samples(
    samples: list[dict[str, Any]],
    peaks: BandwidthPeaks | None = None,
    dram_bw_util: list[float] | None = None,
) -> dict[str, Any]:
    """Mean and max of each metric, the sample count and the throttle reasons seen.

    Pure: works on saved samples (e.g. the shared H200 data) as on a live sampler's.
    `throttle.share` is the fraction of samples in which each reason was active. With
    `peaks`, `bandwidth` holds `bandwidth_utilisation`.
    """
    metrics: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        values = _metric_values(samples, metric)
        if values:
            metrics[metric] = {"mean": sum(values) / len(values), "max": max(values), "min": min(values)}
    masks = [s["throttle"] for s in samples if isinstance(s.get("throttle"), int)]
    reason_counts: dict[str, int] = {}
    for mask in masks:
        for name in decode_clock_event_reasons(mask):
            reason_counts[name] = reason_counts.get(name, 0) + 1
    times = [s["t"] for s in samples if isinstance(s.get("t"), (int, float))]
    extra: dict[str, Any] = {}
    if peaks is not None:
        extra["bandwidth"] = bandwidth_utilisation(samples, peaks, dram_bw_util)
    if dram_bw_util:
        extra["gpm_dram_bw_util"] = {**_mean_max([float(v) for v in dram_bw_util]), "readings": len(dram_bw_util)}
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "samples": len(samples),
        "duration_s": (max(times) - min(times)) if len(times) > 1 else 0.0,
        "metrics": metrics,
        "throttle": {
            "reasons": sorted(reason_counts, key=lambda n: -reason_counts[n]),
            "share": {name: count / len(masks) for name, count in reason_counts.items()},
            "masks_seen": sorted(set(masks)),
        },
        **extra,
    }


def summary_metrics(summary: dict[str, Any], prefix: str = "gpu_") -> dict[str, float]:
    """A flat, floats-only view of a summary for `TrialResult.metrics`.

    Keys like "gpu_util_gpu_mean", "gpu_power_mw_max", plus the share of samples that
    were power capped or thermally throttled (the two reasons that cost throughput).
    """
    flat: dict[str, float] = {}
    for metric, stats in (summary.get("metrics") or {}).items():
        for stat in ("mean", "max"):
            flat[f"{prefix}{metric}_{stat}"] = float(stats[stat])
    shares = (summary.get("throttle") or {}).get("share") or {}
    flat[f"{prefix}power_capped_share"] = float(shares.get("sw_power_cap", 0.0))
    flat[f"{prefix}thermal_throttled_share"] = float(
        max(shares.get("sw_thermal_slowdown", 0.0), shares.get("hw_thermal_slowdown", 0.0))
    )
    bandwidth = summary.get("bandwidth") or {}
    for direction in ("tx", "rx"):
        share = ((bandwidth.get("pcie") or {}).get(direction) or {}).get("share_of_peak")
        if share:
            flat[f"{prefix}pcie_{direction}_share_mean"] = float(share["mean"])
            flat[f"{prefix}pcie_{direction}_share_max"] = float(share["max"])
    memory_share = (bandwidth.get("memory") or {}).get("share_of_probed_peak")
    if memory_share:
        flat[f"{prefix}mem_bw_share_mean"] = float(memory_share["mean"])
        flat[f"{prefix}mem_bw_share_max"] = float(memory_share["max"])
    return flat


def thin_samples(samples: list[dict[str, Any]], limit: int = MAX_STORED_SAMPLES) -> list[dict[str, Any]]:
    """At most `limit` samples, evenly spaced in order, the first and the last kept."""
    if limit < 2:
        raise ValueError("limit must be >= 2 (the first and the last sample are kept)")
    if len(samples) <= limit:
        return list(samples)
    step = (len(samples) - 1) / (limit - 1)
    return [samples[round(i * step)] for i in range(limit)]


def telemetry_record(
    summary: dict[str, Any], samples: list[dict[str, Any]], limit: int = MAX_STORED_SAMPLES
) -> dict[str, Any]:
    """What a trial keeps of its NVML sampling (`TrialResult.telemetry["nvml"]`): the
    summary of *every* sample, and at most `limit` of the samples themselves (thinned,
    in order) for the dashboard's time chart. `summary["samples"]` stays the full count."""
    return {"summary": dict(summary), "samples": thin_samples(samples, limit)}


#: why a CPU rank has no NVML telemetry (kept in its per-rank row)
CPU_RANK_REASON = "CPU rank: no GPU for NVML to sample"


def rank_row(summary: dict[str, Any] | None, reason: str | None = None) -> dict[str, Any]:
    """One rank's line of a multi-rank trial's NVML table: a few numbers of its summary.

    `summary` is a sampler's summary (None: the rank sampled nothing, `reason` says why).
    Keys missing from the summary are None, never guessed.
    """
    # A saved summary (summarise_samples) has no "available": its samples say it was.
    if not summary or not summary.get("available", True) or not summary.get("samples"):
        why = reason or (summary or {}).get("reason") or "NVML gave no samples"
        return {"available": False, "reason": why, "samples": int((summary or {}).get("samples") or 0)}
    flat = summary_metrics(summary)

    def pick(key: str, scale: float = 1.0) -> float | None:
        value = flat.get(key)
        return value * scale if value is not None else None

    row: dict[str, Any] = {
        "available": True,
        "samples": int(summary.get("samples") or 0),
        "util_gpu_mean": pick("gpu_util_gpu_mean"),
        "util_mem_mean": pick("gpu_util_mem_mean"),
        "mem_used_max_bytes": pick("gpu_mem_used_max"),
        "power_w_mean": pick("gpu_power_mw_mean", 1e-3),
        "sm_clock_mean_mhz": pick("gpu_sm_clock_mean"),
        "temp_max_c": pick("gpu_temp_max"),
        "mem_bw_share_mean": pick("gpu_mem_bw_share_mean"),
        "pcie_tx_share_mean": pick("gpu_pcie_tx_share_mean"),
        "pcie_rx_share_mean": pick("gpu_pcie_rx_share_mean"),
        "power_capped_share": pick("gpu_power_capped_share"),
        "thermal_throttled_share": pick("gpu_thermal_throttled_share"),
        "throttle_reasons": list((summary.get("throttle") or {}).get("reasons") or []),
    }
    if summary.get("reason"):
        row["reason"] = summary["reason"]
    return row


def per_rank_telemetry(rows: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The per-rank NVML table of a multi-rank trial and its worst rank.

    `rows[r]` is rank r's `rank_row` (None: the rank sent no result). The worst rank is
    the sampled one with the lowest mean SM clock — the one slowed most by power or
    thermal limits, which paces every rank of a synchronous step — or, where no rank
    read clocks, the lowest mean GPU utilisation. None when no rank was sampled (CPU).
    """
    ranks = [
        {"rank": r, **(row if row is not None else {"available": False, "reason": "the rank sent no result"})}
        for r, row in enumerate(rows)
    ]
    sampled = [row for row in ranks if row.get("available")]
    worst: dict[str, Any] | None = None
    worst_by = None
    for key, label in (("sm_clock_mean_mhz", "lowest mean SM clock"), ("util_gpu_mean", "lowest mean GPU utilisation")):
        candidates = [row for row in sampled if row.get(key) is not None]
        if candidates:
            worst = min(candidates, key=lambda row: (row[key], row["rank"]))
            worst_by = label
            break
    out: dict[str, Any] = {
        "ranks": ranks,
        "sampled_ranks": len(sampled),
        "worst_rank": worst["rank"] if worst is not None else None,
        "worst_by": worst_by,
    }
    if not sampled:
        reasons = sorted({str(row.get("reason")) for row in ranks})
        out["reason"] = "; ".join(reasons) if reasons else "no ranks"
    return out

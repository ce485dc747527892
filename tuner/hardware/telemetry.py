"""GPU telemetry while a trial trains: an NVML sampler thread and a summariser.

Throughput alone cannot say *why* a config is slow; utilisation, power, clocks and the
clock-event (throttle) reasons can (e.g. a power-capped H200 drops its SM clock from
1980 to ~1800 MHz under load). Each sample has the keys of the shared H200 data's
`nvml_samples_under_load`: t, util [gpu %, memory %], mem_used (bytes), power_mw,
sm_clock (MHz), temp (°C), pcie_tx_kbs, pcie_rx_kbs (KB/s), throttle (bitmask).

Without NVML the sampler is a no-op whose `available` is False and `reason` says why;
trials never fail because telemetry could not run. NVML is reached through
`tuner.hardware` (the one module that imports pynvml).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.hardware.probe import NvmlUnavailableError, decode_clock_event_reasons, nvml_session
from tuner.hardware.profile import nvml_uuid_candidates

__all__ = [
    "SUMMARY_SCHEMA_VERSION",
    "TelemetrySampler",
    "read_sample",
    "summarise_samples",
    "summary_metrics",
    "telemetry_for_device",
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


def read_sample(nvml: ModuleType, handle: Any, errors: dict[str, str] | None = None) -> dict[str, Any]:
    """One telemetry sample of one GPU; a refused reading is None (reason in `errors`)."""

    def read(key: str, fn_name: str, *args: Any) -> Any:
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            if errors is not None:
                errors.setdefault(key, f"this nvidia-ml-py has no {fn_name}")
            return None
        try:
            return fn(handle, *args)
        except nvml.NVMLError as exc:
            if errors is not None:
                errors.setdefault(key, str(exc))
            return None

    util = read("util", "nvmlDeviceGetUtilizationRates")
    memory = read("mem_used", "nvmlDeviceGetMemoryInfo")
    throttle_fn = (
        "nvmlDeviceGetCurrentClocksEventReasons"
        if hasattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons")
        else "nvmlDeviceGetCurrentClocksThrottleReasons"
    )
    return {
        "t": time.time(),
        "util": [util.gpu, util.memory] if util is not None else None,
        "mem_used": memory.used if memory is not None else None,
        "power_mw": read("power_mw", "nvmlDeviceGetPowerUsage"),
        "sm_clock": read("sm_clock", "nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM),
        "temp": read("temp", "nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU),
        "pcie_tx_kbs": read("pcie_tx_kbs", "nvmlDeviceGetPcieThroughput", nvml.NVML_PCIE_UTIL_TX_BYTES),
        "pcie_rx_kbs": read("pcie_rx_kbs", "nvmlDeviceGetPcieThroughput", nvml.NVML_PCIE_UTIL_RX_BYTES),
        "throttle": read("throttle", throttle_fn),
    }


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


def summarise_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max of each metric, the sample count and the throttle reasons seen.

    Pure: works on saved samples (e.g. the shared H200 data) as on a live sampler's.
    `throttle.share` is the fraction of samples in which each reason was active.
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
    }


class TelemetrySampler:
    """Samples one GPU through NVML every `interval_s` on a daemon thread.

    Use as a context manager around the code to observe; `samples` and `summary()` are
    valid during and after. `device_index` is NVML's index (PCI order); pass `uuid` to
    pick the GPU by UUID instead (what `telemetry_for_device` does when it can).
    """

    def __init__(
        self,
        device_index: int = 0,
        interval_s: float = 0.1,
        *,
        uuid: str | None = None,
        alt_uuids: tuple[str, ...] = (),
        max_samples: int = 100_000,
    ) -> None:
        problems = []
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or interval_s <= 0:
            problems.append(
                FieldProblem("interval_s", interval_s, "must be a number of seconds > 0", "use e.g. 0.1")
            )
        if isinstance(device_index, bool) or not isinstance(device_index, int) or device_index < 0:
            problems.append(
                FieldProblem("device_index", device_index, "must be an int >= 0", "use NVML's GPU index")
            )
        if problems:
            raise ValidationError(problems)
        self.device_index = device_index
        self.uuid = uuid
        self.alt_uuids = tuple(alt_uuids)  # tried in order when NVML does not know `uuid`
        self.interval_s = float(interval_s)
        self.max_samples = max_samples
        self.available = False
        self.reason: str | None = "not started"
        self.errors: dict[str, str] = {}  # metric -> first refusal message
        self.dropped = 0  # samples not kept past max_samples
        self._samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: Any = None

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            session = nvml_session()
            nvml = session.__enter__()
        except NvmlUnavailableError as exc:
            self.available, self.reason = False, str(exc)
            return
        try:
            handle = self._handle(nvml)
        except nvml.NVMLError as exc:
            session.__exit__(None, None, None)
            which = f"uuid {self.uuid}" if self.uuid else f"index {self.device_index}"
            self.available, self.reason = False, f"NVML has no GPU {which} ({exc})"
            return
        self._session = session
        self.available, self.reason = True, None
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(nvml, handle), name="tuner-telemetry", daemon=True
        )
        self._thread.start()

    def _handle(self, nvml: ModuleType) -> Any:
        if self.uuid is None:
            return nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        for uuid in self.alt_uuids:  # the alternatives first fail quietly
            try:
                return nvml.nvmlDeviceGetHandleByUUID(self.uuid)
            except nvml.NVMLError:
                self.uuid = uuid
        return nvml.nvmlDeviceGetHandleByUUID(self.uuid)

    def _run(self, nvml: ModuleType, handle: Any) -> None:
        while True:
            sample = read_sample(nvml, handle, self.errors)
            with self._lock:
                if len(self._samples) < self.max_samples:
                    self._samples.append(sample)
                else:
                    self.dropped += 1
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5 * self.interval_s + 5)
        self._thread = None
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None

    def __enter__(self) -> TelemetrySampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def samples(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._samples)

    def summary(self) -> dict[str, Any]:
        """`summarise_samples` of what was sampled, plus availability and read errors."""
        summary = summarise_samples(self.samples)
        summary["available"] = self.available
        summary["interval_s"] = self.interval_s
        if self.reason:
            summary["reason"] = self.reason
        if self.errors:
            summary["unavailable"] = dict(self.errors)
        if self.dropped:
            summary["dropped_samples"] = self.dropped
        return summary


def _torch_uuids(torch_index: int) -> tuple[str, ...]:
    """NVML UUIDs torch's GPU may have, only when the caller already initialised CUDA.

    torch and NVML may number GPUs differently (CUDA_DEVICE_ORDER, CUDA_VISIBLE_DEVICES);
    the UUID names the same GPU in both. torch gives it bare: "GPU-" for a whole GPU or
    "MIG-" for a MIG device (`nvml_uuid_candidates`). We never import torch or initialise
    CUDA here.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return ()
    try:
        if not torch.cuda.is_initialized():
            return ()
        uuid = str(torch.cuda.get_device_properties(torch_index).uuid)
    except Exception:  # any failure just means: fall back to the index mapping
        return ()
    return nvml_uuid_candidates(uuid) if uuid else ()


def _nvml_index(torch_index: int, visible: str | None) -> tuple[int | None, str | None]:
    """NVML index (or UUID) of torch's `cuda:N` under CUDA_VISIBLE_DEVICES."""
    if visible is None:
        return torch_index, None
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if torch_index >= len(entries):
        return None, None
    entry = entries[torch_index]
    if entry.isdigit():
        return int(entry), None
    return None, entry  # a UUID (GPU-…/MIG-…)


def telemetry_for_device(device: str, interval_s: float = 0.1) -> TelemetrySampler | None:
    """A sampler for the trial device `device` ("cuda", "cuda:1"), or None for the CPU.

    The sampler is not started; use it as a context manager around the training.
    """
    if not device.startswith("cuda"):
        return None
    _, _, index_text = device.partition(":")
    torch_index = int(index_text) if index_text.isdigit() else 0
    uuids = _torch_uuids(torch_index)
    if uuids:
        return TelemetrySampler(interval_s=interval_s, uuid=uuids[0], alt_uuids=uuids[1:])
    index, uuid = _nvml_index(torch_index, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if uuid is not None:
        return TelemetrySampler(interval_s=interval_s, uuid=uuid)
    return TelemetrySampler(device_index=index if index is not None else torch_index, interval_s=interval_s)


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

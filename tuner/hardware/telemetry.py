"""GPU telemetry while a trial trains: the NVML sampler thread.

Throughput alone cannot say *why* a config is slow; utilisation, power, clocks and the
clock-event (throttle) reasons can (e.g. a power-capped H200 drops its SM clock from
1980 to ~1800 MHz under load). The sampler reads NVML every interval; what the samples
mean (summary, bandwidth shares, per-rank rows) is `tuner.hardware.telemetry_summary`.

Without NVML the sampler is a no-op whose `available` is False and `reason` says why;
trials never fail because telemetry could not run. NVML is reached through
`tuner.hardware.probe` (pynvml is imported only there and here).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from types import ModuleType
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.hardware.probe import NvmlUnavailableError, nvml_session
from tuner.hardware.profile import GpuInfo, nvml_uuid_candidates
from tuner.hardware.telemetry_summary import BandwidthPeaks, summarise_samples

__all__ = ["TelemetrySampler", "read_peaks", "read_sample", "telemetry_for_device"]

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


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def read_peaks(
    nvml: ModuleType,
    handle: Any,
    probed_bytes_per_s: float | None = None,
    probed_source: str | None = None,
    errors: dict[str, str] | None = None,
) -> BandwidthPeaks:
    """The GPU's bandwidth peaks from NVML (link generation/width, memory clock and bus
    width, name for the datasheet), with the probed memory peak when the caller has one."""

    def read(fn_name: str, *args: Any) -> Any:
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            return None
        try:
            return fn(handle, *args)
        except nvml.NVMLError as exc:
            if errors is not None:
                errors.setdefault(f"peaks.{fn_name}", str(exc))
            return None

    memory = read("nvmlDeviceGetMemoryInfo")
    gpu = GpuInfo(
        index=0,
        name=_text(read("nvmlDeviceGetName")),
        memory_total_bytes=memory.total if memory is not None else None,
        max_mem_clock_mhz=read("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_MEM),
        memory_bus_width_bits=read("nvmlDeviceGetMemoryBusWidth"),
        pcie_gen=read("nvmlDeviceGetCurrPcieLinkGeneration"),
        pcie_gen_max=read("nvmlDeviceGetMaxPcieLinkGeneration"),
        pcie_width=read("nvmlDeviceGetCurrPcieLinkWidth"),
        pcie_width_max=read("nvmlDeviceGetMaxPcieLinkWidth"),
    )
    return BandwidthPeaks.for_gpu(gpu, probed_bytes_per_s, probed_source)


class GpmDramReader:
    """NVML GPU performance monitoring's DRAM bandwidth utilisation (Hopper and newer).

    GPM metrics are computed from two GPM samples: each `read()` takes a new one and
    returns the DRAM bandwidth used between it and the previous one, in % of the
    theoretical peak. `open` returns None (reason in `errors["dram_bw_util"]`) where GPM
    is not supported.
    """

    def __init__(self, nvml: ModuleType, handle: Any) -> None:
        self._nvml, self._handle = nvml, handle
        self._previous = nvml.nvmlGpmSampleAlloc()
        self._current = nvml.nvmlGpmSampleAlloc()
        nvml.nvmlGpmSampleGet(handle, self._previous)

    @classmethod
    def open(cls, nvml: ModuleType, handle: Any, errors: dict[str, str]) -> GpmDramReader | None:
        if not hasattr(nvml, "nvmlGpmQueryDeviceSupport"):
            errors.setdefault("dram_bw_util", "this nvidia-ml-py has no GPM functions")
            return None
        try:
            if not nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
                errors.setdefault("dram_bw_util", "GPM is not supported on this GPU (Hopper and newer)")
                return None
            return cls(nvml, handle)
        except Exception as exc:  # NVMLError, or a binding without GPM's structures
            errors.setdefault("dram_bw_util", f"GPM: {type(exc).__name__}: {exc}")
            return None

    def read(self) -> float | None:
        nvml = self._nvml
        nvml.nvmlGpmSampleGet(self._handle, self._current)
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = 1
        request.sample1, request.sample2 = self._previous, self._current
        request.metrics[0].metricId = nvml.NVML_GPM_METRIC_DRAM_BW_UTIL
        nvml.nvmlGpmMetricsGet(request)
        self._previous, self._current = self._current, self._previous
        metric = request.metrics[0]
        return float(metric.value) if metric.nvmlReturn == nvml.NVML_SUCCESS else None

    def close(self) -> None:
        for sample in (self._previous, self._current):
            # freeing at shutdown: nothing to do about a refusal
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlGpmSampleFree(sample)


class TelemetrySampler:
    """Samples one GPU through NVML every `interval_s` on a daemon thread.

    Use as a context manager around the code to observe; `samples` and `summary()` are
    valid during and after. `device_index` is NVML's index (PCI order); pass `uuid` to
    pick the GPU by UUID instead (what `telemetry_for_device` does when it can).
    `probed_memory_bandwidth` (bytes/s, the hardware profile's) is what the memory
    bandwidth share is "of"; without it the theoretical peak is.
    """

    def __init__(
        self,
        device_index: int = 0,
        interval_s: float = 0.1,
        *,
        uuid: str | None = None,
        alt_uuids: tuple[str, ...] = (),
        max_samples: int = 100_000,
        probed_memory_bandwidth: float | None = None,
        probed_memory_source: str | None = None,
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
        self.probed_memory_bandwidth = probed_memory_bandwidth
        self.probed_memory_source = probed_memory_source
        self.peaks: BandwidthPeaks | None = None  # read from NVML when sampling starts
        self._gpm: GpmDramReader | None = None
        self._dram_bw_util: list[float] = []
        self._samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: Any = None
        #: the UUID NVML reports for the GPU actually sampled (None: not known), so a
        #: reader can check the numbers belong to the GPU the trial ran on
        self.sampled_uuid: str | None = None

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
        try:
            self.sampled_uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:
            self.errors.setdefault("uuid", str(exc))
        # Bandwidth shares are extras: whatever goes wrong reading the peaks or opening
        # GPM, the utilisation/power/clock sampling must still run.
        try:
            self.peaks = read_peaks(
                nvml, handle, self.probed_memory_bandwidth, self.probed_memory_source, self.errors
            )
        except Exception as exc:
            self.errors.setdefault("peaks", f"{type(exc).__name__}: {exc}")
        self._gpm = GpmDramReader.open(nvml, handle, self.errors)
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
            dram = self._read_gpm()
            with self._lock:
                if len(self._samples) < self.max_samples:
                    self._samples.append(sample)
                    if dram is not None:
                        self._dram_bw_util.append(dram)
                else:
                    self.dropped += 1
            if self._stop.wait(self.interval_s):
                return

    def _read_gpm(self) -> float | None:
        if self._gpm is None:
            return None
        try:
            return self._gpm.read()
        except Exception as exc:  # stop asking; the upper bound from util.memory remains
            self.errors.setdefault("dram_bw_util", f"GPM: {type(exc).__name__}: {exc}")
            self._gpm.close()
            self._gpm = None
            return None

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5 * self.interval_s + 5)
        self._thread = None
        if self._gpm is not None:
            self._gpm.close()
            self._gpm = None
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

    @property
    def dram_bw_util(self) -> list[float]:
        """GPM's DRAM bandwidth utilisation readings (%), empty without GPM."""
        with self._lock:
            return list(self._dram_bw_util)

    def summary(self) -> dict[str, Any]:
        """`summarise_samples` of what was sampled (with the bandwidth shares when the
        peaks are known), plus availability and read errors."""
        summary = summarise_samples(self.samples, self.peaks, self.dram_bw_util)
        summary["available"] = self.available
        summary["interval_s"] = self.interval_s
        if self.sampled_uuid:
            summary["uuid"] = self.sampled_uuid
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


def telemetry_for_device(
    device: str, interval_s: float = 0.1, *, probed_memory_bandwidth: float | None = None
) -> TelemetrySampler | None:
    """A sampler for the trial device `device` ("cuda", "cuda:1"), or None for the CPU.

    The sampler is not started; use it as a context manager around the training.
    `probed_memory_bandwidth`: the hardware profile's memory bandwidth (bytes/s).
    """
    if not device.startswith("cuda"):
        return None
    _, _, index_text = device.partition(":")
    torch_index = int(index_text) if index_text.isdigit() else 0
    common: dict[str, Any] = {"interval_s": interval_s, "probed_memory_bandwidth": probed_memory_bandwidth}
    uuids = _torch_uuids(torch_index)
    if uuids:
        return TelemetrySampler(uuid=uuids[0], alt_uuids=uuids[1:], **common)
    index, uuid = _nvml_index(torch_index, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if uuid is not None:
        return TelemetrySampler(uuid=uuid, **common)
    return TelemetrySampler(device_index=index if index is not None else torch_index, **common)



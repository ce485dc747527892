"""The hardware side of a study: the config generator's plan (narrowed space, feasibility
of each config before it runs) and each trial's peak FLOP/s for MFU."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.study.spec import StudySpec
from tuner.types import TrialConfig, TrialResult

if TYPE_CHECKING:
    from tuner.hardware.profile import HardwareProfile
    from tuner.study.quality import QualityHold
    from tuner.workloads.base import Workload


log = logging.getLogger(__name__)


# -- the generator (hardware-aware narrowing and feasibility) --------------------------------------


@dataclass
class StudyGenerator:
    plan: Any  # tuner.generator.planner.GeneratorPlan
    reasoning: tuple[str, ...]
    # With shape-changing hparams (tuner.study.hparams), each trial's prediction uses the
    # plan rebuilt for its model shape: the workload and the study's resolved params.
    workload: Workload | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    _shaped: dict[Any, Any] = field(default_factory=dict, repr=False)

    def plan_for(self, trial_params: Mapping[str, Any] | None) -> Any:
        from tuner.study.hparams import plan_for_shape, shape_hparams

        if self.workload is None or not trial_params or not shape_hparams(self.workload, trial_params):
            return self.plan
        if all(self.params.get(k) == v for k, v in shape_hparams(self.workload, trial_params).items()):
            return self.plan  # the study's own shape
        return plan_for_shape(self.plan, self.workload, trial_params, self._shaped)

    def check(self, config: TrialConfig, trial_params: Mapping[str, Any] | None = None) -> tuple[bool, int | None]:
        """Whether `config` is predicted to fit; `trial_params`: the trial's resolved params
        when its hparams change the model's shape."""
        plan = self.plan_for(trial_params)
        ok, estimate = plan.is_feasible(config)
        if not getattr(plan, "memory_modelled", True):
            return True, None  # no memory model: nothing predicted (the plan's reasoning says so)
        return bool(ok), getattr(estimate, "peak_bytes", None)

    def observe(self, config: TrialConfig, result: TrialResult, trial_params: Mapping[str, Any] | None = None) -> None:
        try:
            self.plan_for(trial_params).observe(config, result.peak_memory_bytes, result.status.value)
        except Exception:  # learning from a measurement must never stop the study
            log.exception("generator observe() failed")


def make_generator(
    spec: StudySpec,
    workload: Workload,
    params: dict[str, Any],
    base: TrialConfig,
    hardware: HardwareProfile | None,
    hold: QualityHold | None = None,
) -> tuple[StudyGenerator | None, HardwareProfile | None]:
    """The generator's plan for `hold.space` (the space with quality knobs held; `spec.space`
    without a hold), its reasoning after the hold's."""
    try:
        from tuner.generator.planner import plan as make_plan
    except ImportError as exc:
        if exc.name != "tuner.generator":
            raise
        log.warning("tuner.generator.planner is not available; searching the space as given")
        return None, hardware
    if hardware is None:
        from tuner.hardware.probe import probe

        hardware = probe()
    else:
        from tuner.hardware.memory_in_use import with_current_memory_use

        hardware = with_current_memory_use(hardware)  # a saved profile's figure may be old
    plan = make_plan(
        hardware,
        workload.shape(params),
        hold.space if hold is not None else spec.space,
        workload=spec.workload,
        base_config=base,
        memory_limit_bytes=spec.memory_limit_bytes,
        objective=spec.objectives[0],
        derive=hold.derive if hold is not None and hold.effective_batch is not None else None,
    )
    reasoning = plan.reasoning
    lines = tuple(reasoning) if isinstance(reasoning, (list, tuple)) else tuple(str(reasoning).splitlines())
    held = hold.reasoning if hold is not None else ()
    return StudyGenerator(plan, held + lines, workload=workload, params=dict(params)), hardware


# -- MFU ---------------------------------------------------------------------------------------


def trial_peak_flops(profile: HardwareProfile | None, config: TrialConfig, device: str) -> float | None:
    """Peak FLOP/s of ONE device for `config`, the figure the runner divides by for MFU.

    The peak of `config.precision` (tf32 -> "tf32", fp32 -> "fp32", …) from the hardware
    profile, in FLOP/s. None when there is no profile, when the profile describes another
    kind of device than the trial runs on (an H200 profile for a `device="cpu"` study), or
    when it has no peak for that precision.

    Per device, not times world_size: the runner multiplies by `config.world_size` itself
    (every rank has its own GPU). On CPU the ranks of one trial share the cores the
    profile's estimate covers, so the machine's peak is divided among them and the
    runner's product gives back the machine's peak. A CPU has no tf32 units and, without
    bf16/fp16 units, does that arithmetic in fp32: its fp32 peak stands in.
    """
    if profile is None:
        return None
    kind = "cpu" if device == "cpu" else "cuda" if device.startswith("cuda") else profile.device_type
    if kind != profile.device_type:
        return None
    peaks = profile.peak_tflops
    tflops = peaks.get(config.precision)
    if kind == "cpu":
        if tflops is None:
            tflops = peaks.get("fp32")
        if tflops is not None:
            tflops /= max(1, config.world_size)
    return float(tflops) * 1e12 if tflops else None


def trial_peak_memory_bandwidth(profile: HardwareProfile | None, device: str) -> float | None:
    """The profile's memory bandwidth (bytes/s) for a GPU trial, None for a CPU trial or
    without a GPU profile: the ceiling NVML telemetry's bandwidth share is taken of."""
    if profile is None or profile.device_type != "cuda" or device == "cpu":
        return None
    return profile.memory_bandwidth_bytes_per_s


def probe_for_mfu() -> HardwareProfile | None:
    """This machine's profile (NVML or /proc; no torch, no timing), for the trials' MFU.

    Only its peaks are used; a machine that cannot be probed just gets no MFU.
    """
    try:
        from tuner.hardware.probe import probe

        return probe()
    except Exception as exc:
        log.warning("no hardware profile, so no MFU: probing failed (%s: %s)", type(exc).__name__, exc)
        return None

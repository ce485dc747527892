"""Config generator: hardware profile + workload shape + search space -> a plan.

The plan narrows the space to what can be fast and can fit on this machine, gives the
study loop a memory constraint (a config predicted not to fit is recorded `infeasible`
and never launched), proposes 1-3 starting configs, and learns from measured trials
(`observe`) so later constraints and starting configs use calibrated memory numbers.

What makes a config fast, from first principles (docs/memory-model.md has the numbers):
- the precision with the highest matmul rate the hardware supports (bf16 on Hopper is
  15x fp32 in dense matmuls; on CPUs fp32 is usually the fastest);
- many items per step, so fixed per-step costs (kernel launches, the optimizer's pass
  over all parameters) are amortised — throughput rises with the micro batch until
  those costs are small, and the largest micro batch that fits is the safe bet;
- no activation checkpointing when the batch fits without it (it recomputes the forward:
  15-50% slower on the H200 table), only when it is needed to fit at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.errors import ValidationError
from tuner.generator.calibration import MemoryModel
from tuner.generator.memory_model import SIXTEEN_BIT, MemoryEstimate, model_family, usable_memory_bytes
from tuner.space.params import CategoricalParam, FixedParam, ParamSpec
from tuner.space.ranges import FloatParam
from tuner.types import TrialConfig

if TYPE_CHECKING:
    from tuner.hardware.profile import HardwareProfile
    from tuner.space.search_space import SearchSpace

#: A precision whose dense matmul peak is below this share of the best one is "slow" and
#: dropped for a throughput objective (fp32 on Hopper is 1/15 of bf16; tf32 is 1/2, kept).
SLOW_PRECISION_SHARE = 0.25
#: Tokens per micro step above which a language model gains nothing worth a longer trial:
#: on the H200 gpt_124m table 32k/64k/128k tokens reach 95/98/100% of the best throughput,
#: i.e. per-step fixed costs are ~2% at 128k tokens.
LM_TOKENS_PER_STEP_CAP = 131072
#: Before a memory group has a measurement, the first trial close to the memory edge is
#: run at half the micro batch: one measured point makes the next prediction at twice the
#: batch accurate to a few %, where the analytic model alone might be 10% off.
UNCALIBRATED_EDGE_SHARE = 0.5


@dataclass
class GeneratorPlan:
    """A narrowed space, a memory constraint and starting configs for one study."""

    space: SearchSpace
    base_config: TrialConfig
    memory: MemoryModel
    limit_bytes: int | None  # predicted peaks above this are infeasible (safety margin applied)
    safety_margin: float
    backend: str  # process-group backend of multi-process trials: nccl on GPUs, gloo on CPUs
    workload: str
    shape: dict[str, Any]
    hardware_kind: str
    reasoning: list[str] = field(default_factory=list)
    seq_from_config: bool = False
    items_per_sample: float = 1.0
    precision_order: list[str] = field(default_factory=list)  # fastest first on this hardware
    # Completes a config the space alone cannot (a throughput study derives the gradient
    # accumulation from the micro batch to hold the effective batch, tuner.study.quality),
    # so predictions and starting configs are of the configs the trials really run.
    derive: Callable[[TrialConfig], TrialConfig] | None = None
    # False for a workload without a memory model (its shape fits neither analytic model):
    # the plan narrows what needs no prediction and checks no config's memory before launch.
    memory_modelled: bool = True
    _tried: set[tuple[Any, ...]] = field(default_factory=set, repr=False)

    # -- the constraint ----------------------------------------------------------------------
    def config_of(self, values: TrialConfig | Mapping[str, Any]) -> TrialConfig:
        config = values if isinstance(values, TrialConfig) else self.space.to_config(values, self.base_config)
        return self.derive(config) if self.derive is not None else config

    def _shape_for(self, config: TrialConfig) -> None:
        if self.seq_from_config:
            self.memory.shape["seq"] = config.max_sequence_length

    def constraint(self, config: TrialConfig | Mapping[str, Any]) -> MemoryEstimate:
        """The (calibrated) memory prediction of `config`; `fits` is judged with the safety margin."""
        cfg = self.config_of(config)
        if not self.memory_modelled:
            return MemoryEstimate(0, {}, None, self.limit_bytes, "unmodelled", ("the workload has no memory model",))
        self._shape_for(cfg)
        return self.memory.estimate(cfg)

    def is_feasible(self, config: TrialConfig | Mapping[str, Any]) -> tuple[bool, MemoryEstimate]:
        estimate = self.constraint(config)
        return estimate.fits is not False, estimate

    def observe(self, config: TrialConfig | Mapping[str, Any], peak_bytes: int | None, status: Any) -> None:
        """Learn from a measured trial so later predictions are calibrated."""
        cfg = self.config_of(config)
        self._tried.add(tuple(sorted(cfg.to_dict().items())))
        if not self.memory_modelled:
            return
        self._shape_for(cfg)
        self.memory.observe(cfg, peak_bytes, getattr(status, "value", status))

    # -- starting configs --------------------------------------------------------------------
    @property
    def starting_configs(self) -> list[dict[str, Any]]:
        """1-3 knob-value dicts within the space, best first, from the current calibration."""
        return [values for values, _ in self._starting()]

    def next_starting_config(self) -> dict[str, Any] | None:
        """The first starting config not measured yet (recomputed after each `observe`)."""
        for values, _ in self._starting():
            if tuple(sorted(self.config_of(values).to_dict().items())) not in self._tried:
                return values
        return None

    def starting_reasons(self) -> list[str]:
        return [why for _, why in self._starting()]

    def _starting(self) -> list[tuple[dict[str, Any], str]]:
        if not self.memory_modelled:
            return []  # "the largest batch predicted to fit" needs a prediction
        space = self.space
        offered = _values(space, "precision")
        ranked = [p for p in self.precision_order if p in offered] + [p for p in offered if p not in self.precision_order]
        precision = (ranked or [self.base_config.precision])[0]
        compile_values = _values(space, "compile")
        use_compile = True in compile_values and self.hardware_kind == "cuda"
        fixed = {"precision": precision}
        if compile_values:
            fixed["compile"] = use_compile
        out: list[tuple[dict[str, Any], str]] = []
        for ckpt in _checkpoint_options(space, self.base_config):
            values = {**fixed, "activation_checkpointing": ckpt} if "activation_checkpointing" in space else dict(fixed)
            best = self._largest_fitting(values)
            if best is None:
                continue
            mb, estimate = best
            if "micro_batch_size" in space:
                values["micro_batch_size"] = mb
            checkpointing = f", checkpointing {'on' if ckpt else 'off'}" if "activation_checkpointing" in space else ""
            derived = ""
            if self.derive is not None and "gradient_accumulation_steps" not in space:
                steps = self.config_of(self._complete(values)).gradient_accumulation_steps
                derived = f" x accumulation {steps} (the held effective batch)"
            why = (
                f"{precision}{checkpointing}, micro batch {mb}{derived}: the largest "
                f"predicted to fit ({_gib(estimate.peak_bytes)} of {_gib(self.limit_bytes)} allowed"
                f"{', calibrated' if estimate.calibrated else ''})"
            )
            group_measured = self._group_measured(values)
            if (
                not group_measured
                and self.limit_bytes
                and estimate.peak_bytes > UNCALIBRATED_EDGE_SHARE * self.limit_bytes
            ):
                smaller = self._largest_value_at_most(values, mb // 2)
                if smaller is not None:
                    probe = {**values, "micro_batch_size": smaller}
                    out.append(
                        (
                            self._complete(probe),
                            f"{precision}, micro batch {smaller}: half of the predicted maximum {mb}, "
                            "measured first so the step up is calibrated",
                        )
                    )
            out.append((self._complete(values), why))
            runner_up = self._runner_up_precision(values, ranked)
            if runner_up is not None:
                out.append(runner_up)
            break  # checkpointing only when the batch does not fit without it
        return _dedupe(out)[:3]

    def _runner_up_precision(
        self, values: Mapping[str, Any], ranked: list[str]
    ) -> tuple[dict[str, Any], str] | None:
        """The second-ranked precision at its own largest fitting batch, measured early.

        The ranking is by dense matmul peak; for a small model, casts and elementwise work
        can reverse it (on an AVX512_BF16 EPYC a d_model 64 GPT trains 25% slower in bf16
        than in fp32 although a 1024^3 bf16 matmul is 2.3x faster). One trial settles it,
        and the sampler starts from two measured precisions instead of one guess.
        """
        if len(ranked) < 2:
            return None
        second = ranked[1]
        other = {**values, "precision": second}
        best = self._largest_fitting(other)
        if best is None:
            return None
        mb, estimate = best
        if "micro_batch_size" in self.space:
            other["micro_batch_size"] = mb
        why = (
            f"{second}, micro batch {mb}: the runner-up precision, measured early because the "
            f"ranking ({ranked[0]} first) comes from matmul peaks, which small models may not reach "
            f"({_gib(estimate.peak_bytes)} predicted)"
        )
        return self._complete(other), why

    def _group_measured(self, values: Mapping[str, Any]) -> bool:
        return self.memory.measured(self.config_of(self._complete(values)))

    def _complete(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every active parameter of the space: `values` where given, else base's (clamped)."""
        out: dict[str, Any] = {}
        for param in self.space.ordered_params:
            if param.hparam:
                continue  # the plan is for the study's model shape; the sampler picks hparams
            if param.when is not None and not param.when.holds(out):
                continue
            wanted = values.get(param.name, getattr(self.base_config, param.name))
            out[param.name] = _closest_in(param, wanted)
        return {n: out[n] for n in self.space.knob_names if n in out}

    def _batch_candidates(self, values: Mapping[str, Any]) -> list[int]:
        if "micro_batch_size" not in self.space:
            return [self.base_config.micro_batch_size]
        param = self.space.get("micro_batch_size")
        finite = param.finite_values() or ()
        candidates = sorted({int(v) for v in finite})
        cap = self._batch_cap()
        if cap is not None:
            capped = [v for v in candidates if v <= cap]
            candidates = capped or candidates[:1]
        powers = [v for v in candidates if v & (v - 1) == 0]
        return powers or candidates

    def _batch_cap(self) -> int | None:
        if model_family(self.workload, self.shape) != "lm":
            return None
        return max(1, int(LM_TOKENS_PER_STEP_CAP // max(1.0, self.items_per_sample)))

    def _largest_fitting(self, values: Mapping[str, Any]) -> tuple[int, MemoryEstimate] | None:
        candidates = self._batch_candidates(values)

        def estimate(mb: int) -> MemoryEstimate:
            return self.constraint(self._complete({**values, "micro_batch_size": mb}))

        index = _last_true(len(candidates), lambda i: estimate(candidates[i]).fits is not False)
        if index is None:
            return None
        return candidates[index], estimate(candidates[index])

    def _largest_value_at_most(self, values: Mapping[str, Any], limit: int) -> int | None:
        below = [v for v in self._batch_candidates(values) if v <= limit]
        return below[-1] if below else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space.to_dict(),
            "limit_bytes": self.limit_bytes,
            "safety_margin": self.safety_margin,
            "backend": self.backend,
            "starting_configs": self.starting_configs,
            "starting_reasons": self.starting_reasons(),
            "reasoning": list(self.reasoning),
        }


def plan(
    hardware: HardwareProfile,
    shape: Mapping[str, Any],
    space: SearchSpace,
    *,
    workload: str,
    base_config: TrialConfig | None = None,
    memory_limit_bytes: int | None = None,
    safety_margin: float = 0.9,
    objective: str = "throughput",
    derive: Callable[[TrialConfig], TrialConfig] | None = None,
) -> GeneratorPlan:
    """Narrow `space` for `hardware` and the workload's `shape`; see the module docstring.

    `derive` completes each config before its memory is predicted (see GeneratorPlan)."""
    base = base_config or TrialConfig()
    reasoning: list[str] = []
    shape = dict(shape)
    try:
        family: str | None = model_family(workload, shape)
    except ValidationError as exc:
        # A user's workload without a memory model: plan what needs no prediction (the
        # precisions), say what is skipped, and let the trials measure memory themselves.
        family = None
        reasoning.append(
            f"skipped memory predictions: {exc.problems[0].problem}; configs are not checked for memory "
            "before launch (an out-of-memory trial is recorded as oom), no micro batch cap, no starting configs. "
            "Give the workload a shape() with one of those key sets to have them"
        )
    seq_from_config = family == "lm" and "max_sequence_length" in space
    if family == "lm" and workload == "gpt" and not seq_from_config:
        shape["seq"] = base.max_sequence_length  # the gpt workload's sequence is the knob's value
    usable = usable_memory_bytes(hardware)
    if memory_limit_bytes is not None:
        usable = min(usable, memory_limit_bytes) if usable else memory_limit_bytes
    limit = int(usable * safety_margin) if usable else None
    if limit:
        reasoning.append(
            f"memory: {_gib(hardware.memory_bytes)} on the device, {_gib(usable)} usable by the allocator "
            f"(CUDA context and fragmentation), {_gib(limit)} allowed with the {safety_margin:.0%} safety margin"
        )
    others = hardware.memory_used_by_others_bytes if hardware.device_type == "cuda" else None
    if others:
        reasoning.append(
            f"memory: {_gib(others)} was already used on the GPU by other processes when it was probed; "
            "subtracted from the usable memory (probe again if they have finished)"
        )
    memory = MemoryModel(shape, workload=workload, hardware=hardware, limit_bytes=limit)
    narrowed, precision_order = _narrow_precisions(space, hardware, objective, reasoning)
    narrowed = _narrow_sharding(narrowed, base, reasoning)
    backend = "nccl" if hardware.device_type == "cuda" else "gloo"
    reasoning.append(f"multi-process trials use {backend} ({'GPUs' if backend == 'nccl' else 'CPU processes'})")
    items = float(shape.get("seq", 1)) if family == "lm" else 1.0
    generated = GeneratorPlan(
        memory_modelled=family is not None,
        space=narrowed,
        base_config=base,
        memory=memory,
        limit_bytes=limit,
        safety_margin=safety_margin,
        backend=backend,
        workload=workload,
        shape=shape,
        hardware_kind=hardware.device_type,
        reasoning=reasoning,
        seq_from_config=seq_from_config,
        items_per_sample=items,
        precision_order=precision_order,
        derive=derive,
    )
    generated.space = _narrow_batch(generated, reasoning)
    if not generated.starting_configs and generated.memory_modelled:
        reasoning.append("no config of the space is predicted to fit: expect out-of-memory trials or widen the space")
    return generated


# -- narrowing steps --------------------------------------------------------------------------
def _narrow_precisions(
    space: SearchSpace, hardware: HardwareProfile, objective: str, reasoning: list[str]
) -> tuple[SearchSpace, list[str]]:
    """The space without precisions that are missing or slow here, and the kept ones fastest first."""
    if "precision" not in space:
        return space, list(hardware.fast_precisions)
    offered = _values(space, "precision")
    fast = list(hardware.fast_precisions)
    kept = [p for p in fast if p in offered]  # fastest first
    if hardware.device_type == "cpu" and "tf32" in offered:
        if "tf32" in kept:
            kept.remove("tf32")
        reasoning.append("tf32 dropped: it is a no-op on CPUs (same as fp32)")
    lacking = [p for p in offered if p not in hardware.supported_precisions]
    if lacking:
        reasoning.append(f"dropped {', '.join(lacking)}: not supported by this hardware")
    not_fast = [p for p in offered if p not in fast and p not in lacking and not (p == "tf32" and hardware.device_type == "cpu")]
    if not_fast:
        reasoning.append(f"dropped {', '.join(not_fast)}: slow on this hardware (fast here: {', '.join(fast)})")
    peaks = hardware.peak_tflops
    if objective == "throughput" and len(kept) > 1 and all(p in peaks for p in kept):
        best = max(peaks[p] for p in kept)
        slow = [p for p in kept if peaks[p] < SLOW_PRECISION_SHARE * best]
        if slow and len(slow) < len(kept):
            kept = [p for p in kept if p not in slow]
            reasoning.append(
                "dropped "
                + ", ".join(f"{p} ({peaks[p]:.0f} TFLOP/s)" for p in slow)
                + f": under {SLOW_PRECISION_SHARE:.0%} of the best matmul rate ({best:.0f} TFLOP/s)"
            )
    if not kept:
        fallback = [p for p in offered if p in hardware.supported_precisions] or offered
        kept = fallback[:1]
        reasoning.append(f"none of {offered} is fast here; keeping {kept[0]}")
    reasoning.append(f"precisions to try, fastest first: {', '.join(kept)}")
    if sorted(kept) == sorted(offered):
        return space, kept
    narrowed = space.restrict("precision", choices=kept) if len(kept) > 1 else space.with_fixed("precision", kept[0])
    return narrowed, kept


def _narrow_sharding(space: SearchSpace, base: TrialConfig, reasoning: list[str]) -> SearchSpace:
    if "sharding_stage" not in space:
        return space
    world_sizes = _values(space, "world_size") or [base.world_size]
    if max(int(w) for w in world_sizes) > 1:
        return space
    reasoning.append("sharding stages > 0 dropped: every config runs on one process (world_size 1)")
    return space.with_fixed("sharding_stage", 0)


def _narrow_batch(generated: GeneratorPlan, reasoning: list[str]) -> SearchSpace:
    """Cap the micro batch at the largest value predicted to fit in the most frugal setting."""
    space = generated.space
    if "micro_batch_size" not in space or generated.limit_bytes is None or not generated.memory_modelled:
        return space
    frugal: dict[str, Any] = {}
    for name in ("activation_checkpointing", "compile"):
        if True in _values(space, name):
            frugal[name] = True
    sixteen = [p for p in _values(space, "precision") if p in SIXTEEN_BIT]
    if sixteen:
        frugal["precision"] = sixteen[0]
    param = space.get("micro_batch_size")
    candidates = sorted({int(v) for v in (param.finite_values() or ())})
    index = _last_true(
        len(candidates),
        lambda i: generated.constraint(generated._complete({**frugal, "micro_batch_size": candidates[i]})).fits
        is not False,
    )
    if index is None:
        reasoning.append("even the smallest micro batch is predicted not to fit in the most frugal setting")
        return space
    high = candidates[index]
    if high >= candidates[-1]:
        reasoning.append(f"every micro batch up to {high} is predicted to fit (with {', '.join(f'{k}={v}' for k, v in frugal.items()) or 'the base config'})")
        return space
    reasoning.append(
        f"micro batch capped at {high}: larger ones are predicted not to fit even with "
        + (", ".join(f"{k}={v}" for k, v in frugal.items()) or "the base config")
    )
    return space.restrict("micro_batch_size", high=high)


# -- small helpers ----------------------------------------------------------------------------
def _values(space: SearchSpace, name: str) -> list[Any]:
    if name not in space:
        return []
    return list(space.get(name).finite_values() or ())


def _checkpoint_options(space: SearchSpace, base: TrialConfig) -> list[bool]:
    values = _values(space, "activation_checkpointing")
    if not values:
        return [base.activation_checkpointing]
    return [v for v in (False, True) if v in values]


def _closest_in(param: ParamSpec, wanted: Any) -> Any:
    if isinstance(param, FixedParam):
        return param.value
    if param.contains(wanted):
        return wanted
    values = param.finite_values()
    if values is None and isinstance(param, FloatParam):
        return min(max(float(wanted), param.low), param.high)
    values = list(values or ())
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and numeric:
        return min(numeric, key=lambda v: (abs(math.log(max(v, 1e-12)) - math.log(max(wanted, 1e-12))), v))
    if isinstance(param, CategoricalParam):
        return param.choices[0]
    return values[0]


def _last_true(n: int, predicate: Callable[[int], bool]) -> int | None:
    """Largest i in [0, n) with predicate(i), for a predicate true then false (monotone)."""
    lo, hi, found = 0, n - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if predicate(mid):
            found, lo = mid, mid + 1
        else:
            hi = mid - 1
    return found


def _dedupe(items: list[tuple[dict[str, Any], str]]) -> list[tuple[dict[str, Any], str]]:
    seen: list[dict[str, Any]] = []
    out = []
    for values, why in items:
        if values not in seen:
            seen.append(values)
            out.append((values, why))
    return out


def _gib(value: float | None) -> str:
    return "unknown" if value is None else f"{value / 1024**3:.1f} GiB"


__all__ = ["GeneratorPlan", "plan"]

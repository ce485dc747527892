"""The config generator of an inference study: starting configs and a narrowed space.

Training studies start from the largest micro batch predicted to fit; serving studies
start the same way, so a 12-trial study always measures what a batch-size sweep would
have found, and TPE then explores precision, window and instances around it:

1. fp32 at the largest batch that (a) the memory model fits under the study's limit and
   (b) a single forward of it takes at most `SLO_SHARE_PER_BATCH` of the SLO (timed here,
   best of a few, on the served model): a request that arrives as a full batch starts
   waits for it and then rides the next one, two forwards in all. (The batch is a cap:
   under capacity, batches hold what has queued, so a larger cap costs little latency);
2. the fastest other precision (int8 through whichever backend measured fastest) at its
   own largest such batch;
3. (1) with a short batching window (the smallest non-zero one the space offers, at most
   a tenth of the SLO): lets partial batches fill at rates under capacity;
4. (1) compiled (`compile_mode: default`) when the space offers compile: not timed here
   (a compile costs seconds), the trial measures it.

Fusion: when the space offers `fusion: true`, it is timed against `false` at (1)'s batch
(eager) and every starting config fuses if the fused forward is faster (recsys: the DLRM's
table-batched lookup, 0.86 vs 0.95 ms at batch 512, one thread, collation included).

Threads: on a CPU of <= 2 cores each instance runs one intra-op thread when the space
offers it. On this 2-core VM under a load of ~6, a recsys batch-512 forward took a median
2.0 ms with one thread and 207 ms with torch's default two (OpenMP's spinning team is
descheduled by the other processes).

Narrowing: a precision (or int8 backend) whose forward at the fp32 starting batch takes
more than `SLOW_FACTOR` x the fastest one's is dropped from the space: it cannot win on
QPS, and each trial spent on it is one TPE does not spend near the front. Measured on
this CPU (no AVX512-BF16), recsys batch 512, one thread, best of 40: fp32 1.4 ms, int8
fbgemm 1.6 ms, bf16 8.0 ms, int8 torchao 8.9 ms. Timing is the best of a few forwards,
which the machine's other load can only lengthen, taken round-robin over the variants.
Even so, at a load of 12-14 on this 2-core VM int8 fbgemm once timed 3.8x fp32 (6.4 vs
1.7 ms; 1.2x at load ~8), hence 4x and not less: bf16 and torchao measured 6-30x.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tuner.inference.config import InferenceConfig
from tuner.inference.memory import predicted_peak_bytes
from tuner.inference.refusals import refusal
from tuner.inference.serving import ServingSetup
from tuner.space.params import ParamSpec
from tuner.space.search_space import SearchSpace

#: a single full batch may take at most this share of the SLO (best-case forward time)
SLO_SHARE_PER_BATCH = 0.5
#: a precision this many times slower than the fastest at the same batch is dropped
SLOW_FACTOR = 4.0
#: the starting batching window is at most this share of the SLO
WINDOW_SHARE = 0.1
TIMING_ROUNDS = 3
#: more timings of a batch that timed over the SLO share before it caps the batch
RETIME_OVER_SHARE = 2

#: (config, batch size) -> best-case seconds of one forward of a full batch
BatchTimer = Callable[[InferenceConfig, int], float]


@dataclass(frozen=True)
class InferencePlan:
    """What the generator hands an inference study: the (narrowed) space, the starting
    configs (knob values within that space, enqueued first, best guess first) with why,
    and the reasoning (timings, what was dropped)."""

    space: SearchSpace
    starting: tuple[dict[str, Any], ...]
    reasons: tuple[str, ...]
    reasoning: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space.to_dict(),
            "starting_configs": [dict(v) for v in self.starting],
            "starting_reasons": list(self.reasons),
            "reasoning": list(self.reasoning),
        }


def plan_inference(
    space: SearchSpace,
    setup: ServingSetup,
    *,
    slo_p99_ms: float,
    memory_limit_bytes: int | None = None,
    device: str = "cpu",
    cpu_count: int | None = None,
    timer: BatchTimer | None = None,
) -> InferencePlan:
    """Starting configs and a narrowed space for an inference study of `space` (see the
    module's doc). `timer` defaults to timing real forwards of `setup`'s model."""
    if timer is None:
        from tuner.inference.timing import forward_timer

        timer = forward_timer(setup)
    cpus = cpu_count or os.cpu_count() or 1
    reasoning: list[str] = []
    base = InferenceConfig()
    fixed: dict[str, Any] = {"instances": 1, "batch_window_ms": 0.0, "compile_mode": "off", "fusion": False}
    threads_values = _values(space, "threads_per_instance")
    if cpus <= 2 and 1 in threads_values:
        fixed["threads_per_instance"] = 1
        reasoning.append(
            f"{cpus} CPU cores: one intra-op thread per instance (torch's default team of {cpus} "
            "threads is descheduled when the machine has other work)"
        )

    def config(values: Mapping[str, Any]) -> InferenceConfig:
        return InferenceConfig.from_dict({**base.to_dict(), **_complete(space, values)})

    def runs(values: Mapping[str, Any]) -> bool:
        cfg = config(values)
        return (
            refusal(cfg, device=device, paddings=setup.paddings, variable_length=bool(setup.bucket_edges))
            is None
        )

    batches = sorted({int(v) for v in _values(space, "max_batch_size")}) or [base.max_batch_size]
    slo_s = slo_p99_ms / 1000

    def largest_batch(values: Mapping[str, Any], label: str) -> tuple[int, float] | None:
        """Largest batch of the space that fits in memory and whose forward is within
        SLO_SHARE_PER_BATCH of the SLO; the smallest when none is (the study decides)."""
        chosen: tuple[int, float] | None = None
        for batch in batches:
            cfg = config({**values, "max_batch_size": batch})
            if memory_limit_bytes is not None and predicted_peak_bytes(setup.shape, cfg) > memory_limit_bytes:
                reasoning.append(f"{label}: batch {batch} predicted over the memory limit")
                break
            seconds = timer(cfg, batch)
            if seconds > SLO_SHARE_PER_BATCH * slo_s:
                # a loaded moment must not cap the batch: at load ~11 a recsys batch-512
                # forward (1.7 ms at best) once timed 23 ms, best of 2
                seconds = min(seconds, *(timer(cfg, batch) for _ in range(RETIME_OVER_SHARE)))
            if chosen is not None and seconds > SLO_SHARE_PER_BATCH * slo_s:
                reasoning.append(
                    f"{label}: batch {batch} takes {seconds * 1000:.1f} ms a forward, over "
                    f"{SLO_SHARE_PER_BATCH:.0%} of the SLO"
                )
                break
            chosen = (batch, seconds)
            if seconds > SLO_SHARE_PER_BATCH * slo_s:
                break  # even the smallest is too slow: start there, the ramp will say
        return chosen

    fp32 = {**fixed, "serving_precision": "fp32"}
    if "serving_precision" in space and "fp32" not in _values(space, "serving_precision"):
        fp32 = {**fixed}  # the space has no fp32: its first precision stands in
    first = largest_batch(fp32, "fp32")
    starting: list[tuple[dict[str, Any], str]] = []
    if first is None:
        return InferencePlan(space, (), (), tuple(reasoning))
    batch, seconds = first
    if True in _values(space, "fusion"):
        fp32, seconds = _fusion_if_faster(fp32, batch, seconds, config, timer, reasoning)
        fixed["fusion"] = fp32["fusion"]
    within = seconds <= SLO_SHARE_PER_BATCH * slo_s
    starting.append(
        (
            _complete(space, {**fp32, "max_batch_size": batch}),
            f"{config(fp32).serving_precision}, batch {batch}: "
            + (
                f"the largest the memory model and the SLO allow ({seconds * 1000:.2f} ms a forward; "
                f"<= {SLO_SHARE_PER_BATCH:.0%} of {slo_p99_ms:g} ms)"
                if within
                else f"the smallest batch (its forward already takes {seconds * 1000:.2f} ms)"
            ),
        )
    )
    # Rank every precision (and int8 backend) of the space by its forward at that batch.
    variants = []
    for precision in _values(space, "serving_precision"):
        backends = _values(space, "int8_backend") if precision.startswith("int8") else []
        for backend in backends or [None]:
            values = {**fixed, "serving_precision": precision, "max_batch_size": batch}
            if backend is not None:
                values["int8_backend"] = backend
            if not runs(values):
                continue
            variants.append((math.inf, precision, backend, values))
    # Round-robin, best of TIMING_ROUNDS per variant: a loaded moment (this machine's other
    # processes) lengthens one round of one variant, not every round of it.
    for _ in range(TIMING_ROUNDS):
        variants = [(min(t, timer(config(v), batch)), p, b, v) for t, p, b, v in variants]
    if variants:
        fastest = min(v[0] for v in variants)
        reasoning.append(
            f"forward at batch {batch}: "
            + ", ".join(
                f"{p}{'/' + b if b else ''} {t * 1000:.2f} ms"
                for t, p, b, _ in sorted(variants, key=lambda v: v[0])
            )
        )
        # The first starting config's precision (fp32, the reference, when offered) stays
        # whatever its time: it is enqueued and must remain in the space.
        reference = config(fp32)
        kept = [
            v
            for v in variants
            if v[0] <= SLOW_FACTOR * fastest
            or (v[1] == reference.serving_precision and v[2] in (None, reference.int8_backend))
        ]
        space = _narrowed(space, variants, kept, reasoning)
        others = sorted((v for v in kept if v[1] != "fp32"), key=lambda v: v[0])
        if others:
            _, precision, backend, values = others[0]
            label = precision + (f"/{backend}" if backend else "")
            best = largest_batch({k: v for k, v in values.items() if k != "max_batch_size"}, label)
            if best is not None:
                starting.append(
                    (
                        _complete(space, {**values, "max_batch_size": best[0]}),
                        f"{label}, batch {best[0]}: the fastest other precision at its largest SLO-feasible batch",
                    )
                )
    window = _starting_window(space, slo_p99_ms)
    if window:
        starting.append(
            (
                _complete(space, {**fp32, "max_batch_size": batch, "batch_window_ms": window}),
                f"the first with a {window:g} ms batching window (partial batches fill at rates under capacity)",
            )
        )
    modes = [m for m in _values(space, "compile_mode") if m != "off"]
    if modes:
        mode = "default" if "default" in modes else modes[0]
        compiled = {**fp32, "max_batch_size": batch, "compile_mode": mode}
        if runs(compiled):
            starting.append(
                (
                    _complete(space, compiled),
                    f"the first compiled (torch.compile mode={mode}): the trial measures what "
                    "inductor's fused kernels gain (compiling here would cost seconds)",
                )
            )
    starting = _dedupe(starting)
    return InferencePlan(
        space=space,
        starting=tuple(v for v, _ in starting),
        reasons=tuple(w for _, w in starting),
        reasoning=tuple(reasoning),
    )


def _fusion_if_faster(
    fp32: dict[str, Any],
    batch: int,
    seconds: float,
    config: Callable[[Mapping[str, Any]], InferenceConfig],
    timer: BatchTimer,
    reasoning: list[str],
) -> tuple[dict[str, Any], float]:
    """`fp32` with `fusion: true` when the fused model's forward (Conv+BN folding, or the
    workload's fused serving form) times faster at `batch`, else with `fusion: false`;
    and the forward time that goes with it. Round-robin, best of TIMING_ROUNDS each."""
    plain = {**fp32, "fusion": False, "max_batch_size": batch}
    fused = {**plain, "fusion": True}
    plain_s, fused_s = seconds, math.inf
    for _ in range(TIMING_ROUNDS):
        fused_s = min(fused_s, timer(config(fused), batch))
        plain_s = min(plain_s, timer(config(plain), batch))
    faster = fused_s < plain_s
    reasoning.append(
        f"fusion at batch {batch}: {fused_s * 1000:.2f} ms vs {plain_s * 1000:.2f} ms a forward unfused: "
        + ("the starting configs fuse" if faster else "the starting configs do not fuse")
    )
    return {**fp32, "fusion": faster}, (fused_s if faster else plain_s)


def _starting_window(space: SearchSpace, slo_p99_ms: float) -> float | None:
    if "batch_window_ms" not in space:
        return None
    param = space.get("batch_window_ms")
    values = param.finite_values()
    cap = WINDOW_SHARE * slo_p99_ms
    if values is None:
        bounds = param.bounds()
        if bounds is None:
            return None
        low, high = bounds
        wanted = min(max(1.0, low), high, cap)
        return wanted if wanted > 0 and param.contains(wanted) else None
    positive = sorted(float(v) for v in values if float(v) > 0 and float(v) <= cap)
    return positive[0] if positive else None


def _narrowed(
    space: SearchSpace,
    variants: list[tuple[float, str, str | None, dict[str, Any]]],
    kept: list[tuple[float, str, str | None, dict[str, Any]]],
    reasoning: list[str],
) -> SearchSpace:
    """Drop precisions none of whose variants were kept, and int8 backends no int8
    precision kept; a parameter left with one value stays (fixed in effect)."""
    dropped = [v for v in variants if v not in kept]
    if not dropped:
        return space
    precisions = [
        p
        for p in _values(space, "serving_precision")
        if any(v[1] == p for v in kept) or not any(v[1] == p for v in variants)
    ]
    if precisions and precisions != _values(space, "serving_precision"):
        space = space.restrict("serving_precision", choices=precisions)
    backends = _values(space, "int8_backend")
    if backends:
        int8_tried = [v for v in variants if v[2] is not None]
        keep_backends = [
            b for b in backends if any(v[2] == b for v in kept) or not any(v[2] == b for v in int8_tried)
        ]
        if keep_backends and keep_backends != backends:
            space = space.restrict("int8_backend", choices=keep_backends)
    reasoning.append(
        "dropped (over "
        + f"{SLOW_FACTOR:g}x the fastest forward): "
        + ", ".join(f"{p}{'/' + b if b else ''}" for _, p, b, _ in dropped)
    )
    return space


def _values(space: SearchSpace, name: str) -> list[Any]:
    if name not in space:
        return []
    return list(space.get(name).finite_values() or ())


def _complete(space: SearchSpace, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every active parameter of `space`: `values` where given, else the default config's,
    moved to the nearest value the space has."""
    base = InferenceConfig().to_dict()
    out: dict[str, Any] = {}
    for param in space.ordered_params:
        if param.hparam or (param.when is not None and not param.when.holds(out)):
            continue
        out[param.name] = _closest(param, values.get(param.name, base.get(param.name)))
    return {n: out[n] for n in space.names if n in out}


def _closest(param: ParamSpec, wanted: Any) -> Any:
    if param.contains(wanted):
        return wanted
    values = list(param.finite_values() or ())
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and numeric:
        return min(numeric, key=lambda v: (abs(v - wanted), v))
    if not values:
        bounds = param.bounds()
        if bounds is not None and isinstance(wanted, (int, float)):
            return min(max(wanted, bounds[0]), bounds[1])
    return values[0] if values else wanted


def _dedupe(items: list[tuple[dict[str, Any], str]]) -> list[tuple[dict[str, Any], str]]:
    out: list[tuple[dict[str, Any], str]] = []
    for values, why in items:
        if all(values != seen for seen, _ in out):
            out.append((values, why))
    return out

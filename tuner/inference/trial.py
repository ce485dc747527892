"""One inference trial: prepare the served model, guard its accuracy, then find the highest
Poisson rate it sustains with p99 <= the SLO by a short rate ramp.

Order matters for cost: a refused or predicted-infeasible config is never built; an
inaccurate one is never load-tested (it can never be best).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tuner.errors import TunerError
from tuner.inference.accuracy import compare
from tuner.inference.batcher import BatchingPolicy, InstanceThreads, ServeRecord, serve_open_loop
from tuner.inference.loadgen import poisson_arrivals
from tuner.inference.memory import device_memory_limit, predicted_peak_bytes
from tuner.inference.placement import device_total_memory, intra_op_threads, serving_device
from tuner.inference.prepare import PreparedModel, linear_weight_bytes, prepare_model
from tuner.inference.refusals import refusal
from tuner.inference.request import InferenceRequest
from tuner.inference.result import InferenceResult, InferenceStatus, RatePoint
from tuner.inference.serving import ServingSetup
from tuner.trial.device import activate_device
from tuner.trial.memory_meter import MemoryMeter
from tuner.trial.oom import is_out_of_memory, release_memory
from tuner.workloads import get_workload

REQUEST_POOL = 512  # distinct payloads; a step's requests cycle through them
LATENCY_EDGES_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
RAMP_UP, RAMP_UP_FAST, RAMP_DOWN, CLOSE_ENOUGH = 1.6, 3.0, 0.5, 1.15
FAR_UNDER_SLO = 0.4
RAMP_DOWN_GENTLE, KEPT_UP = 0.75, 0.85
MIN_STEP_REQUESTS = 20
#: A step whose latencies climb by more than this share of the SLO did not keep up.
GROWTH_SHARE = 0.25
#: The ramp stops going down below this share of the measured capacity: the config cannot
#: meet the SLO at any useful rate.
LOWEST_SHARE_OF_CAPACITY = 0.02


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes a CUDA graphs config serves: powers of two up to the largest batch
    (and the largest itself), so a handful of graphs are recorded, not one per size."""
    return sorted({min(max_batch_size, 1 << k) for k in range(max_batch_size.bit_length() + 1)})


def padded_to_graph_size(indices: Sequence[int], max_batch_size: int) -> list[int]:
    """`indices` padded (repeating the last request; its extra answers are dropped) to the
    next recorded batch size: a CUDA graph replays one fixed shape."""
    size = min(max_batch_size, 1 << (len(indices) - 1).bit_length())
    return list(indices) + [indices[-1]] * (size - len(indices))


@functools.lru_cache(maxsize=4)
def _setup(workload: str, params_key: tuple[tuple[str, Any], ...]) -> ServingSetup:
    return get_workload(workload).serving(dict(params_key))


def serving_setup(workload: str, params: dict[str, Any]) -> ServingSetup:
    """The workload's serving setup, built once per process (trials of a study share it)."""
    return _setup(workload, tuple(sorted(params.items())))


@functools.lru_cache(maxsize=8)
def _reference_outputs(setup: ServingSetup, padding: str) -> torch.Tensor:
    payloads, _labels = setup.heldout()
    with torch.inference_mode():
        return setup.forward(setup.model, payloads, padding if padding in setup.paddings else "longest")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def latency_histogram(latencies_ms: Sequence[float]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for value in latencies_ms:
        edge = next((e for e in LATENCY_EDGES_MS if value <= e), None)
        counts[f"<={edge:g}" if edge is not None else f">{LATENCY_EDGES_MS[-1]:g}"] += 1
    return dict(counts)


class _Server:
    """The served instances of one config and a way to load them at a given rate."""

    def __init__(
        self, request: InferenceRequest, setup: ServingSetup, instances: list[PreparedModel]
    ) -> None:
        self.request, self.setup, self.instances = request, setup, instances
        self.pool = setup.make_requests(REQUEST_POOL, request.seed + 1)
        self.lengths = [setup.request_length(p) for p in self.pool]
        config = request.config
        variable = bool(setup.bucket_edges)
        bucket_of: Callable[[int], int] | None = None
        if variable and config.padding == "buckets":
            buckets = [setup.bucket_of(n) for n in self.lengths]
            bucket_of = lambda i: buckets[i % REQUEST_POOL]  # noqa: E731
        self.policy = BatchingPolicy(config.max_batch_size, config.batch_window_ms / 1000, bucket_of)
        self.padding = config.padding if variable else "longest"
        self.give_up_s = max(1.0, 10 * request.slo_p99_ms / 1000)
        on_gpu = instances[0].device.type == "cuda"
        # CUDA graphs: batches padded to a few recorded sizes (graph_batch_sizes)
        self.graphs = on_gpu and config.compile_mode == "reduce-overhead"
        # On a GPU each instance keeps one thread from warm-up to the last step: CUDA graph
        # trees are per thread, and a fresh thread per step would record them again.
        self.threads = InstanceThreads(len(instances)) if on_gpu else None

    def close(self) -> None:
        if self.threads is not None:
            self.threads.close()

    def _on_instance(self, index: int, fn: Callable[[], Any]) -> Any:
        """Run `fn` on instance `index`'s own thread (on the CPU: here), with the intra-op
        thread count the instance serves with: torch.compile guards on that count, so a
        graph compiled under another one is compiled again in the first timed step."""

        def with_threads() -> Any:
            with intra_op_threads(self.request.config.threads_per_instance):
                return fn()

        return with_threads() if self.threads is None else self.threads.submit(index, with_threads).result()

    def _forward(self, prepared: PreparedModel) -> Callable[[Sequence[int]], None]:
        pool, setup, padding = self.pool, self.setup, self.padding
        graphs, largest = self.graphs, self.request.config.max_batch_size

        def run(indices: Sequence[int]) -> None:
            if graphs:
                indices = padded_to_graph_size(indices, largest)
            with prepared.running():
                setup.forward(prepared.module, [pool[i % REQUEST_POOL] for i in indices], padding)

        return run

    def _threads(self, index: int) -> None:
        if self.request.config.threads_per_instance:
            # OpenMP's thread count is per calling thread: each instance sets its own.
            torch.set_num_threads(self.request.config.threads_per_instance)

    def warm_up(self) -> float:
        """Run every instance on small and full batches (compiles, allocator pools); return
        the median seconds of one full batch on one instance."""
        size = self.request.config.max_batch_size
        batch = list(range(size))
        # an odd size in between too: a compiled graph that only works at the sizes it was
        # traced with fails here, in warm-up, not in the middle of a load step
        middle = list(range(2 * size, 2 * size + max(1, size // 3)))
        shapes = [[0], batch, list(range(size, 2 * size)), middle, [1]]
        if self.graphs:  # each recorded size three times: warm-up run, record, replay
            shapes += [list(range(n)) for n in graph_batch_sizes(size) for _ in range(3)]
        for index, prepared in enumerate(self.instances):
            forward = self._forward(prepared)
            self._on_instance(index, lambda forward=forward: [forward(indices) for indices in shapes])
        forward = self._forward(self.instances[0])

        def timed() -> list[float]:
            times = []
            for rep in range(5):
                start = time.perf_counter()
                forward([(rep * size + i) for i in range(size)])
                times.append(time.perf_counter() - start)
            return times

        return min(self._on_instance(0, timed))  # the machine's other load only ever adds time

    def step(self, rate: float, seed: int) -> tuple[RatePoint, ServeRecord, list[float]]:
        ramp = self.request.ramp
        # At least min_requests for a stable p99, but never more than 4 steps' worth of
        # arrivals: at a low rate, min_requests alone could mean minutes.
        wanted = max(min(ramp.min_requests, rate * 4 * ramp.step_s), rate * ramp.step_s, MIN_STEP_REQUESTS)
        count = int(min(ramp.max_requests, wanted))
        arrivals = poisson_arrivals(rate, count, seed)
        record = serve_open_loop(
            arrivals,
            self.policy,
            [self._forward(p) for p in self.instances],
            instance_setup=self._threads,
            give_up_after_s=self.give_up_s,
            threads=self.threads,
        )
        if record.error and not record.error.startswith("overloaded"):
            raise TunerError(f"a forward failed while serving: {record.error}")
        skip = int(count * ramp.warm_share)
        measured = [lat * 1000 for lat in record.latencies_s[skip:]]
        # Throughput over every answered request (the warm-up share included): when an
        # overloaded step is cut short, most of what was answered came early.
        answered = [
            a + lat
            for a, lat in zip(record.arrivals_s, record.latencies_s, strict=True)
            if math.isfinite(lat)
        ]
        span = (max(answered) - record.arrivals_s[0]) if answered else math.inf
        point = RatePoint(
            offered_qps=count / arrivals[-1],
            achieved_qps=len(answered) / span if answered and span > 0 else 0.0,
            p50_ms=percentile(measured, 50),
            p95_ms=percentile(measured, 95),
            p99_ms=percentile(measured, 99),
            requests=count,
            mean_batch=statistics.fmean(record.batch_sizes) if record.batch_sizes else 0.0,
        )
        return point, record, measured


def run_inference_trial(request: InferenceRequest, setup: ServingSetup | None = None) -> InferenceResult:
    """Measure `request.config`; never raises for a config that cannot run (its result says why)."""
    started = time.perf_counter()
    config = request.config
    setup = setup or serving_setup(request.workload, request.params)
    device = serving_device(request.device)
    why = refusal(
        config, device=str(device), paddings=setup.paddings, variable_length=bool(setup.bucket_edges)
    )
    if why:
        return InferenceResult.refused(why)
    predicted = predicted_peak_bytes(setup.shape, config, device.type)
    limit = device_memory_limit(request.memory_limit_bytes, device.type, device_total_memory(device))
    if limit is not None and predicted > limit:
        whose = "the limit" if request.memory_limit_bytes is not None else f"{device}'s usable memory"
        return InferenceResult(
            status=InferenceStatus.INFEASIBLE,
            predicted_peak_bytes=predicted,
            reason=f"predicted peak {predicted / 2**20:.0f} MiB > {whose} {limit / 2**20:.0f} MiB",
        )
    activate_device(device)
    if device.type == "cuda":
        release_memory(device)  # the previous trial's instances: cached blocks back to the GPU
    meter = MemoryMeter(device)
    meter.start()
    try:
        instances = [prepare_model(setup.model, config, device) for _ in range(config.instances)]
        notes = list(instances[0].notes)
        payloads, labels = setup.heldout()
        padding = config.padding if setup.bucket_edges and config.padding == "packed" else "longest"
        # with the serving thread count: torch.compile guards on it, and a graph traced
        # under another count would only be traced again in warm-up
        with intra_op_threads(config.threads_per_instance), instances[0].running():
            outputs = setup.forward(instances[0].module, payloads, padding)
        check = compare(setup.accuracy_kind, _reference_outputs(setup, padding), outputs, labels)
        weights = linear_weight_bytes(instances[0].module)
        if not check.accurate:
            return InferenceResult(
                status=InferenceStatus.INACCURATE,
                accuracy=check.metrics,
                reason=f"outputs differ from the fp32 eager reference: {check.reason}",
                notes=tuple(notes),
                predicted_peak_bytes=predicted,
                linear_weight_bytes=weights,
                slo_p99_ms=request.slo_p99_ms,
                duration_s=time.perf_counter() - started,
            )
        server = _Server(request, setup, instances)
        try:
            batch_s = server.warm_up()
            capacity = config.max_batch_size / max(batch_s, 1e-6)
            points, best = _ramp(server, capacity, request)
            target_p99 = None
            if request.target_qps:
                target_point, _, _ = server.step(request.target_qps, request.seed + 1000)
                target_p99 = target_point.p99_ms
        finally:
            server.close()
    except (RuntimeError, TunerError) as exc:  # a kernel missing for this dtype, a compile failure
        if is_out_of_memory(exc):
            return InferenceResult(
                status=InferenceStatus.INFEASIBLE,
                predicted_peak_bytes=predicted,
                peak_memory_bytes=meter.peak_bytes(),
                memory_kind=meter.kind,
                reason=f"out of memory on {device}: {exc}"[:2000],
            )
        return InferenceResult.refused(f"{type(exc).__name__}: {exc}"[:2000], InferenceStatus.FAILED)
    peak = meter.peak_bytes()
    notes += meter.notes
    common: dict[str, Any] = dict(
        ramp=tuple(p for p, _, _ in points),
        accuracy=check.metrics,
        notes=tuple(notes),
        predicted_peak_bytes=predicted,
        peak_memory_bytes=peak,
        memory_kind=meter.kind,
        linear_weight_bytes=weights,
        slo_p99_ms=request.slo_p99_ms,
        p99_at_target_ms=target_p99,
        duration_s=time.perf_counter() - started,
    )
    if best is None:
        lowest = min(points, key=lambda p: p[0].offered_qps)[0]
        return InferenceResult(
            status=InferenceStatus.OVER_SLO,
            p50_ms=lowest.p50_ms,
            p95_ms=lowest.p95_ms,
            p99_ms=lowest.p99_ms,
            reason=over_slo_reason([p for p, _, _ in points], request.slo_p99_ms, capacity, request.ramp.max_steps),
            **common,
        )
    point, record, measured = best
    return InferenceResult(
        status=InferenceStatus.OK,
        qps=point.achieved_qps,
        p50_ms=point.p50_ms,
        p95_ms=point.p95_ms,
        p99_ms=point.p99_ms,
        batch_histogram={str(k): v for k, v in sorted(Counter(record.batch_sizes).items())},
        latency_histogram_ms=latency_histogram(measured),
        **common,
    )


Step = tuple[RatePoint, ServeRecord, list[float]]


def _ramp(server: _Server, capacity: float, request: InferenceRequest) -> tuple[list[Step], Step | None]:
    """Geometric steps up from ~60% of the measured capacity until p99 passes the SLO (or
    down, to just under the achieved rate, until it holds), then bisection between the last rate that held and the first
    that did not, within `request.ramp.max_steps` steps."""
    slo = request.slo_p99_ms
    steps: list[Step] = []
    held: Step | None = None
    failed_rate: float | None = None
    rate = max(1.0, 0.6 * capacity * request.config.instances)
    for index in range(request.ramp.max_steps):
        step = server.step(rate, request.seed + 17 * index)
        steps.append(step)
        point = step[0]
        if point.p99_ms <= slo and not queue_grew(step[2], slo):
            if held is None or point.offered_qps > held[0].offered_qps:
                held = step
        else:
            failed_rate = rate if failed_rate is None else min(failed_rate, rate)
        if held is not None and failed_rate is not None:
            low = held[0].offered_qps
            if failed_rate / low <= CLOSE_ENOUGH:
                break
            rate = math.sqrt(low * failed_rate)
        elif held is not None:
            # far under the SLO: climb faster, the ramp has few steps
            rate *= RAMP_UP_FAST if point.p99_ms < FAR_UNDER_SLO * slo else RAMP_UP
        else:
            if point.achieved_qps >= KEPT_UP * point.offered_qps:
                # The server kept up and p99 still failed: jitter of a busy machine or the
                # window, not capacity. Step down gently; halving here strands the ramp.
                rate *= RAMP_DOWN_GENTLE
            elif point.achieved_qps > 0:
                # An overloaded server's achieved rate is its real capacity (the warm-up's
                # estimate misses the batcher's per-request cost): go just under it.
                rate = min(rate * RAMP_DOWN, 0.9 * point.achieved_qps)
            else:
                rate *= RAMP_DOWN
            if rate < max(0.5, LOWEST_SHARE_OF_CAPACITY * capacity):
                break
    return steps, held


def over_slo_reason(points: Sequence[RatePoint], slo_p99_ms: float, capacity: float, max_steps: int) -> str:
    """Why no rate held: the lowest rate tried and its p99, and, when the ramp stopped
    before its last step, that it stopped because the next rate would be under
    `LOWEST_SHARE_OF_CAPACITY` of the warm-up's estimate (the server answered far less
    under load than its warm-up batches suggested), not because lower rates were tried."""
    lowest = min(points, key=lambda p: p.offered_qps)
    reason = (
        f"p99 {lowest.p99_ms:.1f} ms > the SLO {slo_p99_ms:g} ms even at {lowest.offered_qps:,.1f} QPS, "
        "the lowest rate tried"
    )
    if len(points) < max_steps:
        reason += (
            f"; the ramp stopped there: the server answered {lowest.achieved_qps:,.0f} QPS, and a lower "
            f"rate would be under {LOWEST_SHARE_OF_CAPACITY:.0%} of the {capacity:,.0f} QPS its warm-up "
            "batches suggest (under load its forward was far slower than in warm-up)"
        )
    return reason


def queue_grew(latencies_ms: Sequence[float], slo_p99_ms: float) -> bool:
    """Whether a step's latencies (in arrival order) climbed through it: the median of its
    last fifth over the first fifth's by more than `GROWTH_SHARE` of the SLO. An
    overloaded server's queue grows for as long as the step lasts, so a short step can end
    with p99 under the SLO at a rate it cannot sustain (seen: offered 929k QPS, served
    871k, p50 17 ms and p99 28 ms after 0.43 s; a stable server's medians stay level)."""
    fifth = len(latencies_ms) // 5
    if fifth < 5:
        return False
    first = statistics.median(latencies_ms[:fifth])
    last = statistics.median(latencies_ms[-fifth:])
    return last - first > GROWTH_SHARE * slo_p99_ms


def p99_at_rate(request: InferenceRequest, rate: float) -> RatePoint | None:
    """One load step of `request.config` at `rate` (no ramp): e.g. the tuned config's p99
    at the rate the default config could carry. None when the config cannot run."""
    setup = serving_setup(request.workload, request.params)
    device = serving_device(request.device)
    if refusal(
        request.config,
        device=str(device),
        paddings=setup.paddings,
        variable_length=bool(setup.bucket_edges),
    ):
        return None
    activate_device(device)
    server = _Server(
        request,
        setup,
        [prepare_model(setup.model, request.config, device) for _ in range(request.config.instances)],
    )
    try:
        server.warm_up()
        point, _, _ = server.step(rate, request.seed + 4242)
    finally:
        server.close()
    return point

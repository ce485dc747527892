"""The dynamic batcher and its model instances, driven by an open-loop arrival schedule.

One scheduler (a lock held by whichever instance forms the next batch, as Triton's dynamic
batcher feeds its instance group) turns arrived requests into batches: a batch runs when
it holds `max_batch_size` requests, or when its oldest request has waited
`batch_window_s`. With `bucket_of`, requests are queued per length bucket and a batch
holds one bucket only (less padding). Every request's latency is measured from its
scheduled arrival to the end of the forward that answered it, so time spent queued (in
the window, or behind busy instances) is part of it. Torch-free: the forward is a callback.
"""

from __future__ import annotations

import bisect
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

#: Longest single sleep of the scheduler; short so a late wake-up costs little.
MAX_SLEEP_S = 0.005


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int
    batch_window_s: float
    bucket_of: Callable[[int], int] | None = None  # request index -> bucket key


@dataclass(frozen=True)
class ServeRecord:
    """What one open-loop run measured."""

    arrivals_s: tuple[float, ...]
    latencies_s: tuple[float, ...]  # per request, arrival -> answer
    batch_sizes: tuple[int, ...]  # per executed batch
    wall_s: float  # first arrival -> last answer
    error: str | None = None


class _FifoQueue:
    """The waiting requests without buckets: always the index range [head, cursor) of the
    sorted arrivals, so admitting is one bisection and a batch is a `range`, O(1) whatever
    its size. Per-request Python work here capped every config at ~1.15M requests/s on
    these cores and hid what the model's own knobs gain at large batches."""

    def __init__(self, arrivals: Sequence[float]) -> None:
        self.arrivals = arrivals
        self.cursor = 0  # next request not yet arrived
        self.head = 0  # next arrived request not yet in a batch

    def admit(self, now: float) -> None:
        self.cursor = bisect.bisect_right(self.arrivals, now, lo=self.cursor)

    def oldest(self) -> int | None:
        return self.head if self.head < self.cursor else None

    def waiting_with(self, oldest: int) -> int:
        return self.cursor - self.head

    def take(self, oldest: int, size: int) -> Sequence[int]:
        batch = range(self.head, min(self.head + size, self.cursor))
        self.head = batch.stop
        return batch


class _BucketQueues:
    """The waiting requests with `padding: buckets`: one FIFO queue per length bucket; a
    batch holds one bucket only, the one whose first request has waited longest."""

    def __init__(self, arrivals: Sequence[float], bucket_of: Callable[[int], int]) -> None:
        self.arrivals = arrivals
        self.bucket_of = bucket_of
        self.cursor = 0
        self.queues: dict[int, deque[int]] = {}

    def admit(self, now: float) -> None:
        while self.cursor < len(self.arrivals) and self.arrivals[self.cursor] <= now:
            self.queues.setdefault(self.bucket_of(self.cursor), deque()).append(self.cursor)
            self.cursor += 1

    def oldest(self) -> int | None:
        firsts = [q[0] for q in self.queues.values() if q]
        return min(firsts) if firsts else None  # indices follow arrival order

    def waiting_with(self, oldest: int) -> int:
        return len(self.queues[self.bucket_of(oldest)])

    def take(self, oldest: int, size: int) -> Sequence[int]:
        queue = self.queues[self.bucket_of(oldest)]
        return [queue.popleft() for _ in range(min(size, len(queue)))]


class _Scheduler:
    """Hands out batches under one lock: a batch is due when its queue holds
    `max_batch_size` requests or its oldest request has waited `batch_window_s`."""

    def __init__(
        self, arrivals: Sequence[float], policy: BatchingPolicy, start: float, give_up_after_s: float | None
    ) -> None:
        self.arrivals = arrivals
        self.give_up_after_s = give_up_after_s
        self.overloaded = False
        self.policy = policy
        self.start = start
        self.waiting: _FifoQueue | _BucketQueues = (
            _FifoQueue(arrivals) if policy.bucket_of is None else _BucketQueues(arrivals, policy.bucket_of)
        )
        self.lock = threading.Lock()
        self.stopped = False

    def next_batch(self) -> Sequence[int] | None:
        """Block until a batch is due and return its request indices; None when all served."""
        policy, waiting = self.policy, self.waiting
        with self.lock:
            while not self.stopped:
                now = time.perf_counter() - self.start
                waiting.admit(now)
                oldest = waiting.oldest()
                if oldest is None:
                    if waiting.cursor >= len(self.arrivals):
                        return None
                    time.sleep(min(MAX_SLEEP_S, max(0.0, self.arrivals[waiting.cursor] - now)))
                    continue
                if self.give_up_after_s is not None and now - self.arrivals[oldest] > self.give_up_after_s:
                    # Hopelessly overloaded: the rest would only take long to say the same.
                    self.overloaded = self.stopped = True
                    return None
                due = self.arrivals[oldest] + policy.batch_window_s
                if waiting.waiting_with(oldest) >= policy.max_batch_size or now >= due:
                    return waiting.take(oldest, policy.max_batch_size)
                wake = due
                if waiting.cursor < len(self.arrivals):
                    wake = min(wake, self.arrivals[waiting.cursor])
                time.sleep(min(MAX_SLEEP_S, max(0.0, wake - now)))
            return None


class InstanceThreads:
    """One long-lived thread per instance, for state that is per thread and costly to
    rebuild: on a GPU, torch.compile's CUDA graph trees are kept per thread, so graphs
    recorded while warming up an instance are replayed only by the thread that recorded
    them. Without these, each `serve_open_loop` starts fresh threads."""

    def __init__(self, count: int) -> None:
        self._queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(count)]
        self._threads = [
            threading.Thread(target=self._loop, args=(q,), daemon=True, name=f"tuner-instance-{i}")
            for i, q in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _loop(jobs: queue.SimpleQueue[Any]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, future = job
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiter
                future.set_exception(exc)

    def __len__(self) -> int:
        return len(self._queues)

    def submit(self, index: int, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on instance `index`'s thread."""
        future: Future[Any] = Future()
        self._queues[index].put((fn, future))
        return future

    def close(self) -> None:
        for jobs in self._queues:
            jobs.put(None)
        for thread in self._threads:
            thread.join()


def serve_open_loop(
    arrivals: Sequence[float],
    policy: BatchingPolicy,
    run_batch: Sequence[Callable[[Sequence[int]], None]],
    *,
    instance_setup: Callable[[int], None] | None = None,
    give_up_after_s: float | None = None,
    threads: InstanceThreads | None = None,
) -> ServeRecord:
    """Serve requests arriving at `arrivals` (seconds from now) with one thread per entry of
    `run_batch` (an instance's forward over request indices); return what was measured.

    With `give_up_after_s`, a request queued longer than that stops the run: requests not
    answered get an infinite latency and the record's error starts with "overloaded".
    With `threads`, instance i runs on its long-lived thread i instead of a new one."""
    answered = [math.inf] * len(arrivals)
    batch_sizes: list[int] = []
    errors: list[str] = []
    start = time.perf_counter()
    scheduler = _Scheduler(arrivals, policy, start, give_up_after_s)

    def instance(index: int) -> None:
        if instance_setup is not None:
            instance_setup(index)
        forward = run_batch[index]
        while True:
            batch = scheduler.next_batch()
            if batch is None:
                return
            try:
                forward(batch)
            except Exception as exc:  # a failed forward ends the run; the trial reports it
                errors.append(f"{type(exc).__name__}: {exc}")
                scheduler.stopped = True
                return
            done = time.perf_counter() - start
            if isinstance(batch, range):
                answered[batch.start : batch.stop] = [done] * len(batch)
            else:
                for request in batch:
                    answered[request] = done
            batch_sizes.append(len(batch))

    if threads is not None:
        futures = [threads.submit(i, lambda i=i: instance(i)) for i in range(len(run_batch))]
        for future in futures:
            future.result()
    else:
        started = [threading.Thread(target=instance, args=(i,), daemon=True) for i in range(len(run_batch))]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
    latencies = tuple(answered[i] - arrivals[i] for i in range(len(arrivals)))
    finite = [a for a in answered if math.isfinite(a)]
    wall = max(finite) if finite else 0.0
    if scheduler.overloaded and not errors:
        errors.append(f"overloaded: a request waited more than {give_up_after_s:g} s in the queue")
    return ServeRecord(
        arrivals_s=tuple(arrivals),
        latencies_s=latencies,
        batch_sizes=tuple(batch_sizes),
        wall_s=wall,
        error=errors[0] if errors else None,
    )

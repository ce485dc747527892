"""The open-loop batcher's bookkeeping (every request answered once, FIFO batches, one
bucket per batch) and the ramp's test of a step that did not keep up. Real threads."""

from __future__ import annotations

import math
import random
import threading

from tuner.inference.batcher import BatchingPolicy, serve_open_loop
from tuner.inference.result import RatePoint
from tuner.inference.trial import GROWTH_SHARE, over_slo_reason, queue_grew


def _recording():
    batches: list[list[int]] = []
    lock = threading.Lock()

    def forward(indices) -> None:
        with lock:
            batches.append(list(indices))

    return batches, forward


def test_fifo_batches_are_arrival_order_runs_and_every_request_is_answered_once():
    arrivals = [0.000005 * i for i in range(3000)]  # 200k/s: 200 arrive per 1 ms window
    batches, forward = _recording()
    record = serve_open_loop(arrivals, BatchingPolicy(64, 0.001), [forward, forward])
    served = sorted(i for batch in batches for i in batch)
    assert served == list(range(3000))  # none lost, none twice, across two instances
    assert all(1 <= len(b) <= 64 for b in batches)
    assert all(b == list(range(b[0], b[0] + len(b))) for b in batches)  # contiguous in arrival order
    assert sorted(record.batch_sizes) == sorted(len(b) for b in batches)
    assert max(record.batch_sizes) == 64
    assert all(math.isfinite(lat) and lat >= 0 for lat in record.latencies_s)


def test_bucketed_batches_hold_one_bucket_and_take_the_oldest_bucket_first():
    draw = random.Random(3)
    buckets = [draw.choice((32, 64, 128)) for _ in range(600)]
    arrivals = [0.0001 * i for i in range(600)]
    batches, forward = _recording()
    serve_open_loop(arrivals, BatchingPolicy(16, 0.002, bucket_of=lambda i: buckets[i]), [forward])
    assert sorted(i for b in batches for i in b) == list(range(600))
    assert all(len({buckets[i] for i in b}) == 1 for b in batches)
    assert all(b == sorted(b) for b in batches)  # within a bucket, arrival order


def test_a_step_whose_latencies_climb_did_not_keep_up_and_a_level_one_did():
    slo = 50.0
    draw = random.Random(1)
    # overloaded: the queue grows through the step (0 -> 29 ms), p99 still under the SLO
    climbing = [29.0 * i / 999 + draw.uniform(0, 1) for i in range(1000)]
    assert max(climbing) < slo and queue_grew(climbing, slo)
    # stable near the SLO: noisy, level
    level = [draw.uniform(10, 45) for _ in range(1000)]
    assert not queue_grew(level, slo)
    # the threshold is a share of the SLO: a climb just under it is noise
    small = [(GROWTH_SHARE * slo - 2) * i / 999 for i in range(1000)]
    assert not queue_grew(small, slo)
    assert not queue_grew([1.0, 100.0] * 10, slo)  # too few requests to tell


def _point(offered: float, achieved: float, p99: float) -> RatePoint:
    return RatePoint(
        offered_qps=offered, achieved_qps=achieved, p50_ms=p99, p95_ms=p99, p99_ms=p99, requests=100, mean_batch=1.0
    )


def test_an_over_slo_reason_says_when_the_ramp_stopped_before_trying_lower_rates():
    # one step, hopelessly overloaded: the ramp stopped, it did not try lower rates
    stopped = over_slo_reason([_point(1_200_000, 900, math.inf)], 50, 2_000_000, max_steps=6)
    assert "even at 1,200,000.0 QPS, the lowest rate tried" in stopped
    assert "the ramp stopped there: the server answered 900 QPS" in stopped
    assert "under 2% of the 2,000,000 QPS its warm-up batches suggest" in stopped
    # every step used: the lowest rate is a real floor, no "stopped" clause
    full = [_point(r, r, 80.0) for r in (400, 300, 225, 169, 127, 95)]
    done = over_slo_reason(full, 50, 700, max_steps=6)
    assert "even at 95.0 QPS, the lowest rate tried" in done and "stopped" not in done

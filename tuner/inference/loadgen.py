"""The open-loop load: Poisson arrival times at a target rate.

Open loop means arrivals do not wait for answers: a slow server sees its queue grow, as a
real service does, instead of the closed-loop "send the next request when the last one
returned" that hides queueing. The input lengths come from the workload's serving setup
(`ServingSetup.make_requests`), e.g. a long-tailed distribution for gpt.
"""

from __future__ import annotations

import random


def poisson_arrivals(rate_per_s: float, count: int, seed: int) -> list[float]:
    """`count` arrival offsets (seconds from the start) of a Poisson process of `rate_per_s`:
    independent exponential gaps of mean 1/rate."""
    if rate_per_s <= 0 or count < 1:
        raise ValueError(f"rate_per_s must be > 0 and count >= 1, got {rate_per_s}, {count}")
    draw = random.Random(seed)
    t = 0.0
    arrivals = []
    for _ in range(count):
        t += draw.expovariate(rate_per_s)
        arrivals.append(t)
    return arrivals


def lognormal_lengths(count: int, *, median: int, sigma: float, low: int, high: int, seed: int) -> list[int]:
    """Long-tailed request lengths: lognormal around `median`, clipped to [low, high]."""
    import math

    draw = random.Random(seed)
    mu = math.log(median)
    return [max(low, min(high, round(draw.lognormvariate(mu, sigma)))) for _ in range(count)]

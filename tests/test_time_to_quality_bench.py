"""benchmarks/time_to_quality.py's own logic: the target from the default trained longer,
times to it read at fine checkpoints, and a report that counts a config that never got
there as infinitely slow instead of dropping it. One real tiny recsys run; the rest on
measured-looking entries built here."""

from __future__ import annotations

import math
from dataclasses import replace

from benchmarks.time_to_quality import BENCHES, default_config, measure, ratio, score, summarize


def test_the_target_is_the_default_trained_longer_and_its_own_time_is_read_at_fine_checkpoints():
    bench = replace(BENCHES["recsys"], max_items=256 * 2, measure_checkpoints=2)
    reference = measure(bench, default_config(bench), None, seed=0, multiple=3)
    assert reference["status"] == "ok" and reference["items"] == 3 * 256 * 2
    # 2 checkpoints per budget over 3 budgets: one every 256 samples (one default step)
    assert [p[0] for p in reference["curve"]] == [256.0 * k for k in range(1, 7)]
    target = reference["val_loss"]
    assert target == reference["curve"][-1][2]
    score(reference, target)
    assert reference["reached"]
    first = next(p for p in reference["curve"] if p[2] <= target)  # may be before the end: no later point is lower
    assert (reference["items_to_target"], reference["time_to_target_s"]) == (first[0], first[1])
    score(reference, min(p[2] for p in reference["curve"]) - 1.0)  # below anything it measured
    assert not reference["reached"] and reference["time_to_target_s"] is None


def _entry(curve: list[tuple[float, float, float]], target: float) -> dict:
    return score({"config": {}, "status": "ok", "val_loss": curve[-1][2], "curve": [list(p) for p in curve]}, target)


def test_the_report_ranks_a_peer_that_never_reached_the_target_as_infinitely_slow():
    target = 1.0
    fast = _entry([(100, 1.0, 1.5), (200, 2.0, 0.9)], target)  # reached at 2 s
    slow = _entry([(100, 3.0, 1.5), (200, 6.0, 0.95)], target)  # reached at 6 s
    never = _entry([(100, 1.0, 1.5), (200, 2.0, 1.2)], target)
    default = _entry([(100, 5.0, 1.5), (600, 30.0, 1.0)], target)
    rows = []
    for seed, (tuner, peer) in enumerate([(fast, slow), (fast, never), (slow, fast)]):
        rows.append({"workload": "recsys", "seed": seed, "budget_s": 15, "target_val_loss": target, "load_1min": 1.0,
                     "target_multiple": 3, "default": default,
                     "peers": {name: {"trials": 3, "pruned": 0, "search_s_to_target": None, "startup_s": None,
                                      "recommended": e} for name, e in (("tuner", tuner), ("random", peer))}})
    text = summarize(rows, ("tuner", "random"))
    random_line = next(line for line in text.splitlines() if line.strip().startswith("random"))
    assert "2/3" in random_line  # counted, not dropped
    # medians: tuner 2 s (2, 2, 6), random 6 s (6, inf, 2): 3x; per seed 3x, inf, 1/3
    assert random_line.split()[-1] == "3.00"
    assert "3.00x (medians); per seed vs that seed's fastest peer: 3.00x, infx, 0.33x" in text
    assert "vs the default: 15.00x" in text
    assert ratio(math.inf, math.inf) != ratio(math.inf, math.inf)  # neither reached: NaN
    assert ratio(5.0, math.inf) == 0.0 and ratio(math.inf, 5.0) == math.inf

"""A vectorised `log_ndtr` for Optuna's TPE sampler (same sampler, ~2x cheaper asks).

Profiling the ask/tell server under the REST benchmark (py-spy / pyinstrument, 4-knob
space with two integer knobs, 150-300 trials) put ~70% of TPE's ask time in the
`_log_ndtr` of TPE's truncated normal (private; replaced through
`tuner.storage.optuna_private`): it maps a pure-Python scalar function over every (candidate, kernel) pair with `np.frompyfunc` to get the Gaussian mass of each
integer bucket. `scipy.special.log_ndtr` computes the same function in C over the whole
array. It agrees with Optuna's to ~6e-8 relative over [-60, 60] (the largest gap is at
a = 6, where Optuna's `log(ndtr(a))` loses digits to cancellation and scipy does not;
`tests/test_optuna_private.py` checks the agreement), so the sampler's model is unchanged.
Sampled values can still differ from stock Optuna's after many trials: a last-bit
difference can flip which of the 24 EI candidates wins, after which the two runs diverge.

Installed once per process by the ask/tell service; a no-op without scipy. The REST
benchmark installs it on its plain-Optuna side too, so both sides run the same sampler
code and the comparison measures storage and transport only.
"""

from __future__ import annotations

import threading

from tuner.storage.optuna_private import replace_tpe_log_ndtr

_installed = False
_lock = threading.Lock()


def install() -> bool:
    """Replace TPE's scalar-loop `_log_ndtr` with scipy's; True when it is in place."""
    global _installed
    with _lock:
        if _installed:
            return True
        try:
            import numpy as np
            import scipy.special
        except ImportError:
            return False

        def log_ndtr(a: np.ndarray) -> np.ndarray:
            return scipy.special.log_ndtr(np.asarray(a, dtype=float))

        # False when a future Optuna moved the helper: its stock code keeps running
        _installed = replace_tpe_log_ndtr(log_ndtr)
        return _installed


__all__ = ["install"]

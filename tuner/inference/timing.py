"""Times one forward of a full batch of a served model: the generator's measure of what a
batch costs under a config's precision, fusion and threads (`tuner.inference.starting`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from tuner.inference.config import InferenceConfig
from tuner.inference.placement import intra_op_threads
from tuner.inference.prepare import PreparedModel, prepare_model
from tuner.inference.serving import ServingSetup

TIMED_FORWARDS = 2
REQUEST_SEED = 4099


def forward_timer(setup: ServingSetup) -> Callable[[InferenceConfig, int], float]:
    """Times one forward of a full batch of the workload's requests under `config`'s
    precision, fusion and threads, eager (best of `TIMED_FORWARDS` after one warm-up;
    models are prepared once per precision and fusion)."""
    prepared_cache: dict[tuple[str, str, bool], PreparedModel] = {}

    def timer(config: InferenceConfig, batch: int) -> float:
        key = (config.serving_precision, config.int8_backend, config.fusion)
        if key not in prepared_cache:
            # eager: compiling here would cost seconds per variant (the trials measure it)
            prepared_cache[key] = prepare_model(setup.model, config.replace(compile_mode="off"))
        prepared = prepared_cache[key]
        requests = setup.make_requests(batch, REQUEST_SEED)
        with intra_op_threads(config.threads_per_instance), prepared.running():
            setup.forward(prepared.module, requests, "longest")
            best = math.inf
            for _ in range(TIMED_FORWARDS):
                start = time.perf_counter()
                setup.forward(prepared.module, requests, "longest")
                best = min(best, time.perf_counter() - start)
        return best

    return timer

"""The config generator: hardware profile + workload shape + search space -> a plan.

`plan()` narrows the space to what the hardware runs well, predicts each config's peak
memory before it runs (`memory_model`, corrected by measured trials in `calibration`)
and proposes starting configs. Modules: `memory_model` (analytic peak memory),
`calibration` (learning from measured peaks), `planner` (the plan).
"""

from tuner.generator.memory_model import MemoryEstimate, estimate_peak
from tuner.generator.planner import GeneratorPlan, plan

__all__ = ["GeneratorPlan", "MemoryEstimate", "estimate_peak", "plan"]

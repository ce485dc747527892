"""Studies: a spec, the loop that runs it, and what it found.

`run_study(spec)` creates or resumes a study, measures the default config, runs trials
through an executor with Optuna's ask/tell and confirms the best back to back. Modules:
`spec` (`StudySpec`), `attrs` (the keys of what is stored), `create`, `loop`,
`hardware_plan` (generator + MFU peaks), `samplers`, `recovery` (trials of dead
processes), `confirm`, `gain` (the one wording of the gain over the default config),
`outcome`, `results` (reading studies back), `profiling`
(profiling a study's trial), `events` (progress).
"""

from tuner.study.attrs import StudyAttr, TrialAttr, TrialKind
from tuner.study.create import create_study, open_study, quiet_optuna_logging, resolve_spec
from tuner.study.gain import Gain, describe_gain
from tuner.study.hardware_plan import trial_peak_flops
from tuner.study.loop import baseline_config, run_study
from tuner.study.outcome import StudyOutcome
from tuner.study.results import NoFeasibleTrialError, StudySummary, list_studies, load_best
from tuner.study.spec import OBJECTIVES, PRUNERS, SAMPLERS, StudySpec

__all__ = [
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "Gain",
    "NoFeasibleTrialError",
    "StudyAttr",
    "StudyOutcome",
    "StudySpec",
    "StudySummary",
    "TrialAttr",
    "TrialKind",
    "baseline_config",
    "create_study",
    "describe_gain",
    "list_studies",
    "load_best",
    "open_study",
    "quiet_optuna_logging",
    "resolve_spec",
    "run_study",
    "trial_peak_flops",
]

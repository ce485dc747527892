"""The ask/tell engine: trials asked for and told by clients that run them elsewhere.

`service` hands out one hot in-memory copy per study (`hot_study`), which samples
(in the sampler child process for model-based samplers: `sampler_process`) and writes
every change to Optuna's tables through the group-committing `trial_writer` (in a child
process of its own: `writer_process`). Errors are tuner errors (ValidationError,
ConflictError, TrialNotFoundError): the engine knows nothing of HTTP.
"""

from tuner.asktell.hot_study import AskedTrial, HotStudy, TellOutcome
from tuner.asktell.service import AskTellService, make_writer, require_ask_tell

__all__ = ["AskTellService", "AskedTrial", "HotStudy", "TellOutcome", "make_writer", "require_ask_tell"]

"""The keys under which tuner keeps its data in Optuna's study and trial user attrs.

One module, so the study loop, the ask/tell engine, the service and the dashboard read
and write the same keys. `StrEnum` members are the strings themselves: Optuna stores
them, and `attrs[StudyAttr.SPEC]` finds a key written as the plain string.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["StudyAttr", "TrialAttr", "TrialKind"]


class StudyAttr(StrEnum):
    """Study user attrs."""

    #: the `StudySpec` (its `to_dict()`): the one stored copy of what the study is
    SPEC = "tuner.spec"
    #: the baseline's `TrialResult` dict (the workload's default config, measured first)
    BASELINE = "tuner.baseline"
    #: the baseline's `TrialConfig` dict
    BASELINE_CONFIG = "tuner.baseline_config"
    #: the `HardwareProfile` the study planned for
    HARDWARE = "tuner.hardware"
    #: the config generator's reasoning lines, when it was used
    GENERATOR = "tuner.generator"
    #: what a throughput study held for quality (`tuner.study.quality.describe_hold`):
    #: {"held": [...], "effective_batch": N | None, "reasoning": [...]}
    QUALITY = "tuner.quality"
    #: the validation loss a time_to_target study aims at (given, or the baseline's final
    #: loss; `tuner.study.quality_budget`)
    TARGET = "tuner.target"
    #: the confirmation phase's back-to-back (baseline, best) pairs (`tuner.study.confirm`)
    CONFIRMATION = "tuner.confirmation"
    #: prefix: `tuner.profile.<trial number>` holds that trial's performance profile. A
    #: study attr, because Optuna cannot change the user attrs of a finished trial.
    PROFILE_PREFIX = "tuner.profile."
    #: `tuner scaling`'s report (`tuner.study.scaling.ScalingReport.to_dict`): one config's
    #: throughput, speedup and efficiency per world size
    SCALING = "tuner.scaling"


class TrialAttr(StrEnum):
    """Trial user attrs."""

    #: the trial's `TrialResult` dict
    RESULT = "tuner.result"
    #: the trial's full `TrialConfig` dict
    CONFIG = "tuner.config"
    #: a `TrialKind`: whether the trial counts towards the study
    KIND = "tuner.kind"
    #: {"host", "pid"} of the process running the trial (stale-trial detection)
    OWNER = "tuner.owner"
    #: memory over the limit, read by the samplers' `constraints_func` (`tuner.study.samplers`)
    CONSTRAINT = "constraint"
    #: on a re-enqueued trial: the number of the abandoned trial it retries
    RETRY_OF = "tuner.retry_of"
    #: on an ask/tell trial that expired (tuner.asktell.expiry): {"timeout_s", "last_seen"}
    EXPIRED = "tuner.expired"
    #: the tuner status of studies written before `RESULT` carried it (read, never written)
    LEGACY_STATUS = "tuner.status"


class TrialKind(StrEnum):
    """Values of `TrialAttr.KIND`."""

    TRIAL = "trial"  # a trial that counts
    ABANDONED = "abandoned"  # its process died; failed and re-run
    SURPLUS = "surplus"  # asked beyond n_trials by a concurrent worker; does not count

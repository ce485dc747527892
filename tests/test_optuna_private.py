"""What tuner relies on from Optuna's private API, checked name by name.

Every private Optuna name tuner uses goes through tuner/storage/optuna_private.py (the
layering test refuses it anywhere else). When an Optuna upgrade moves or changes one,
a test here fails with the Optuna version and the private name, instead of the ask/tell
server or the study loop misbehaving somewhere later.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from tuner.storage import optuna_private as op


def _loud(name: str, what: str) -> str:
    return (
        f"Optuna {optuna.__version__}: the private {name} {what}. tuner relies on it "
        "(see tuner/storage/optuna_private.py); adapt that module to this Optuna version, or pin optuna"
    )


def _call(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (AttributeError, ImportError, TypeError) as exc:
        pytest.fail(_loud(name, f"is gone or changed ({type(exc).__name__}: {exc})"))


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=["maximize"])


def test_every_private_name_is_listed():
    assert len(op.PRIVATE_NAMES) == len(set(op.PRIVATE_NAMES))
    assert all(name.startswith("optuna.") for name in op.PRIVATE_NAMES)


def test_study_storage_and_id_name_the_study():
    study = _study()
    storage = _call("optuna.Study._storage", lambda: op.study_storage(study))
    sid = _call("optuna.Study._study_id", lambda: op.study_id(study))
    assert isinstance(storage, optuna.storages.BaseStorage), _loud("optuna.Study._storage", "is not a storage")
    assert storage.get_study_id_from_name(study.study_name) == sid, _loud("optuna.Study._study_id", "is not the study's id")


def test_trial_id_is_the_storage_id_of_trials_and_frozen_trials():
    study = _study()
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    storage = op.study_storage(study)
    tid = _call("optuna.trial.Trial._trial_id", lambda: op.trial_id(trial))
    assert storage.get_trial(tid).number == trial.number, _loud("optuna.trial.Trial._trial_id", "is not the trial's id")
    frozen = study.get_trials(deepcopy=False)[0]
    assert _call("optuna.trial.FrozenTrial._trial_id", lambda: op.trial_id(frozen)) == tid, _loud(
        "optuna.trial.FrozenTrial._trial_id", "differs from the trial's id"
    )


def test_summary_study_id_orders_studies_by_creation(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    for name in ("b", "a"):
        optuna.create_study(study_name=name, storage=url)
    summaries = optuna.get_all_study_summaries(url, include_best_trial=False)
    ordered = sorted(summaries, key=lambda s: _call("optuna.study.StudySummary._study_id", lambda: op.summary_study_id(s)))
    assert [s.study_name for s in ordered] == ["b", "a"], _loud("optuna.study.StudySummary._study_id", "is not the creation order")


def test_tell_without_copy_tells_a_trial():
    try:
        from optuna.study._tell import _tell_with_warning
    except ImportError as exc:
        pytest.fail(_loud("optuna.study._tell._tell_with_warning", f"is gone ({exc})"))
    params = list(inspect.signature(_tell_with_warning).parameters)
    assert params[:4] == ["study", "trial", "value_or_values", "state"], _loud(
        "optuna.study._tell._tell_with_warning", f"has another signature: {params}"
    )
    study = _study()
    done, failed = study.ask(), study.ask()
    op.tell_without_copy(study, done.number, [2.5], optuna.trial.TrialState.COMPLETE)
    op.tell_without_copy(study, failed.number, None, optuna.trial.TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    assert [(t.state.name, t.values) for t in trials] == [("COMPLETE", [2.5]), ("FAIL", None)], _loud(
        "optuna.study._tell._tell_with_warning", "no longer tells the trial as Study.tell does"
    )


#: Tables and columns tuner.asktell.trial_writer reads and writes directly.
WRITTEN_COLUMNS = {
    "StudyModel": {"study_id"},
    "TrialModel": {"trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"},
    "TrialParamModel": {"trial_id", "param_name", "param_value", "distribution_json"},
    "TrialUserAttributeModel": {"trial_id", "key", "value_json"},
    "TrialSystemAttributeModel": {"trial_id", "key", "value_json"},
    "TrialValueModel": {"trial_id", "objective", "value", "value_type"},
    "TrialIntermediateValueModel": {"trial_id", "step", "intermediate_value", "intermediate_value_type"},
    "TrialHeartbeatModel": {"trial_id", "heartbeat"},
}


def test_rdb_models_have_the_tables_and_columns_the_writer_uses():
    models = _call("optuna.storages._rdb.models", op.rdb_models)
    for model_name, columns in WRITTEN_COLUMNS.items():
        model = getattr(models, model_name, None)
        assert model is not None, _loud(f"optuna.storages._rdb.models.{model_name}", "is gone")
        have = set(model.__table__.c.keys())
        assert columns <= have, _loud(f"optuna.storages._rdb.models.{model_name}", f"lacks columns {sorted(columns - have)}")
    # the writer upserts user attrs ON CONFLICT (trial_id, key): that must be unique
    uniques = [
        {c.name for c in constraint.columns}
        for constraint in models.TrialUserAttributeModel.__table__.constraints
        if constraint.__class__.__name__ == "UniqueConstraint"
    ]
    assert {"trial_id", "key"} in uniques, _loud("optuna.storages._rdb.models.TrialUserAttributeModel", "has no unique (trial_id, key)")
    # the value encoders the writer stores values with
    stored, kind = models.TrialValueModel.value_to_stored_repr(float("inf"))
    assert models.TrialValueModel.stored_repr_to_value(stored, kind) == float("inf"), _loud(
        "optuna.storages._rdb.models.TrialValueModel.value_to_stored_repr", "no longer round-trips"
    )
    stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(0.5)
    assert models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(stored, kind) == 0.5, _loud(
        "optuna.storages._rdb.models.TrialIntermediateValueModel.intermediate_value_to_stored_repr", "no longer round-trips"
    )
    assert callable(getattr(models.TrialHeartbeatModel, "where_trial_id", None)), _loud(
        "optuna.storages._rdb.models.TrialHeartbeatModel.where_trial_id", "is gone"
    )


def test_rdb_backend_attr_writer_and_stale_trials(tmp_path):
    from tuner.storage.rdb import open_storage

    rdb = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    study = optuna.create_study(study_name="r", storage=rdb)
    backend = op.rdb_backend(op.study_storage(study))
    assert backend is rdb, _loud("optuna.storages._CachedStorage._backend", "is not the RDBStorage a study's storage wraps")
    write = op.attr_writer_without_commit(rdb)
    assert write is not None, _loud("optuna.storages.RDBStorage._set_trial_attr_without_commit", "is gone")
    assert list(inspect.signature(write).parameters) == ["session", "model_cls", "trial_id", "key", "value"], _loud(
        "optuna.storages.RDBStorage._set_trial_attr_without_commit", f"has another signature: {inspect.signature(write)}"
    )
    trial = study.ask()
    rdb.set_trial_user_attrs(op.trial_id(trial), {"a": 1, "b": [2]}, heartbeat=True)  # goes through both names
    assert study.trials[0].user_attrs == {"a": 1, "b": [2]}
    other = study.ask()  # RUNNING without a heartbeat: not listed
    read = op.running_heartbeats(rdb, op.study_id(study))
    assert read is not None, _loud("optuna.storages._rdb.models", "has no TrialModel/TrialHeartbeatModel")
    now, beats = read
    assert list(beats) == [op.trial_id(trial)] and op.trial_id(other) not in beats, _loud(
        "optuna.storages._rdb.models.TrialHeartbeatModel", f"gave {beats!r} for one trial with a heartbeat"
    )
    assert abs((now - beats[op.trial_id(trial)]).total_seconds()) < 60, (now, beats)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert op.running_heartbeats(rdb, op.study_id(study))[1] == {}  # finished trials are not listed


def test_trials_since_reads_the_named_and_the_newer_trials_only(tmp_path):
    from tuner.storage.rdb import open_storage

    rdb = open_storage(f"sqlite:///{tmp_path / 't.db'}")
    study = optuna.create_study(study_name="t", storage=rdb)
    trials = [study.ask() for _ in range(5)]
    ids = [op.trial_id(t) for t in trials]
    assert getattr(rdb, "_get_trials", None) is not None, _loud("optuna.storages.RDBStorage._get_trials", "is gone")
    read = _call("optuna.storages.RDBStorage._get_trials", lambda: op.trials_since(rdb, op.study_id(study), {ids[1]}, ids[2]))
    assert sorted(t.number for t in read) == [1, 3, 4], _loud("optuna.storages.RDBStorage._get_trials", "read other trials")


def test_tpe_log_ndtr_exists_and_the_patch_gives_the_same_numbers():
    import numpy as np

    from tuner.asktell import tpe_speedup

    try:
        from optuna.samplers._tpe import _truncnorm
    except ImportError as exc:
        pytest.fail(_loud("optuna.samplers._tpe._truncnorm", f"is gone ({exc})"))
    assert op.tpe_log_ndtr() is not None, _loud("optuna.samplers._tpe._truncnorm._log_ndtr", "is gone")
    scalar = getattr(_truncnorm, "_log_ndtr_single", None)
    assert scalar is not None, _loud("optuna.samplers._tpe._truncnorm._log_ndtr_single", "is gone (the stock code to compare with)")
    assert tpe_speedup.install(), _loud("optuna.samplers._tpe._truncnorm._log_ndtr", "could not be replaced")
    patched = op.tpe_log_ndtr()
    assert patched is _truncnorm._log_ndtr, _loud("optuna.samplers._tpe._truncnorm._log_ndtr", "was not replaced")
    x = np.concatenate([np.linspace(-60, 60, 2001), -np.logspace(-8, 3, 100), np.logspace(-8, 3, 100)])
    stock = np.frompyfunc(scalar, 1, 1)(x).astype(float)
    np.testing.assert_allclose(patched(x), stock, rtol=1e-6, atol=1e-300, err_msg=_loud("_log_ndtr", "differs from scipy's"))
    # and TPE still samples with it in place (the sampler calls it with arrays)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    study.optimize(lambda t: -((t.suggest_int("n", 1, 64) - 20) ** 2), n_trials=6)
    assert len(study.trials) == 6

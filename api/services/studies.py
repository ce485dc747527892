"""Studies: create, list, read, stop, resume, delete. Services own the transactions."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import Principal
from api.context import ServiceContext
from api.db.models import STUDY_STATES, StudyMode, StudyRow, StudyState
from api.problems import ApiProblem, conflict, not_found
from api.repositories import studies as repo
from api.schemas import Progress, StudyCreate, StudyRead, TrialSummary
from api.services.space_io import parse_space
from api.settings import Settings
from tuner.errors import FieldProblem, StudyExistsError, ValidationError
from tuner.study.hparams import workload_hparam_problems
from tuner.study.inference_spec import is_inference
from tuner.study.lifecycle import create_optuna_study, delete_optuna_study
from tuner.study.results import best_record, pareto_records, trial_record
from tuner.study.spec import StudySpec
from tuner.types import TrialBudget
from tuner.workloads import get_workload

#: Workload parameters that name files. A REST payload may only pick one of the server's
#: registered tables by name; the path comes from the server's settings.
_FILE_PARAM_SUFFIXES = ("table", "path", "file", "dir", "hardware")
EXTERNAL_WORKLOAD = "external"


def build_spec(payload: StudyCreate, settings: Settings) -> StudySpec:
    """Validate a create request into a `StudySpec`, collecting every problem at once."""
    problems: list[FieldProblem] = []
    space = None
    try:
        space = parse_space(payload.space)
    except ValidationError as exc:
        problems += exc.problems
    # A space file may name its workload and shape; the request's fields override them.
    if space is not None and payload.workload is None and space.workload is not None:
        payload = payload.model_copy(update={"workload": space.workload})
    if space is not None and space.workload_params:
        payload = payload.model_copy(update={"workload_params": {**space.workload_params, **payload.workload_params}})
    workload_name, params = _workload(payload, settings, problems)
    budget = TrialBudget()
    if payload.budget is not None:
        try:
            budget = TrialBudget.from_dict(payload.budget)
        except ValidationError as exc:
            problems += [_prefixed("budget", p) for p in exc.problems]
        except TypeError as exc:
            problems.append(FieldProblem("budget", payload.budget, f"has an unknown field ({exc})", "use max_steps, warmup_steps, max_seconds, eval_batches, report_every"))
    try:
        spec = StudySpec(
            name=payload.name,
            workload=workload_name,
            space=space,  # type: ignore[arg-type]  # None only when problems is non-empty
            workload_params=params,
            objectives=_objectives(payload, space),
            sampler=payload.sampler,
            pruner=payload.pruner,
            n_trials=payload.n_trials,
            timeout_s=payload.timeout_s,
            budget=budget,
            memory_limit_bytes=payload.memory_limit_bytes,
            seed=payload.seed,
            baseline=payload.baseline and payload.run,
            use_generator=payload.use_generator,
            workers=payload.workers,
            device=payload.device,
            trial_timeout_s=payload.trial_timeout_s,
            heartbeat_grace_s=payload.heartbeat_grace_s,
            executor=_executor_name(payload, settings, problems),
            slo_p99_ms=payload.slo_p99_ms,
            target_qps=payload.target_qps,
        )
    except ValidationError as exc:
        problems += exc.problems
        spec = None
    if not payload.run and payload.timeout_s is not None:
        problems.append(FieldProblem("timeout_s", payload.timeout_s, "has no meaning for an ask/tell study", "omit it, or use run: true"))
    if spec is not None and is_inference(spec.space) and payload.run:
        problems += _serving_device_problems(spec)
    if spec is not None and payload.run and not problems and not is_inference(spec.space):
        problems += _held_knob_problems(spec)
        problems += [_prefixed("space", p) for p in workload_hparam_problems(spec.space, get_workload(spec.workload))]
    if problems:
        raise ValidationError(problems)
    assert spec is not None
    return spec


def _serving_device_problems(spec: StudySpec) -> list[FieldProblem]:
    """A knob the server's device can never serve (compile_mode: reduce-overhead, i.e.
    CUDA graphs, on a CPU server): a 422 now, not a study of refused trials. Found
    without a CUDA context in the API process."""
    from tuner.inference.refusals import space_device_problems
    from tuner.trial.device import device_type_without_cuda_init

    try:
        kind = device_type_without_cuda_init(spec.device)
    except ValidationError as exc:
        return list(exc.problems)
    return space_device_problems(spec.space, kind)


def _executor_name(payload: StudyCreate, settings: Settings, problems: list[FieldProblem]) -> str:
    """The executor a study names must be one the server was started with: a payload
    picks by name only, so it can never point the server at an address or at code."""
    offered = settings.executor_choices()
    name = payload.executor if payload.executor is not None else next(iter(offered))
    if name not in offered:
        problems.append(
            FieldProblem(
                "executor",
                name,
                "is not an executor of this server",
                "use one of: " + ", ".join(offered) + " (the server's `tuner serve --executor` options)",
            )
        )
        return next(iter(offered))
    if payload.executor is not None and not payload.run:
        problems.append(FieldProblem("executor", name, "has no meaning for an ask/tell study", "omit it, or use run: true"))
    return name


def _objectives(payload: StudyCreate, space: Any) -> tuple[str, ...]:
    """The payload's objectives; an inference space without any gets qps_at_slo (the
    schema's default, throughput, is a training objective)."""
    if "objectives" not in payload.model_fields_set and is_inference(space):
        return ("qps_at_slo",)
    return tuple(payload.objectives)


def _held_knob_problems(spec: StudySpec) -> list[FieldProblem]:
    """A server-run throughput study holds quality knobs at the workload's defaults
    (`tuner.study.quality`): a space that excludes them is refused here, with the fix,
    instead of failing in the background runner."""
    from tuner.study.quality import hold_quality_knobs, reference_config

    workload = get_workload(spec.workload)
    if not workload.learns:
        return []
    try:
        reference = reference_config(workload.default_config(spec.workload_params), spec.space)
        hold_quality_knobs(spec.space, spec.objectives, reference)
    except ValidationError as exc:
        return [_prefixed("space", p) for p in exc.problems]
    return []


def _prefixed(prefix: str, problem: FieldProblem) -> FieldProblem:
    return FieldProblem(f"{prefix}.{problem.field}", problem.value, problem.problem, problem.fix, problem.source)


def _workload(payload: StudyCreate, settings: Settings, problems: list[FieldProblem]) -> tuple[str, dict[str, Any]]:
    if payload.workload is None:
        if payload.run:
            problems.append(FieldProblem("workload", None, "is required when run is true", "name a registered workload (GET /api/v1/workloads), or set run: false for ask/tell"))
        if payload.workload_params:
            problems.append(FieldProblem("workload_params", payload.workload_params, "is given without a workload", "name the workload they belong to"))
        return EXTERNAL_WORKLOAD, {}
    try:
        # get_workload accepts registry names only: module paths ("os:system",
        # "pkg.mod:Class") and file paths fail its name check before anything is imported.
        workload = get_workload(payload.workload)
    except ValidationError as exc:
        problems += exc.problems
        return payload.workload, dict(payload.workload_params)
    params = dict(payload.workload_params)
    for key, value in list(params.items()):
        if not key.endswith(_FILE_PARAM_SUFFIXES) or value in ("", None):
            continue
        if isinstance(value, str) and value in settings.replay_tables:
            params[key] = str(settings.replay_tables[value])
        else:
            known = ", ".join(sorted(settings.replay_tables)) or "(none configured)"
            problems.append(
                FieldProblem(
                    f"workload_params.{key}",
                    value,
                    "names a file; the API never opens paths from a request",
                    f"use the name of a table registered on the server: {known} (server setting replay_tables)",
                )
            )
    try:
        params = workload.resolve_params(params)
    except ValidationError as exc:
        problems += [_prefixed("workload_params", p) if not p.field.startswith("params.") else FieldProblem("workload_" + p.field, p.value, p.problem, p.fix) for p in exc.problems]
    return workload.name, params


class StudyService:
    def __init__(self, ctx: ServiceContext, session: Session) -> None:
        self.ctx = ctx
        self.session = session

    # -- create -------------------------------------------------------------------------
    def create(self, payload: StudyCreate, principal: Principal) -> StudyRead:
        spec = build_spec(payload, self.ctx.settings)
        self.adopt_external()
        if repo.get_by_name(self.session, spec.name) is not None:
            raise conflict("name", spec.name, "is already a study in this database", "pick another name, or DELETE the old study")
        # Optuna's half first: on SQLite one connection cannot hold our write transaction
        # open while Optuna's engine writes. If our insert then fails, undo Optuna's half.
        try:
            # run: the study loop's own creation (same stored spec, conditional grids enqueued)
            create_optuna_study(spec, storage=self.ctx.storage, storage_url=self.ctx.settings.storage, run=payload.run)
        except StudyExistsError:
            raise conflict("name", spec.name, "is already an Optuna study in this database", "pick another name") from None
        # any other failure (the workload while the grid is enqueued: a 422 naming its field)
        # was undone by create_optuna_study: nothing of the study is left behind
        row = StudyRow(
            name=spec.name,
            workload=spec.workload,
            mode=StudyMode.RUN if payload.run else StudyMode.ASK_TELL,
            state=StudyState.QUEUED if payload.run else StudyState.ASK_TELL,
            created_by=principal.owner,  # ownership: api.access OWNER rules
        )
        try:
            repo.add(self.session, row)
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            delete_optuna_study(self.ctx.storage, spec.name)
            raise conflict("name", spec.name, "is already a study in this database", "pick another name") from None
        except Exception:
            self.session.rollback()
            delete_optuna_study(self.ctx.storage, spec.name)
            raise
        if row.mode == StudyMode.RUN and self.ctx.runner is not None:
            self.ctx.runner.wake()
        return self.read(row)

    # -- read ---------------------------------------------------------------------------
    def adopt_external(self) -> None:
        """Give studies created outside the service (CLI, plain Optuna) a row, so they list."""
        known = repo.names(self.session)
        missing = [n for n in repo.optuna_study_names(self.session) if n not in known]
        if not missing:
            return
        for name in missing:
            spec = repo.spec_of(self.session, name)
            self.session.add(
                StudyRow(
                    name=name,
                    workload=spec.workload[:64] if spec is not None else "unknown",
                    mode=StudyMode.CLI,
                    state=StudyState.EXTERNAL,
                )
            )
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()  # another request adopted them first

    def get_row_or_none(self, name: str) -> StudyRow | None:
        return repo.get_by_name(self.session, name)

    def get_row(self, name: str) -> StudyRow:
        row = repo.get_by_name(self.session, name)
        if row is None:
            self.adopt_external()
            row = repo.get_by_name(self.session, name)
        if row is None:
            raise not_found("name", name, "study", "list studies with GET /api/v1/studies")
        return row

    def list(self, *, offset: int, limit: int, state: str | None, workload: str | None) -> tuple[list[StudyRead], int]:
        if state is not None and state not in STUDY_STATES:
            raise ApiProblem(422, "Invalid input", f"state={state!r}", [FieldProblem("state", state, "is not a study state", "use one of: " + ", ".join(STUDY_STATES))])
        self.adopt_external()
        rows, total = repo.page(self.session, offset=offset, limit=limit, state=state, workload=workload)
        counts = repo.trial_state_counts(self.session, [r.name for r in rows])
        return [self.read(r, counts.get(r.name, {}), with_trials=False) for r in rows], total

    def read(self, row: StudyRow, counts: dict[str, int] | None = None, *, with_trials: bool = True) -> StudyRead:
        spec = repo.spec_of(self.session, row.name)
        objectives = list(spec.objectives) if spec is not None else []
        best = None
        pareto_size = None
        if with_trials:
            trials = self.trials_of(row.name)
            counts = {}
            for t in trials:
                counts[t.state.name] = counts.get(t.state.name, 0) + 1
            if objectives:
                records = [trial_record(t) for t in trials]
                if len(objectives) > 1:
                    pareto_size = len(pareto_records(records, tuple(objectives)))
                top = best_record(records, tuple(objectives))
                if top is not None:
                    best = summary_of(top, spec)
        counts = counts or {}
        n_trials = spec.n_trials if spec is not None else None
        finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) + counts.get("FAIL", 0)
        progress = Progress(
            n_trials=n_trials,
            complete=counts.get("COMPLETE", 0),
            pruned=counts.get("PRUNED", 0),
            failed=counts.get("FAIL", 0),
            running=counts.get("RUNNING", 0),
            waiting=counts.get("WAITING", 0),
            total=sum(counts.values()),
            fraction=min(1.0, finished / n_trials) if n_trials else None,
        )
        return StudyRead(
            name=row.name,
            workload=row.workload,
            mode=row.mode,
            state=row.state,
            reason=row.reason,
            objectives=objectives,
            directions=list(spec.directions) if spec is not None else [],
            objective_names=list(spec.objective_names) if spec is not None else [],
            sampler=spec.sampler if spec is not None else None,
            created_at=row.created_at,
            updated_at=row.updated_at,
            progress=progress,
            best=best,
            pareto_size=pareto_size,
            spec=(spec.to_dict() if spec is not None else {}) if with_trials else None,
        )

    def trials_of(self, name: str) -> list[Any]:
        storage = self.ctx.storage
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            return []
        return storage.get_all_trials(study_id, deepcopy=False)

    # -- lifecycle ----------------------------------------------------------------------
    def stop(self, name: str) -> StudyRead:
        row = self.get_row(name)
        if row.mode == StudyMode.ASK_TELL:
            if row.state == StudyState.ASK_TELL:
                row.state = StudyState.STOPPED
        elif row.state == StudyState.QUEUED:
            row.state = StudyState.STOPPED
        elif row.state == StudyState.RUNNING:
            row.state = StudyState.STOPPING
        elif row.state not in (StudyState.STOPPING, StudyState.STOPPED):
            raise conflict("state", row.state, "cannot be stopped", "only queued, running or ask/tell studies stop")
        self.session.commit()
        self.ctx.asktell.forget(name)
        if self.ctx.runner is not None:
            self.ctx.runner.request_stop(name)
        return self.read(row)

    def resume(self, name: str) -> StudyRead:
        row = self.get_row(name)
        if row.state == StudyState.STOPPING:
            raise conflict("state", row.state, "is still stopping", "wait until the study reads 'stopped', then resume")
        if row.mode == StudyMode.ASK_TELL:
            if row.state == StudyState.STOPPED:
                row.state = StudyState.ASK_TELL
        elif row.state in (StudyState.STOPPED, StudyState.FAILED):
            row.state = StudyState.QUEUED
            row.reason = None
        elif row.state not in (StudyState.QUEUED, StudyState.RUNNING):
            raise conflict("state", row.state, "cannot be resumed", "only stopped or failed studies resume")
        self.session.commit()
        self.ctx.asktell.forget(name)
        if self.ctx.runner is not None and row.state == StudyState.QUEUED:
            self.ctx.runner.wake()
        return self.read(row)

    def delete(self, name: str) -> None:
        row = self.get_row(name)
        if row.state in (StudyState.RUNNING, StudyState.STOPPING) or (
            row.state == StudyState.QUEUED and self.ctx.runner is not None and self.ctx.runner.is_active(name)
        ):
            raise conflict("state", row.state, "is running", f"stop it first: POST /api/v1/studies/{name}/stop")
        # Optuna's half first (SQLite: no two write transactions at once), then ours.
        self.session.rollback()
        delete_optuna_study(self.ctx.storage, name)  # False: the Optuna half was already gone
        repo.delete(self.session, self.get_row_or_none(name) or row)
        self.session.commit()
        self.ctx.asktell.forget(name)


def summary_of(record: Any, spec: StudySpec | None = None) -> TrialSummary:
    """A trial for best/Pareto answers, its hyperparameters and values named by the spec."""
    result = record.result
    names = spec.objective_names if spec is not None else None
    values = list(record.values) if record.values is not None else None
    return TrialSummary(
        number=record.number,
        values=values,
        config=record.config.to_dict() if record.config is not None else None,
        metrics=metrics_of(result),
        hparams=spec.space.hparams_of(record.params) if spec is not None else record.hparams,
        objective_values=dict(zip(names, values, strict=False)) if names and values else None,
    )


def metrics_of(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    metrics: dict[str, Any] = {}
    for key in ("items_per_s", "item_unit", "step_time_s", "peak_memory_bytes", "memory_kind", "mfu", "val_loss", "timed_steps", "steps_run", "duration_s", "skipped_steps"):
        value = getattr(result, key, None)
        if value is not None:
            metrics[key] = value
    metrics.update(result.metrics)
    return metrics

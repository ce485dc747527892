"""/api/v1/studies: studies, their trials, results and ask/tell."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from api.context import ServiceContext
from api.db.models import StudyState
from api.deps import ContextDep, ReaderDep, SessionDep, WriterDep
from api.paging import PageDep, TrialNumber
from api.problems import conflict, problem_responses
from api.repositories import studies as repo
from api.runtime.asktell_expiry import complete_if_done
from api.schemas import (
    AskRead,
    ExportFormat,
    Page,
    ReportCreate,
    ReportRead,
    ResultExport,
    StudyCreate,
    StudyRead,
    TellCreate,
    TellRead,
    TrialRead,
)
from api.services.hot_state import RowState
from api.services.result_export import ResultService, render
from api.services.studies import StudyService
from tuner.asktell.hot_study import HotStudy
from tuner.asktell.service import require_ask_tell
from tuner.asktell.suggest import AskedConfig
from tuner.inference.config import InferenceConfig
from tuner.study.inference_spec import is_inference
from tuner.types import TrialConfig
from tuner.workloads import get_workload

router = APIRouter(prefix="/studies", tags=["studies"], responses=problem_responses(401, 403, 422, 503))  # 403: scope or owner (api.access)
_MEDIA = {"json": "application/json", "yaml": "application/yaml", "torch": "text/x-python"}


# -- ask / report / tell ---------------------------------------------------------------
# Registered first: FastAPI tries routes in order, and these are the hot ones.
# The hot path is async: no worker-thread hop per request, no database session, and the
# request awaits its group commit instead of blocking a thread on it (tuner.asktell.hot_study).
def _load_hot(ctx: ServiceContext, name: str) -> HotStudy:
    started = time.monotonic()
    with ctx.sessions() as session:
        row = StudyService(ctx, session).get_row(name)
        require_ask_tell(row.mode, name)
        spec = repo.spec_of(session, name)
        if spec is None:  # the service stored one at creation; someone removed or broke the attr since
            raise conflict("study", name, "has no readable tuner.spec user attribute", "recreate the study (DELETE it, then POST it again)")
        base: AskedConfig = TrialConfig()
        if is_inference(spec.space):
            base = InferenceConfig()  # the untuned server: knobs outside the space keep it
        elif row.workload != "external":
            base = get_workload(row.workload).default_config(spec.workload_params)
        accepting = row.state == StudyState.ASK_TELL
        ctx.study_states.loaded(name, RowState(row.id, accepting, started))
        return ctx.asktell.hot(name, spec, base, accepting=accepting)


async def _hot_cached(ctx: ServiceContext, name: str, *, allow_stopped: bool = False) -> HotStudy:
    """The study's hot copy; the row is read on first use (stop/resume/delete on this
    server evict it) and again at most every study_state_recheck_s, for what other
    servers did (api.services.hot_state)."""
    hot = ctx.asktell.cached(name)
    if hot is not None:
        hot = await ctx.study_states.current(ctx, name, hot)
    if hot is None:
        hot = await ctx.asktell.load_once(name, lambda: run_in_threadpool(_load_hot, ctx, name))
    if not hot.accepting and not allow_stopped:
        raise conflict("state", "stopped", "does not accept new trials", f"resume it: POST /api/v1/studies/{name}/resume")
    return hot


@router.post("/{name}/ask", response_model=AskRead, summary="a new trial: its number and config", responses=problem_responses(404, 409))
async def ask(name: str, ctx: ContextDep, _: WriterDep) -> AskRead:
    asked = await (await _hot_cached(ctx, name)).ask()
    return AskRead(study=name, trial_number=asked.number, config=asked.config.to_dict(), params=asked.params, hparams=asked.hparams)


@router.post("/{name}/trials/{number}/report", response_model=ReportRead, summary="an intermediate value; answers whether to prune", responses=problem_responses(400, 404, 409, 413))
async def report(name: str, number: TrialNumber, body: ReportCreate, ctx: ContextDep, _: WriterDep) -> ReportRead:
    hot = await _hot_cached(ctx, name, allow_stopped=True)
    return ReportRead(prune=await hot.report(number, body.step, body.value))


@router.post("/{name}/trials/{number}/tell", response_model=TellRead, summary="final values, metrics and status", responses=problem_responses(400, 404, 409, 413))
async def tell(name: str, number: TrialNumber, body: TellCreate, ctx: ContextDep, _: WriterDep) -> TellRead:
    hot = await _hot_cached(ctx, name, allow_stopped=True)
    state = await hot.tell(
        number, body.values, status=body.status, metrics=body.metrics, telemetry=body.telemetry, reason=body.reason
    )
    if hot.asked_all():  # maybe the last trial: the study may be done now (else the sweep sees it)
        await run_in_threadpool(complete_if_done, ctx, name, hot.spec)
    return TellRead(trial_number=number, state=state)


@router.post("/{name}/trials/{number}/heartbeat", status_code=204, summary="a sign of life: the trial does not expire yet", responses=problem_responses(404, 409))
async def heartbeat(name: str, number: TrialNumber, ctx: ContextDep, _: WriterDep) -> Response:
    hot = await _hot_cached(ctx, name, allow_stopped=True)
    await hot.heartbeat(number)
    return Response(status_code=204)


# -- studies ---------------------------------------------------------------------------
@router.post("", response_model=StudyRead, status_code=201, summary="create a study (runs in the background unless run: false)", responses=problem_responses(400, 409, 413))
def create_study(body: StudyCreate, ctx: ContextDep, session: SessionDep, principal: WriterDep) -> StudyRead:
    return StudyService(ctx, session).create(body, principal)


@router.get("", response_model=Page[StudyRead], summary="list studies, paged, filtered by state and workload")
def list_studies(
    ctx: ContextDep,
    session: SessionDep,
    page: PageDep,
    _: ReaderDep,
    state: str | None = None,
    workload: str | None = None,
) -> Page[StudyRead]:
    items, total = StudyService(ctx, session).list(offset=page.offset, limit=page.limit, state=state, workload=workload)
    return Page[StudyRead](items=items, total=total, offset=page.offset, limit=page.limit)


@router.get("/{name}", response_model=StudyRead, summary="state, progress and best so far", responses=problem_responses(404))
def get_study(name: str, ctx: ContextDep, session: SessionDep, _: ReaderDep) -> StudyRead:
    service = StudyService(ctx, session)
    return service.read(service.get_row(name))


@router.post("/{name}/stop", response_model=StudyRead, responses=problem_responses(404, 409))
def stop_study(name: str, ctx: ContextDep, session: SessionDep, _: WriterDep) -> StudyRead:
    return StudyService(ctx, session).stop(name)


@router.post("/{name}/resume", response_model=StudyRead, responses=problem_responses(404, 409))
def resume_study(name: str, ctx: ContextDep, session: SessionDep, _: WriterDep) -> StudyRead:
    return StudyService(ctx, session).resume(name)


@router.delete("/{name}", status_code=204, responses=problem_responses(404, 409))
def delete_study(name: str, ctx: ContextDep, session: SessionDep, _: WriterDep) -> Response:
    StudyService(ctx, session).delete(name)
    return Response(status_code=204)


# -- trials and results ----------------------------------------------------------------
@router.get("/{name}/trials", response_model=Page[TrialRead], summary="trials, paged, sortable by any metric", responses=problem_responses(404))
def list_trials(
    name: str,
    ctx: ContextDep,
    session: SessionDep,
    page: PageDep,
    _: ReaderDep,
    state: str | None = None,
    sort: str = "number",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
) -> Page[TrialRead]:
    items, total = ResultService(ctx, session).list_trials(
        name, offset=page.offset, limit=page.limit, state=state, sort=sort, descending=order == "desc"
    )
    return Page[TrialRead](items=items, total=total, offset=page.offset, limit=page.limit)


@router.get("/{name}/trials/{number}", response_model=TrialRead, responses=problem_responses(404))
def get_trial(name: str, number: TrialNumber, ctx: ContextDep, session: SessionDep, _: ReaderDep) -> TrialRead:
    return ResultService(ctx, session).get_trial(name, number)


def _export(name: str, trials: list, fmt: ExportFormat, raw: bool) -> ResultExport | PlainTextResponse:
    content = render(name, trials, fmt)
    if raw:
        return PlainTextResponse(content, media_type=_MEDIA[fmt])
    return ResultExport(study=name, format=fmt, content=content, trials=trials)


@router.get("/{name}/best", response_model=ResultExport, summary="best config; ?raw=true returns the document itself", responses=problem_responses(404))
def best(name: str, ctx: ContextDep, session: SessionDep, _: ReaderDep, format: ExportFormat = "json", raw: bool = False):
    return _export(name, ResultService(ctx, session).best(name), format, raw)


@router.get("/{name}/pareto", response_model=ResultExport, summary="Pareto front (multi-objective)", responses=problem_responses(404, 409))
def pareto(name: str, ctx: ContextDep, session: SessionDep, _: ReaderDep, format: ExportFormat = "json", raw: bool = False):
    return _export(name, ResultService(ctx, session).pareto(name), format, raw)

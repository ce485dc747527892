"""The web dashboard: its pages (`/`, `/studies/{name}`, `/studies/{name}/trials/{n}`), its
static files and plotly.min.js, and the chart-ready read endpoints under /api/v1/dashboard.

The pages are static shells; their JavaScript fetches the endpoints below, which page,
sort, filter and downsample on the server from `DashboardStore`'s cached columnar view,
so a 10,000-trial study never ships 10,000 trial documents to the browser.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from api.dashboard import inference as serving
from api.dashboard import trial_table as table_pages
from api.dashboard import views
from api.dashboard.importance import ImportanceCache
from api.dashboard.scaling import scaling_summary
from api.dashboard.store import DashboardStore, StudyNotInStorage, StudyView
from api.deps import ContextDep, ReaderDep, SessionDep
from api.paging import Offset, TrialNumber
from api.problems import ApiProblem, not_found, problem_responses
from tuner.errors import FieldProblem
from tuner.study.results import hparams_among

STATIC_DIR = Path(__file__).resolve().parent / "static"
API = "/api/v1/dashboard"
#: the trial-table page size the page asks for, and the most any request may ask for
DEFAULT_TABLE_LIMIT = 25
MAX_TABLE_LIMIT = 500
_MEDIA = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}

router = APIRouter(tags=["dashboard"], responses=problem_responses(401, 403, 422, 503))  # 403: a token without scope read
_state_lock = threading.Lock()


class Dashboard:
    """What the dashboard keeps per app: the study views and the importance cache."""

    def __init__(self, ctx: Any) -> None:
        self.store = DashboardStore(ctx.engine)
        self.importance = ImportanceCache()


def get_dashboard(request: Request) -> Dashboard:
    state = request.app.state
    dashboard = getattr(state, "dashboard", None)
    if dashboard is None:
        with _state_lock:
            dashboard = getattr(state, "dashboard", None) or Dashboard(state.ctx)
            state.dashboard = dashboard
    return dashboard


DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]


def _view(dashboard: Dashboard, name: str) -> StudyView:
    try:
        return dashboard.store.view(name)
    except StudyNotInStorage:
        raise not_found("name", name, "study", "list studies with GET /api/v1/studies") from None


# -- pages and assets -----------------------------------------------------------------------
@lru_cache(maxsize=1)
def _asset_version() -> str:
    """A digest of the static files: changes on upgrade, so long browser caching is safe."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _page(kind: str, title: str, *, preload_plotly: bool = False, **data: Any) -> HTMLResponse:
    _warm_plotly()
    data["plotly"] = _plotly_url()
    shell = (STATIC_DIR / "page.html").read_text()
    attributes = " ".join(f'data-{k}="{_escape(str(v))}"' for k, v in data.items())
    # The study page needs plotly for its charts: the browser fetches it while the page's
    # data loads; the page's script runs it only after the first render.
    preload = f'<link rel="preload" href="{_plotly_url()}" as="script">' if preload_plotly else ""
    slots = {"title": _escape(title), "page": kind, "data": attributes, "preload": preload, "v": _asset_version()}
    # One pass, so a study named "{{v}}" stays a name.
    html = re.sub(r"\{\{(\w+)\}\}", lambda m: slots[m.group(1)], shell)
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


@router.get("/", include_in_schema=False)
def studies_page() -> HTMLResponse:
    return _page("studies", "Studies · tuner")


@router.get("/studies/{name}", include_in_schema=False)
def study_page(name: str) -> HTMLResponse:
    return _page("study", f"{name} · tuner", preload_plotly=True, study=name)


@router.get("/studies/{name}/trials/{number}", include_in_schema=False)
def trial_page(name: str, number: int) -> HTMLResponse:
    return _page("trial", f"{name} #{number} · tuner", study=name, trial=number)


@router.get("/dashboard/static/{path:path}", include_in_schema=False)
def static_file(path: str) -> Response:
    target = (STATIC_DIR / path).resolve()
    if STATIC_DIR not in target.parents or not target.is_file():
        raise not_found("path", path, "dashboard file", "open the dashboard at /")
    return FileResponse(
        target,
        media_type=_MEDIA.get(target.suffix, "application/octet-stream"),
        headers={"Cache-Control": "public, max-age=31536000, immutable"},  # URLs carry ?v=<digest>
    )


def _plotly_path() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@lru_cache(maxsize=1)
def _plotly_url() -> str:
    """plotly.min.js's URL, versioned by the installed plotly (cheap: no read of the file),
    so the browser may cache it as immutable and a plotly upgrade gets a new URL."""
    import plotly

    return f"/dashboard/vendor/plotly.min.js?v={plotly.__version__}-{_plotly_path().stat().st_size}"


_plotly_lock = threading.Lock()
_plotly_bytes: tuple[bytes, bytes, str] | None = None
_warming = threading.Event()


def _plotly() -> tuple[bytes, bytes, str]:
    """plotly.min.js as installed by the `plotly` Python package (no CDN), plain and gzipped
    (computed once; a request arriving while the warm-up gzips waits for it, not redoes it)."""
    global _plotly_bytes
    with _plotly_lock:
        if _plotly_bytes is None:
            data = _plotly_path().read_bytes()
            _plotly_bytes = (data, gzip.compress(data, compresslevel=6), hashlib.sha256(data).hexdigest()[:16])
        return _plotly_bytes


def _warm_plotly() -> None:
    """Gzip plotly.min.js (~0.2 s of CPU, once per process) in the background when the first
    page is served, so the browser's request for it right after does not wait for that."""
    if not _warming.is_set():
        _warming.set()
        threading.Thread(target=_plotly, name="gzip-plotly", daemon=True).start()


@router.get("/dashboard/vendor/plotly.min.js", include_in_schema=False)
def plotly_js(request: Request) -> Response:
    data, zipped, etag = _plotly()
    # immutable: the page asks for it under a URL that carries plotly's version
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": f'"{etag}"', "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(zipped, media_type="text/javascript", headers={**headers, "Content-Encoding": "gzip"})
    return Response(data, media_type="text/javascript", headers=headers)


# -- read endpoints -------------------------------------------------------------------------
@router.get(f"{API}/studies", summary="studies with progress, best value and hardware, for the studies page")
def list_studies(
    ctx: ContextDep,
    session: SessionDep,
    dashboard: DashboardDep,
    _: ReaderDep,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    from api.services.studies import StudyService

    service = StudyService(ctx, session)
    rows, total = service.list(offset=offset, limit=limit, state=None, workload=None)
    items = []
    for row in rows:
        item: dict[str, Any] = {
            "name": row.name,
            "workload": row.workload,
            "mode": row.mode,
            "state": row.state,
            "reason": row.reason,
            "objectives": row.objectives,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "updated_at": row.updated_at.isoformat() if row.updated_at else None,
        }
        try:
            view = dashboard.store.view(row.name)
        except StudyNotInStorage:
            items.append(item | {"progress": None, "best": None, "hardware": None})
            continue
        top = views.best(view)
        hardware = views.hardware_summary(view)
        item |= {
            "objectives": view.objectives,
            "directions": view.directions,
            "progress": views.progress(view),
            "best": {"number": top.number, "value": views.objective_value(top)} if top else None,
            "pareto_size": len(views.pareto(view)) if len(view.directions) > 1 else None,
            "gain": views.gain(view, top),
            "gain_report": views.gain_report(view, top).to_dict(),
            "hardware": hardware["label"] if hardware else None,
            **views.times(view),
        }
        if serving.is_inference(view):
            # the serving best and its QPS-at-SLO ratio to the default, as the study page shows
            item |= serving.list_summary(view, dashboard.store.engine)
        items.append(item)
    return {"items": items, "total": total, "offset": offset, "limit": limit}


@router.get(f"{API}/studies/{{name}}", summary="one study's header, progress, best/Pareto set, gain and hardware", responses=problem_responses(404))
def study_summary(name: str, ctx: ContextDep, session: SessionDep, dashboard: DashboardDep, _: ReaderDep) -> dict[str, Any]:
    from api.services.studies import StudyService

    row = StudyService(ctx, session).get_row(name)
    view = _view(dashboard, name)
    top = views.best(view)
    front = views.pareto(view)
    shown_front = front[:50] if len(view.directions) > 1 else []
    configs = dashboard.store.configs(view, [*([top] if top else []), *shown_front])
    spec = view.spec
    return {
        "name": name,
        "revision": view.revision,
        "state": row.state,
        "mode": row.mode,
        "reason": row.reason,
        "workload": row.workload,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "objectives": view.objectives,
        "directions": view.directions,
        "sampler": spec.sampler if spec is not None else None,
        "pruner": spec.pruner if spec is not None else None,
        "memory_limit_bytes": spec.memory_limit_bytes if spec is not None else None,
        "space_params": views.parameter_names(view),
        # ask/tell: a running trial silent this long expires (tuner.asktell.expiry)
        "trial_timeout_s": getattr(spec, "trial_timeout_s", None) if row.mode == "ask_tell" else None,
        "measured": views.measured(view),
        "progress": views.progress(view),
        **views.times(view),
        "best": views.trial_brief(top, configs[top.number]) if top else None,
        "pareto": [views.trial_brief(t, configs[t.number]) for t in shown_front] if len(view.directions) > 1 else None,
        "pareto_size": len(front),
        "baseline": {
            "value": views.baseline_value(view),
            "config": view.attrs.get("tuner.baseline_config"),
            "status": (view.attrs.get("tuner.baseline") or {}).get("status") if isinstance(view.attrs.get("tuner.baseline"), dict) else None,
        },
        "gain": views.gain(view, top),
        # What the gain card shows, worded by tuner as `tuner tune` / `tuner best` word it.
        "gain_report": views.gain_report(view, top).to_dict(),
        "default_wins": views.default_wins(view, top),
        "hardware": views.hardware_summary(view),
        "unit": views.item_unit(view),
        # "inference": the page draws the serving views from /inference instead
        "kind": "inference" if serving.is_inference(view) else "training",
        # `tuner scaling`'s report: speedup and efficiency per world size (None: not measured)
        "scaling": scaling_summary(dashboard.store.scaling(view)),
    }


@router.get(f"{API}/studies/{{name}}/inference", summary="an inference study: QPS vs p99 with the SLO and Pareto front, serving columns, best vs default", responses=problem_responses(404))
def inference_study(name: str, dashboard: DashboardDep, _: ReaderDep) -> dict[str, Any]:
    view = _view(dashboard, name)
    if not serving.is_inference(view):
        raise not_found("name", name, "inference study", f"open /studies/{name}: it tunes training, see /api/v1/dashboard/studies/{name}/charts")
    return serving.study(view, dashboard.store.engine)


@router.get(f"{API}/studies/{{name}}/charts", summary="columnar, downsampled data for the history, scatter and parallel-coordinates plots", responses=problem_responses(404))
def study_charts(name: str, dashboard: DashboardDep, _: ReaderDep) -> dict[str, Any]:
    return views.charts(_view(dashboard, name))


@router.get(f"{API}/studies/{{name}}/trials", summary="one page of the trial table: sorted, filtered and paged on the server", responses=problem_responses(404))
def trial_table(
    name: str,
    dashboard: DashboardDep,
    _: ReaderDep,
    response: Response,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_TABLE_LIMIT)] = DEFAULT_TABLE_LIMIT,
    sort: str = "number",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
    status: str = "",
    q: Annotated[str, Query(max_length=500)] = "",
) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), time.thread_time()
    statuses = tuple(sorted({s.strip() for s in status.split(",") if s.strip()}))
    page = table_pages.table_page(
        _view(dashboard, name), offset=offset, limit=limit, sort=sort, descending=order == "desc", statuses=statuses, query=q
    )
    # What the server spent on this page (wall and CPU), for the browser's devtools and the
    # benchmark: tells the handler's own cost from time spent waiting for a busy machine.
    wall_ms, cpu_ms = (time.perf_counter() - started) * 1000, (time.thread_time() - cpu_started) * 1000
    response.headers["Server-Timing"] = f"table;dur={wall_ms:.1f}, cpu;dur={cpu_ms:.1f}"
    return page


@router.get(f"{API}/studies/{{name}}/importance", summary="parameter importance (Optuna's PED-ANOVA or fANOVA), cached", responses=problem_responses(404))
def importance(name: str, dashboard: DashboardDep, _: ReaderDep, evaluator: str = "ped_anova") -> dict[str, Any]:
    view = _view(dashboard, name)
    return {"revision": view.revision, **dashboard.importance.get(view, evaluator)}


@router.get(f"{API}/studies/{{name}}/curves", summary="learning curves: intermediate values or training loss per trial", responses=problem_responses(404))
def curves(name: str, dashboard: DashboardDep, _: ReaderDep, trials: str = "") -> dict[str, Any]:
    view = _view(dashboard, name)
    try:
        numbers = [int(n) for n in trials.split(",") if n.strip()]
    except ValueError:
        raise ApiProblem(422, "Invalid input", f"trials={trials!r}", [FieldProblem("trials", trials, "is not a list of trial numbers", "e.g. trials=3,17,42")]) from None
    chosen = views.curve_trials(view, numbers)
    found = dashboard.store.curves(chosen)
    return {
        "revision": view.revision,
        "curves": [{"number": n, **c, "status": next(t.status for t in chosen if t.number == n)} for n, c in sorted(found.items())],
    }


@router.get(f"{API}/studies/{{name}}/trials/{{number}}", summary="one trial: config, metrics, status with reason, curves, telemetry", responses=problem_responses(404))
def trial_detail(name: str, number: TrialNumber, ctx: ContextDep, session: SessionDep, dashboard: DashboardDep, _: ReaderDep) -> dict[str, Any]:
    from api.services.studies import StudyService

    view = _view(dashboard, name)
    row = StudyService(ctx, session).get_row_or_none(name)
    try:
        trial, result, intermediate, system = dashboard.store.trial_detail(view, number)
    except KeyError:
        raise not_found("number", number, "trial", f"open the study page /studies/{name}") from None
    reason = result.get("reason") or system.get("fail_reason")
    telemetry = result.get("telemetry") or {}
    top = views.best(view)
    profile = dashboard.store.trial_profile(view, number)
    if profile is not None:  # stored by `tuner profile --study`; trial.js renders its hotspots
        telemetry = {**telemetry, "profile": profile}
    return {
        "study": name,
        "number": trial.number,
        "state": trial.state,
        "status": trial.status,
        "kind": trial.kind,
        "reason": reason,
        "feasible": trial.feasible,
        "objectives": view.objectives,
        "values": list(trial.values) if trial.values else None,
        "params": trial.params,
        # ask/tell: the user's job applied only the sampled params; the page shows those
        "mode": row.mode if row is not None else None,
        "config": dashboard.store.configs(view, [trial])[trial.number],
        "baseline_config": view.attrs.get("tuner.baseline_config"),
        "baseline_value": views.baseline_value(view),
        # The best trial: the study card's figure (its confirmation); another: search time.
        "gain_report": views.gain_report(view, trial, top).to_dict(),
        "is_best": top is not None and top.number == trial.number,
        "result": {k: v for k, v in result.items() if k not in ("loss_curve", "lr_trace", "telemetry", "metrics", "notes")},
        "metrics": result.get("metrics") or {},
        "notes": result.get("notes") or [],
        "loss_curve": result.get("loss_curve") or [],
        "lr_trace": result.get("lr_trace") or [],
        "intermediate": {"step": list(intermediate), "value": list(intermediate.values())},
        "telemetry": telemetry,
        "rank_telemetry": views.rank_telemetry(telemetry),
        "launch_overhead": views.launch_overhead(telemetry),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "duration_s": trial.duration_s,
        "memory_limit_bytes": views.memory_limit_bytes(view),
        "neighbours": _neighbours(view, number),
        # a serving trial: its histograms, accuracy guard and notes (None for training)
        "inference": serving.trial(view, dashboard.store.engine, number) if serving.is_inference(view) else None,
    }


def _neighbours(view: StudyView, number: int) -> dict[str, int | None]:
    numbers = [t.number for t in view.ordered()]
    below = [n for n in numbers if n < number]
    above = [n for n in numbers if n > number]
    return {"previous": below[-1] if below else None, "next": above[0] if above else None}


@router.get(
    f"{API}/studies/{{name}}/export",
    summary="the best config (or Pareto set) as JSON, YAML or a torch snippet",
    responses={
        **problem_responses(404),
        200: {
            "description": "the document, as an attachment, in the format's media type",
            "content": {"application/yaml": {"schema": {"anyOf": [{"type": "object"}, {"type": "array"}]}}, "text/x-python": {"schema": {"type": "string"}}},
        },
    },
)
def export(
    name: str,
    dashboard: DashboardDep,
    _: ReaderDep,
    format: Annotated[str, Query(pattern="^(json|yaml|torch)$")] = "json",
    which: Annotated[str, Query(pattern="^(best|pareto)$")] = "best",
) -> PlainTextResponse:
    # The service's renderer (tuner/export.py when present), fed from the cached view: the
    # service's own /best reads every trial through Optuna, seconds at 10,000 trials.
    from api.schemas import TrialSummary
    from api.services.result_export import render

    view = _view(dashboard, name)
    chosen = views.pareto(view) if which == "pareto" else [t for t in [views.best(view)] if t is not None]
    if not chosen:
        raise ApiProblem(404, "No result yet", f"study {name!r} has no completed trial within its constraints yet", [FieldProblem("study", name, "has no completed feasible trial yet", "wait for trials to complete, or resume the study")], retryable=True)
    configs = dashboard.store.configs(view, chosen)
    summaries = [
        TrialSummary(
            number=t.number,
            values=[v for v in t.values if v is not None] if t.values else None,
            config=configs[t.number],
            metrics={k: v for k, v in t.result.items() if isinstance(v, (int, float))},
            # named as the REST answers name them, so the export is the same text (tuner.export)
            hparams=view.spec.space.hparams_of(t.params) if view.spec is not None else hparams_among(t.params),
            objective_values=dict(zip(view.spec.objective_names, t.values, strict=False)) if view.spec is not None and t.values else None,
        )
        for t in chosen
    ]
    content = render(name, summaries, format)  # type: ignore[arg-type]
    suffix = {"json": "json", "yaml": "yaml", "torch": "py"}[format]
    media = {"json": "application/json", "yaml": "application/yaml", "torch": "text/x-python"}[format]
    return PlainTextResponse(content, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}-{which}.{suffix}"'})


@router.get(f"{API}/presets", summary="search spaces for the new-study form: presets and each replay table's own space")
def presets(ctx: ContextDep, _: ReaderDep) -> list[dict[str, Any]]:
    import yaml

    from tuner.replay.table import load_table
    from tuner.space.presets import list_presets, preset_path
    from tuner.workloads.replay import replay_space

    # A replay study only answers configs its table measured, so its natural space is the
    # table's own (referred to by the table's registered name, never by a path).
    out: list[dict[str, Any]] = [
        {
            "name": f"replay-{table}",
            "label": f"replay table {table}: every measured config",
            "workload": "replay",
            "table": table,
            # The description would carry the server's file path; say the table's name instead.
            "text": yaml.safe_dump(
                {**replay_space(load_table(path)).to_dict(), "description": f"every config measured in replay table {table}"},
                sort_keys=False,
            ),
        }
        for table, path in sorted(ctx.settings.replay_tables.items())
    ]
    for name in list_presets():
        out.append({"name": name, "label": f"preset {name}", "workload": None, "table": None, "text": preset_path(name).read_text()})
    return out

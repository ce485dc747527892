"""The app factory: builds the service context and wires the routers. Nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from api.access import endpoint_rules
from api.auth import TokenVerifier
from api.context import ServiceContext
from api.dashboard import router as dashboard
from api.db.engine import make_engine, make_session_factory, use_sqlite_pragmas
from api.db.migrate import ensure_schema_current
from api.deps import authorize
from api.limits import BodySizeLimit
from api.openapi_doc import install_openapi
from api.problems import install_handlers
from api.routes import catalog, health, studies, tokens
from api.runtime.gc_policy import freeze_after_startup, freeze_long_lived
from api.settings import Settings
from tuner import __version__
from tuner.asktell.service import AskTellService

API_PREFIX = "/api/v1"


def build_context(settings: Settings) -> ServiceContext:
    """Open the database (refusing an outdated schema) and everything that lives on it."""
    from tuner.storage.rdb import open_storage

    ensure_schema_current(settings.storage)
    engine = make_engine(settings.storage)
    sessions = make_session_factory(engine)
    storage = open_storage(settings.storage)
    if settings.is_sqlite:
        use_sqlite_pragmas(storage.engine)
    return ServiceContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        storage=storage,
        tokens=TokenVerifier(sessions, settings.token_cache_s),
        asktell=AskTellService(
            storage,
            synchronous_commit=settings.pg_synchronous_commit,
            writer_process=settings.writer_process,
            sampler_process=settings.sampler_process,
            # each study's hot copy lives as long as the server: out of the GC's full passes
            on_study_loaded=freeze_long_lived,
        ),
    )


def _telemetry_option(enabled: bool) -> dict[str, object]:
    """FastAPI >= 0.16x checks on every request whether an OpenTelemetry provider is set
    (~5% of an ask/tell request's CPU here); turned off unless `opentelemetry` is on.
    Older FastAPI versions have no such option and no such cost."""
    import inspect

    if enabled or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = build_context(settings)  # fails here, before serving, when the schema is old

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_studies:
            from api.runtime.study_runner import StudyRunner

            runner = StudyRunner(settings, ctx.sessions, ctx.storage)
            runner.start()
            ctx.runner = runner
        from api.runtime.asktell_expiry import TrialExpirySweeper

        # every server sweeps, whether or not it runs studies: ask/tell needs no runner
        sweeper = TrialExpirySweeper(ctx)
        sweeper.start()
        freeze_after_startup()  # after the runner started: its imports are start-up too
        try:
            yield
        finally:
            sweeper.stop()
            ctx.close()

    app = FastAPI(
        title="tuner",
        version=__version__,
        summary="Finds the fastest, best training configuration on the real hardware.",
        lifespan=lifespan,
        **_telemetry_option(settings.opentelemetry),
    )
    app.state.ctx = ctx
    install_handlers(app)
    install_openapi(app, settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Every route runs `authorize`, which applies the route's rule from api.access.ROUTE_RULES.
    v1 = APIRouter(prefix=API_PREFIX, dependencies=[Depends(authorize)])
    v1.include_router(health.router)
    v1.include_router(studies.router)
    v1.include_router(catalog.router)
    v1.include_router(tokens.router)
    app.include_router(v1)
    # the web dashboard: pages at /, reads under /api/v1/dashboard
    app.include_router(dashboard.router, dependencies=[Depends(authorize)])
    # (method, endpoint) -> rule; raises, so the server does not start, if a route has none
    app.state.route_rules = endpoint_rules(app)
    return app

"""/api/v1/workloads, /api/v1/spaces/validate, /api/v1/hardware."""

from __future__ import annotations

import json
import socket

from fastapi import APIRouter

from api.db.models import HardwareProfileRow, utcnow
from api.deps import ContextDep, ReaderDep, SessionDep, WriterDep
from api.problems import not_found, problem_responses
from api.repositories import hardware as hardware_repo
from api.schemas import HardwareRead, SpaceValidate, SpaceValidation, WorkloadRead
from api.services.space_io import parse_space
from tuner.errors import ValidationError
from tuner.workloads import get_workload, list_workload_names

router = APIRouter(tags=["catalog"], responses=problem_responses(401, 403, 503))  # 403: a scope the token lacks (api.access)


def _workload_read(name: str, tables: list[str]) -> WorkloadRead:
    described = get_workload(name).describe()
    return WorkloadRead(**described, replay_tables=tables if name == "replay" else None)


@router.get("/workloads", response_model=list[WorkloadRead], summary="registered workloads and their parameters")
def list_workloads(ctx: ContextDep, _: ReaderDep) -> list[WorkloadRead]:
    tables = sorted(ctx.settings.replay_tables)
    return [_workload_read(name, tables) for name in list_workload_names()]


@router.get("/workloads/{name}", response_model=WorkloadRead, responses=problem_responses(404, 422))
def get_workload_info(name: str, ctx: ContextDep, _: ReaderDep) -> WorkloadRead:
    if name not in list_workload_names():
        raise not_found("name", name, "workload", "use one of: " + ", ".join(list_workload_names()))
    return _workload_read(name, sorted(ctx.settings.replay_tables))


@router.post("/spaces/validate", response_model=SpaceValidation, summary="check a search space; returns every problem", responses=problem_responses(400, 413, 422))
def validate_space(body: SpaceValidate, _: ReaderDep) -> SpaceValidation:
    try:
        space = parse_space(body.space)
    except ValidationError as exc:
        return SpaceValidation(valid=False, problems=[p.as_dict() for p in exc.problems], space=None)
    return SpaceValidation(valid=True, problems=[], space=space.to_dict())


def _probe_and_store(session: SessionDep) -> HardwareRead:
    from tuner.hardware.probe import probe

    host = socket.gethostname()
    profile = probe().to_dict()
    row = hardware_repo.add(session, HardwareProfileRow(host=host, profile_json=json.dumps(profile), probed_at=utcnow()))
    session.commit()
    return HardwareRead(host=row.host, probed_at=row.probed_at, profile=profile)


@router.get("/hardware", response_model=HardwareRead, summary="the latest probe of the server's machine (probes once if none)")
def hardware(session: SessionDep, _: ReaderDep) -> HardwareRead:
    row = hardware_repo.latest(session, socket.gethostname())
    if row is None:
        return _probe_and_store(session)
    return HardwareRead(host=row.host, probed_at=row.probed_at, profile=json.loads(row.profile_json))


@router.post("/hardware/probe", response_model=HardwareRead, summary="probe the server's machine again")
def reprobe(session: SessionDep, _: WriterDep) -> HardwareRead:
    return _probe_and_store(session)

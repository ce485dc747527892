"""Errors as RFC 9457 `application/problem+json`, each naming the field, the value and the fix.

Every error the API returns goes through this module: tuner's own `ValidationError`s
(422), request-shape errors from FastAPI/pydantic (422), unknown things (404, including
tuner's `TrialNotFoundError`), conflicts (409: tuner's `ConflictError`s from the ask/tell
engine, database `IntegrityError`s), auth (401/403), body size (413).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import Problem
from tuner.errors import (
    ConflictError,
    FieldProblem,
    NotAskTellStudyError,
    ServiceUnavailableError,
    StudyNotFoundError,
    TrialNotFoundError,
    TunerError,
    ValidationError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("tuner.api")

#: What each error status means in this API, as the OpenAPI schema documents it.
PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "the body is not UTF-8 JSON, or the request failed for a reason the problem names",
    401: "no bearer token where one is needed, a malformed Authorization header, or an unknown or revoked token",
    403: "the token may not do this",
    404: "no such study, trial or workload",
    409: "valid, but the study's state refuses it now: a name already taken, a stopped study, a trial already told, not an ask/tell study",
    413: "the request body is over the server's max_body_bytes",
    422: "a body field, query or path parameter is invalid; each problem names the field, the value and the fix",
    503: "the database did not answer; retry later (retryable: true)",
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router or a route: each code answered as problem+json
    (api.openapi_doc moves these bodies from application/json to problem+json)."""
    return {code: {"model": Problem, "description": PROBLEM_DESCRIPTIONS[code]} for code in codes}


class ApiProblem(Exception):
    """An error answer: HTTP status, a short title, and the field problems behind it."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        problems: list[FieldProblem] | None = None,
        *,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.problems = problems or []
        self.retryable = retryable
        self.headers = headers


def not_found(field: str, value: object, what: str, fix: str) -> ApiProblem:
    return ApiProblem(404, "Not found", f"no {what} {value!r}", [FieldProblem(field, value, f"no such {what}", fix)])


def conflict(field: str, value: object, problem: str, fix: str) -> ApiProblem:
    return ApiProblem(409, "Conflict", f"{field}={value!r} {problem}", [FieldProblem(field, value, problem, fix)])


def invalid(problems: list[FieldProblem]) -> ApiProblem:
    return ApiProblem(422, "Invalid input", "; ".join(str(p) for p in problems), problems)


def json_safe(value: object) -> object:
    """`value` as something `json.dumps(allow_nan=False)` always takes: the bad input a
    problem names is often exactly what JSON cannot hold (NaN, Infinity, bytes), so such a
    value is shown as a string instead of failing the answer that reports it."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    try:
        return repr(value)
    except Exception:  # a repr that raises: still say something
        return f"<{type(value).__name__}>"


def _field_problem(p: FieldProblem) -> dict[str, object]:
    # built here, not with FieldProblem.as_dict: that one calls repr() on odd values unguarded
    return {"field": str(p.field), "value": json_safe(p.value), "problem": str(p.problem), "fix": str(p.fix), "source": p.source if p.source is None else str(p.source)}


def problem_response(problem: ApiProblem) -> JSONResponse:
    """The one renderer of every error answer. It cannot fail: a renderer that raises turns
    a 4xx into a 500 text/plain and a reset connection."""
    try:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": str(problem.title),
            "status": problem.status,
            "detail": str(problem.detail),
            "retryable": bool(problem.retryable),
            "problems": [_field_problem(p) for p in problem.problems],
        }
        return JSONResponse(body, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=problem.headers)
    except Exception:  # something in the problem itself cannot be shown: answer with what is certain
        log.exception("could not render a problem answer")
        plain = {"type": "about:blank", "title": "Invalid input" if problem.status == 422 else "Error", "status": problem.status, "detail": "the problem could not be rendered", "retryable": False, "problems": []}
        return JSONResponse(plain, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=problem.headers)


def _field_of(error: dict[str, Any]) -> str:
    """`("body", "values", "list[float]", 0)` -> `values.0`: the request part and pydantic's
    union-member tags are not fields a client sent. A free-form object's own check
    (api.schemas.JsonObject) adds the path inside the field in ctx["path"]."""
    parts = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
    field = ".".join(p for p in parts if "[" not in p)
    inner = str((error.get("ctx") or {}).get("path", ""))
    if inner:
        field = f"{field}{inner}" if inner.startswith("[") or not field else f"{field}.{inner}"
    return field or "body"


def _from_request_validation(exc: RequestValidationError) -> ApiProblem:
    problems = []
    for error in exc.errors():
        ctx = error.get("ctx") or {}
        problems.append(
            FieldProblem(
                _field_of(error),
                ctx["value"] if "path" in ctx else error.get("input"),
                error.get("msg", "is invalid"),
                _fix_for(error),
            )
        )
    return invalid(problems)


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
#: Fixes that say more than a pattern or a bound can.
_FIELD_FIXES = {
    "device": "use exactly auto, cpu, cuda or cuda:N (N a GPU index)",
    "seed": "use a seed from 0 to 2**32 - 1 = 4294967295 (Optuna's range)",
}


def _fix_for(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    field = _field_of(error)
    if field in _FIELD_FIXES and kind not in ("missing", "extra_forbidden"):
        return _FIELD_FIXES[field]
    ctx = error.get("ctx") or {}
    if kind == "finite_number":
        return "send a finite number: JSON has no NaN or Infinity, and a literal like 1e309 overflows to Infinity"
    if kind == "int64_range":
        return "send an integer within int64 (-2**63 to 2**63 - 1)"
    if kind in ("json_invalid", "json_type"):
        return "send a valid JSON body (application/json)"
    if kind == "missing":
        return "add this field"
    if kind == "extra_forbidden":
        return "remove this field; see the schema at /docs"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return "use a value " + ", ".join(f"{_BOUNDS[k]} {v}" for k, v in ctx.items() if k in _BOUNDS)
    if kind == "string_pattern_mismatch":
        return f"match the pattern {ctx.get('pattern')}"
    if kind == "literal_error":
        return f"use {ctx.get('expected')}"
    return "see the schema at /docs"


def install_handlers(app: FastAPI) -> None:
    """Map every error to problem+json in one place."""

    @app.exception_handler(ApiProblem)
    async def _api_problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(ValidationError)
    async def _tuner_validation(_: Request, exc: ValidationError) -> JSONResponse:
        return problem_response(invalid(exc.problems))

    @app.exception_handler(StudyNotFoundError)
    async def _study_missing(_: Request, exc: StudyNotFoundError) -> JSONResponse:
        return problem_response(
            ApiProblem(404, "Not found", str(exc), [FieldProblem("study", None, str(exc), "list studies with GET /api/v1/studies")])
        )

    @app.exception_handler(TrialNotFoundError)
    async def _trial_missing(_: Request, exc: TrialNotFoundError) -> JSONResponse:
        return problem_response(ApiProblem(404, "Not found", str(exc), exc.problems, retryable=exc.retryable))

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        title = "Not an ask/tell study" if isinstance(exc, NotAskTellStudyError) else "Conflict"
        return problem_response(ApiProblem(409, title, str(exc), exc.problems, retryable=exc.retryable))

    @app.exception_handler(TunerError)
    async def _tuner_error(_: Request, exc: TunerError) -> JSONResponse:
        return problem_response(ApiProblem(400, "Request failed", str(exc), retryable=exc.retryable))

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(_from_request_validation(exc))

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # A unique or foreign-key constraint lost a race with another request.
        return problem_response(
            ApiProblem(409, "Conflict", f"the database refused the change: {exc.orig}", retryable=False)
        )

    @app.exception_handler(ServiceUnavailableError)
    async def _unavailable(_: Request, exc: ServiceUnavailableError) -> JSONResponse:
        # e.g. the ask/tell writer's process could not open the database (an outage when it
        # started): the same as a database error, never a 500. The cause (which may name the
        # database URL) goes to the log, not to the caller.
        log.warning("unavailable: %s", exc)
        return problem_response(
            ApiProblem(503, "Database unavailable", "the database did not answer; retry later", retryable=True)
        )

    @app.exception_handler(OperationalError)
    async def _operational(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return problem_response(
            ApiProblem(503, "Database unavailable", "the database did not answer; retry later", retryable=True)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not an input problem; still answered as problem+json, not a bare text/plain
        # 500 (Starlette logs the traceback and re-raises after this answer is sent).
        return problem_response(ApiProblem(500, "Internal error", f"the server failed: {type(exc).__name__}", retryable=False))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        problems = []
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            # FastAPI's answer to a body that is not UTF-8 JSON: say which field and the fix
            problems = [FieldProblem("body", None, "is not valid UTF-8 JSON", "send a UTF-8 JSON body with Content-Type: application/json")]
        # keep the exception's headers: a 405 must say Allow, a 401 WWW-Authenticate
        return problem_response(ApiProblem(exc.status_code, str(exc.detail), str(exc.detail), problems, headers=exc.headers))

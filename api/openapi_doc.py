"""The served OpenAPI schema, finished: every error answer as `application/problem+json`,
and the limits that are server settings (page size, body size) written into it.

Routes declare their error answers with `api.problems.problem_responses(...)`; FastAPI
can only put a model's schema under the route's own media type (application/json), so
this module moves each error body to problem+json once, when the schema is first built.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.problems import PROBLEM_MEDIA_TYPE
from api.settings import Settings

_PROBLEM_REF = "#/components/schemas/Problem"


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
            )
            app.openapi_schema = finish(schema, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                body = content.get("application/json")
                if status[:1] in "45" and body and body.get("schema", {}).get("$ref") == _PROBLEM_REF:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
                if status == "413":
                    response["description"] = f"the request body is over {settings.max_body_bytes} bytes (server setting max_body_bytes)"
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and parameter.get("name") == "limit" and not path.startswith("/api/v1/dashboard"):
                    _bound_page_size(parameter, settings.max_page_size)
                if parameter.get("in") == "query" and parameter.get("name") == "raw":
                    _document_raw(operation)
    # FastAPI's own 422 body is never sent here (api.problems answers every 422); drop it
    # when no route refers to it.
    text = repr(schema.get("paths"))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}'" not in text:
            schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema


def _bound_page_size(parameter: dict[str, Any], maximum: int) -> None:
    """The page-size maximum is a server setting, so the schema states this server's value."""
    target = parameter.get("schema", {})
    for option in target.get("anyOf", [target]):
        if option.get("type") == "integer":
            option["maximum"] = maximum
    parameter["description"] = f"page size, 1 to {maximum} (server setting max_page_size)"


def _document_raw(operation: dict[str, Any]) -> None:
    """`?raw=true` (best, pareto) answers the rendered document itself, not the wrapper
    model: JSON (an object, or a list for several configs), YAML or a torch snippet."""
    ok = operation.get("responses", {}).get("200")
    if not ok:
        return
    content = ok.setdefault("content", {})
    wrapped = content.get("application/json", {}).get("schema")
    if wrapped is not None:
        raw_json = {"anyOf": [{"type": "object"}, {"type": "array"}], "description": "raw=true&format=json: the config document itself"}
        content["application/json"] = {"schema": {"anyOf": [wrapped, raw_json]}}
    document = {"anyOf": [{"type": "object"}, {"type": "array"}]}
    content["application/yaml"] = {"schema": {**document, "description": "raw=true&format=yaml: the config document itself"}}
    content["text/x-python"] = {"schema": {"type": "string", "description": "raw=true&format=torch"}}
    ok["description"] = "the export; with raw=true the rendered document itself, in the format's media type"

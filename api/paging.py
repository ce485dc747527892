"""Paging and trial-number parameters, bounded so no number reaches SQL out of range.

An offset beyond int64 overflows the database's BIGINT (a 500 from SQLite's driver); the
bounds here turn it into a 422 that names the parameter. The page-size maximum is a server
setting, so the OpenAPI schema gets it when the app is built (api.openapi_doc).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from api.deps import ContextDep
from api.problems import ApiProblem
from api.schemas import INT64_MAX
from tuner.errors import FieldProblem


class PageParams:
    def __init__(self, offset: int, limit: int) -> None:
        self.offset = offset
        self.limit = limit


def get_page(
    ctx: ContextDep,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX, description="items to skip")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="page size; at most the server's max_page_size")] = None,
) -> PageParams:
    settings = ctx.settings
    if limit is None:
        limit = min(settings.default_page_size, settings.max_page_size)
    if limit > settings.max_page_size:
        raise ApiProblem(
            422,
            "Invalid input",
            f"limit={limit} is above the page size limit",
            [FieldProblem("limit", limit, f"is above the page size limit {settings.max_page_size}", f"use limit <= {settings.max_page_size} and page with offset")],
        )
    return PageParams(offset, limit)


PageDep = Annotated[PageParams, Depends(get_page)]
#: A trial number in a path: never negative, within int64.
TrialNumber = Annotated[int, Path(ge=0, le=INT64_MAX, description="the trial's number within its study")]
#: An offset in a query: within int64.
Offset = Annotated[int, Query(ge=0, le=INT64_MAX)]

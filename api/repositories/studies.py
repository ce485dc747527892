"""Queries on `tuner_studies` and reads of Optuna's tables. Flush only; services commit."""

from __future__ import annotations

import json
from functools import lru_cache

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session

from api.db.models import StudyRow
from tuner.study.attrs import StudyAttr
from tuner.study.results import spec_from_attr
from tuner.study.spec import StudySpec


def get_by_name(session: Session, name: str) -> StudyRow | None:
    return session.scalar(select(StudyRow).where(StudyRow.name == name))


def page(
    session: Session, *, offset: int, limit: int, state: str | None, workload: str | None
) -> tuple[list[StudyRow], int]:
    query = select(StudyRow)
    if state is not None:
        query = query.where(StudyRow.state == state)
    if workload is not None:
        query = query.where(StudyRow.workload == workload)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(StudyRow.id).offset(offset).limit(limit)).all()
    return list(rows), total


def spec_of(session: Session, name: str) -> StudySpec | None:
    """Study `name`'s spec, from its one stored copy: Optuna's study user attr `tuner.spec`.

    None for a study tuner did not create (plain Optuna) or one without a readable spec.
    The attr (not a column of ours) is what the CLI, `tuner worker`, optuna-dashboard and
    `optuna.load_study` see, and what a resumed CLI study updates (n_trials, timeout).
    """
    raw = session.scalar(
        text(
            "SELECT a.value_json FROM study_user_attributes a JOIN studies s ON s.study_id = a.study_id "
            "WHERE s.study_name = :name AND a.key = :key"
        ),
        {"name": name, "key": str(StudyAttr.SPEC)},
    )
    return None if raw is None else _parsed_spec(raw)


@lru_cache(maxsize=256)
def _parsed_spec(value_json: str) -> StudySpec | None:
    # Keyed by the stored text: listing studies reads every spec on each request, and a
    # spec changes only when a study is resumed (then the text differs). StudySpec is frozen.
    try:
        value = json.loads(value_json)
    except ValueError:
        return None
    return spec_from_attr(value)


def names(session: Session) -> set[str]:
    return set(session.scalars(select(StudyRow.name)).all())


def add(session: Session, row: StudyRow) -> StudyRow:
    session.add(row)
    session.flush()
    return row


def delete(session: Session, row: StudyRow) -> None:
    session.delete(row)
    session.flush()


def optuna_study_names(session: Session) -> list[str]:
    """Studies in Optuna's own table (created by the CLI, the service or anyone else)."""
    return list(session.scalars(text("SELECT study_name FROM studies ORDER BY study_id")).all())


def trial_state_counts(session: Session, names: list[str]) -> dict[str, dict[str, int]]:
    """{study name: {Optuna state: count}} in one query over Optuna's tables."""
    if not names:
        return {}
    rows = session.execute(
        text(
            "SELECT s.study_name, t.state, COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name IN :names GROUP BY s.study_name, t.state"
        ).bindparams(bindparam("names", expanding=True)),
        {"names": names},
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for name, state, count in rows:
        counts.setdefault(name, {})[str(state).split(".")[-1]] = int(count)
    return counts

"""Stored hardware probes. Flush only."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import HardwareProfileRow


def latest(session: Session, host: str) -> HardwareProfileRow | None:
    return session.scalar(
        select(HardwareProfileRow)
        .where(HardwareProfileRow.host == host)
        .order_by(HardwareProfileRow.probed_at.desc(), HardwareProfileRow.id.desc())
        .limit(1)
    )


def add(session: Session, row: HardwareProfileRow) -> HardwareProfileRow:
    session.add(row)
    session.flush()
    return row

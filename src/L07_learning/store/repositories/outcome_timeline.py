"""What the console's outcomes page reads besides each model's series: which models have scored outcomes in a window,
and their releases and rollbacks (stage-history rows) in it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import SqlModelOutcome, SqlModelStageHistory


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


async def models_with_outcomes(session: AsyncSession, since: datetime, until: datetime, limit: int) -> list[str]:
    """Model ids (or external names) with scored outcomes completed in ``[since, until)``, busiest first."""
    n = func.count()
    rows = await session.execute(
        select(SqlModelOutcome.model_id, n).where(
            SqlModelOutcome.model_id.is_not(None), SqlModelOutcome.completed_at >= since,
            SqlModelOutcome.completed_at < until)
        .group_by(SqlModelOutcome.model_id).order_by(n.desc(), SqlModelOutcome.model_id).limit(limit))
    return [r[0] for r in rows.all()]


async def production_transitions(session: AsyncSession, model_ids: list[str], since: datetime,
                                 until: datetime) -> list[dict[str, Any]]:
    """Stage-history rows into or inside PRODUCTION of ``model_ids`` in the window, oldest first."""
    if not model_ids:
        return []
    h = SqlModelStageHistory
    rows = await session.execute(
        select(h.model_id, h.from_stage, h.to_stage, h.serving_state, h.actor, h.notes, h.created_at)
        .where(h.model_id.in_(model_ids), h.to_stage == "PRODUCTION", h.created_at >= since, h.created_at < until)
        .order_by(h.created_at, h.id))
    return [{**dict(r._mapping), "created_at": _utc(r.created_at)} for r in rows.all()]

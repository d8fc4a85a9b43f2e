"""Read-only numbers for ``/health``'s component block: outbox lag, worker heartbeats, leases, paused policies."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ...models.training_job import TERMINAL_JOB_STATES
from ..tables import SqlLease, SqlLoopPolicy, SqlOutboxEvent, SqlTrainingJob


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


async def outbox_lag(session: AsyncSession) -> tuple[int, datetime | None]:
    """Events not yet delivered to every sink, and when the oldest of them was written."""
    pending = SqlOutboxEvent.delivered_at.is_(None)
    n = int(await session.scalar(select(func.count()).select_from(SqlOutboxEvent).where(pending)) or 0)
    oldest = await session.scalar(select(func.min(SqlOutboxEvent.created_at)).where(pending))
    return n, _utc(oldest)


async def job_heartbeats(session: AsyncSession) -> list[dict[str, Any]]:
    """Claimed, unfinished jobs with their worker and last heartbeat."""
    terminal = [s.value for s in TERMINAL_JOB_STATES]
    rows = await session.execute(
        select(SqlTrainingJob.job_id, SqlTrainingJob.status, SqlTrainingJob.worker_id, SqlTrainingJob.heartbeat_at)
        .where(SqlTrainingJob.worker_id.isnot(None), SqlTrainingJob.status.notin_(terminal)))
    return [{"job_id": j, "status": s, "worker_id": w, "heartbeat_at": _utc(h)} for j, s, w, h in rows.all()]


async def leases(session: AsyncSession) -> list[dict[str, Any]]:
    rows = await session.execute(select(SqlLease.name, SqlLease.holder, SqlLease.expires_at))
    return [{"name": n, "holder": h, "expires_at": _utc(e)} for n, h, e in rows.all()]


async def paused_policies(session: AsyncSession) -> list[str]:
    rows = await session.scalars(select(SqlLoopPolicy.policy).where(
        (SqlLoopPolicy.paused.is_(True)) | (SqlLoopPolicy.breaker_state == "OPEN")))
    return list(rows.all())

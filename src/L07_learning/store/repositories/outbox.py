"""Outbox rows: add in the caller's transaction; list, acknowledge and retry for the relay."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ..tables import SqlOutboxDelivery, SqlOutboxEvent


class OutboxRepository:
    """Data access for ``l07_outbox`` and its per-sink deliveries."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, event: dict[str, Any], subject: str | None = None) -> None:
        self.session.add(
            SqlOutboxEvent(event_id=event["id"], event_type=event["type"], subject=subject, payload=event, created_at=utcnow())
        )

    async def claim_due(self, limit: int = 100, lease_s: float = 60.0, now: datetime | None = None) -> list[SqlOutboxEvent]:
        """Claim undelivered events whose next attempt is due, oldest first, for ``lease_s`` seconds.

        Every long-running process relays (``l07 run``, ``serve``, ``worker``); a claim is a conditional update of
        ``next_attempt_at``, so two relays never deliver the same row at once. A relay that dies mid-delivery leaves
        the row to be claimed again when its lease runs out (at-least-once; per-sink acknowledgements skip the sinks
        already done).
        """
        now = now or utcnow()
        due = (SqlOutboxEvent.delivered_at.is_(None)) & (
            (SqlOutboxEvent.next_attempt_at.is_(None)) | (SqlOutboxEvent.next_attempt_at <= now))
        # PostgreSQL skips rows another relay holds (SKIP LOCKED; SQLite serialises writers and ignores the clause);
        # candidates beyond ``limit`` cover rows another relay claimed between this select and the update.
        ids = (await self.session.scalars(
            select(SqlOutboxEvent.id).where(due).order_by(SqlOutboxEvent.id).limit(limit * 3)
            .with_for_update(skip_locked=True))).all()
        claimed: list[int] = []
        for row_id in ids:
            if len(claimed) == limit:
                break
            result = await self.session.execute(
                update(SqlOutboxEvent).where(SqlOutboxEvent.id == row_id).where(due)
                .values(next_attempt_at=now + timedelta(seconds=lease_s)))
            if result.rowcount == 1:
                claimed.append(row_id)
        if not claimed:
            return []
        return list((await self.session.scalars(
            select(SqlOutboxEvent).where(SqlOutboxEvent.id.in_(claimed)).order_by(SqlOutboxEvent.id))).all())

    async def release(self, event_ids: list[str]) -> None:
        """Give claimed, undelivered events back (due now)."""
        await self.session.execute(
            update(SqlOutboxEvent).where(SqlOutboxEvent.event_id.in_(event_ids))
            .where(SqlOutboxEvent.delivered_at.is_(None)).values(next_attempt_at=None))

    async def delivered_sinks(self, event_id: str) -> set[str]:
        rows = await self.session.scalars(select(SqlOutboxDelivery.sink).where(SqlOutboxDelivery.event_id == event_id))
        return set(rows.all())

    def mark_sink_delivered(self, event_id: str, sink: str) -> None:
        self.session.add(SqlOutboxDelivery(event_id=event_id, sink=sink, delivered_at=utcnow()))

    async def mark_delivered(self, event_id: str) -> None:
        row = await self.session.scalar(select(SqlOutboxEvent).where(SqlOutboxEvent.event_id == event_id))
        if row is not None:
            row.delivered_at = utcnow()

    async def mark_failed(self, event_id: str, error: str, backoff_s: float) -> None:
        row = await self.session.scalar(select(SqlOutboxEvent).where(SqlOutboxEvent.event_id == event_id))
        if row is not None:
            row.attempts += 1
            row.last_error = error[:2000]
            row.next_attempt_at = utcnow() + timedelta(seconds=backoff_s)

    async def pending_count(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(SqlOutboxEvent).where(SqlOutboxEvent.delivered_at.is_(None))) or 0)

    async def list(self, event_type: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        stmt = select(SqlOutboxEvent).order_by(SqlOutboxEvent.id.desc()).limit(limit)
        if event_type:
            stmt = stmt.where(SqlOutboxEvent.event_type == event_type)
        return [
            {"event": r.payload, "delivered_at": r.delivered_at, "attempts": r.attempts, "last_error": r.last_error}
            for r in (await self.session.scalars(stmt)).all()
        ]

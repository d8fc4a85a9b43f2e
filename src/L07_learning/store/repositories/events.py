"""Processed-event keys (idempotency, contract §1.8) and rejected events (contract §1.9)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ..tables import SqlProcessedEvent, SqlRejectedEvent
from ._upsert import chunks, insert_ignore


@dataclass(frozen=True)
class RejectedEvent:
    """One event refused at ingestion, with its E70xx code and raw payload."""

    id: int
    event_id: str | None
    source: str | None
    event_type: str | None
    code: str
    reason: str
    transport: str
    raw_payload: str
    created_at: datetime


class ProcessedEventRepository:
    """The ``(source, id)`` keys of every event L07 has already handled."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(self, keys: list[tuple[str, str, str, str]]) -> set[tuple[str, str]]:
        """Record ``(source, event_id, event_type, result)`` keys; return the ``(source, event_id)`` pairs that were new.

        A key already stored (by an earlier run or a concurrent consumer) is not returned, so its event is a no-op.
        One exception: a key held by a *rejected* event is taken over by a valid event (result other than
        ``rejected``). Otherwise anyone could send an invalid event under another producer's ``(source, id)`` first
        and have the real event dropped as a duplicate; a replayed invalid event still finds its key and is a no-op.
        """
        if not keys:
            return set()
        now = utcnow()
        table = SqlProcessedEvent.__table__
        claimed: set[tuple[str, str]] = set()
        for part in chunks(keys):
            stmt = insert_ignore(self.session, table).returning(table.c.source, table.c.event_id)
            rows = [{"source": s, "event_id": i, "event_type": t, "result": r, "processed_at": now} for s, i, t, r in part]
            result = await self.session.execute(stmt, rows)
            claimed.update((row[0], row[1]) for row in result.all())
        valid_taken = [k for k in keys if k[3] != "rejected" and (k[0], k[1]) not in claimed]
        if valid_taken:
            claimed |= await self._take_over_rejected(valid_taken, now)
        return claimed

    async def _take_over_rejected(self, keys: list[tuple[str, str, str, str]], now: datetime) -> set[tuple[str, str]]:
        table = SqlProcessedEvent.__table__
        held: set[tuple[str, str]] = set()
        for part in chunks(keys):
            stmt = select(table.c.source, table.c.event_id).where(
                tuple_(table.c.source, table.c.event_id).in_([(s, i) for s, i, _, _ in part]),
                table.c.result == "rejected")
            held.update((r[0], r[1]) for r in (await self.session.execute(stmt)).all())
        taken: set[tuple[str, str]] = set()
        for source, event_id, event_type, result in keys:
            if (source, event_id) not in held:
                continue
            # The result condition is re-checked under the row lock: of two consumers racing, one takes the key.
            stmt = (update(table)
                    .where(and_(table.c.source == source, table.c.event_id == event_id, table.c.result == "rejected"))
                    .values(event_type=event_type, result=result, processed_at=now))
            if (await self.session.execute(stmt)).rowcount:
                taken.add((source, event_id))
        return taken

    async def mark_rejected(self, keys: list[tuple[str, str]]) -> None:
        """Mark claimed keys as held by rejected events (found invalid after the claim), so a valid event with the
        same key can still take them over."""
        table = SqlProcessedEvent.__table__
        for source, event_id in keys:
            await self.session.execute(update(table).where(and_(table.c.source == source, table.c.event_id == event_id))
                                       .values(result="rejected"))

    async def count(self, result: str | None = None) -> int:
        stmt = select(func.count()).select_from(SqlProcessedEvent)
        if result:
            stmt = stmt.where(SqlProcessedEvent.result == result)
        return int(await self.session.scalar(stmt) or 0)

    async def purge_older_than(self, days: float = 7.0) -> int:
        """Delete keys older than the retention (contract: kept at least 7 days)."""
        cutoff = utcnow() - timedelta(days=max(days, 7.0))
        result = await self.session.execute(delete(SqlProcessedEvent).where(SqlProcessedEvent.processed_at < cutoff))
        return int(result.rowcount or 0)


class RejectedEventRepository:
    """Rows of ``l07_rejected_events``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Store rejections: dicts with ``event_id, source, event_type, code, reason, transport, raw_payload``."""
        if not rows:
            return
        now = utcnow()
        for part in chunks(rows):
            await self.session.execute(SqlRejectedEvent.__table__.insert(), [{**r, "created_at": now} for r in part])

    async def list(self, code: str | None = None, limit: int = 100) -> list[RejectedEvent]:
        stmt = select(SqlRejectedEvent).order_by(SqlRejectedEvent.id).limit(limit)
        if code:
            stmt = stmt.where(SqlRejectedEvent.code == code)
        return [
            RejectedEvent(r.id, r.event_id, r.source, r.event_type, r.code, r.reason, r.transport, r.raw_payload, r.created_at)
            for r in (await self.session.scalars(stmt)).all()
        ]

    async def count_by_code(self) -> dict[str, int]:
        stmt = select(SqlRejectedEvent.code, func.count()).group_by(SqlRejectedEvent.code)
        return {code: int(n) for code, n in (await self.session.execute(stmt)).all()}

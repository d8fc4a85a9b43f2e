"""The pending-join store (contract §1.7): traces, planning records and scores waiting for each other, in the DB.

Keys: an execution's trace and its scores share the row keyed by ``execution_id``; a planning record waits in the
row ``plan:<execution_id>`` and is completed by the scores of that execution. Status values:

* ``waiting``: one side present, inside the join window;
* ``joined``: the example was extracted; the trace stays so that a later reviewer correction can still use it;
* ``pending_evaluation``: a trace unmatched after the window (E7011); still joinable until the late-join TTL;
* ``expired``: a trace never scored within the TTL: counted and queryable, never silently dropped;
* ``orphan_score``: scores whose trace never came within the window; kept as unprocessed reward signals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ..tables import SqlPendingJoin
from ._upsert import chunks

OPEN_STATUSES = ("waiting", "pending_evaluation")
PLAN_PREFIX = "plan:"


@dataclass
class JoinRow:
    """One pending-join row as the extractor sees it (mutable while a batch is processed)."""

    key: str
    trace: dict[str, Any] | None = None
    scores: list[dict[str, Any]] = field(default_factory=list)
    status: str = "waiting"
    trace_at: datetime | None = None
    score_at: datetime | None = None
    first_seen_at: datetime | None = None
    is_new: bool = True
    dirty: bool = False

    def as_values(self, redact: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """The row's column values; ``redact`` gives the stored form of the trace and score payloads."""
        trace, scores = (self.trace, self.scores) if redact is None else (
            redact(self.trace) if self.trace is not None else None, redact(self.scores))
        return {
            "execution_id": self.key,
            "trace_event": trace,
            "score_events": scores,
            "trace_at": self.trace_at,
            "score_at": self.score_at,
            "first_seen_at": self.first_seen_at,
            "status": self.status,
            "updated_at": utcnow(),
        }


class JoinRepository:
    """Data access for ``l07_pending_joins``.

    Args:
        session: The unit of work.
        redact: Storage form of the waiting trace and score payloads (the service layer passes its secret and PII
            redactor, so producer content never rests here in clear). The row key and the ids inside the payloads
            must survive it: a later event joins on them.
    """

    def __init__(self, session: AsyncSession, redact: Callable[[Any], Any] | None = None) -> None:
        self.session = session
        self.redact = redact

    async def load(self, keys: list[str], lock: bool = True) -> dict[str, JoinRow]:
        """Rows for ``keys``; on PostgreSQL they are locked (``FOR UPDATE``) until the transaction ends."""
        out: dict[str, JoinRow] = {}
        pg = self.session.get_bind().dialect.name == "postgresql"
        for part in chunks(sorted(set(keys))):
            stmt = select(SqlPendingJoin).where(SqlPendingJoin.execution_id.in_(part)).order_by(SqlPendingJoin.execution_id)
            if lock and pg:
                stmt = stmt.with_for_update()
            for r in (await self.session.scalars(stmt)).all():
                out[r.execution_id] = JoinRow(
                    key=r.execution_id, trace=r.trace_event, scores=list(r.score_events or []), status=r.status,
                    trace_at=r.trace_at, score_at=r.score_at, first_seen_at=r.first_seen_at, is_new=False,
                )
        return out

    async def save(self, rows: list[JoinRow]) -> None:
        """Insert new rows and update changed ones. A concurrent insert of the same key raises IntegrityError."""
        new = [r.as_values(self.redact) for r in rows if r.is_new]
        changed = [r.as_values(self.redact) for r in rows if not r.is_new and r.dirty]
        table = SqlPendingJoin.__table__
        for part in chunks(new):
            await self.session.execute(table.insert(), part)
        for part in chunks(changed):
            await self.session.execute(update(SqlPendingJoin), part)

    async def due(self, status: str, older_than: datetime, limit: int = 1000) -> list[JoinRow]:
        """Rows in ``status`` first seen before ``older_than`` (sweeper input)."""
        stmt = (
            select(SqlPendingJoin)
            .where(SqlPendingJoin.status == status, SqlPendingJoin.first_seen_at < older_than)
            .order_by(SqlPendingJoin.execution_id)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        return [
            JoinRow(key=r.execution_id, trace=r.trace_event, scores=list(r.score_events or []), status=r.status,
                    trace_at=r.trace_at, score_at=r.score_at, first_seen_at=r.first_seen_at, is_new=False)
            for r in (await self.session.scalars(stmt)).all()
        ]

    async def set_status(self, keys: list[str], status: str) -> None:
        for part in chunks(keys):
            await self.session.execute(
                update(SqlPendingJoin).where(SqlPendingJoin.execution_id.in_(part)).values(status=status, updated_at=utcnow())
            )

    async def count_by_status(self) -> dict[str, int]:
        stmt = select(SqlPendingJoin.status, func.count()).group_by(SqlPendingJoin.status)
        return {s: int(n) for s, n in (await self.session.execute(stmt)).all()}

    async def count_open(self) -> int:
        """Rows still waiting for a partner (``waiting`` + ``pending_evaluation``)."""
        stmt = select(func.count()).select_from(SqlPendingJoin).where(SqlPendingJoin.status.in_(OPEN_STATUSES))
        return int(await self.session.scalar(stmt) or 0)

    async def list(self, status: str | None = None, limit: int = 100) -> list[JoinRow]:
        stmt = select(SqlPendingJoin).order_by(SqlPendingJoin.first_seen_at).limit(limit)
        if status:
            stmt = stmt.where(SqlPendingJoin.status == status)
        return [
            JoinRow(key=r.execution_id, trace=r.trace_event, scores=list(r.score_events or []), status=r.status,
                    trace_at=r.trace_at, score_at=r.score_at, first_seen_at=r.first_seen_at, is_new=False)
            for r in (await self.session.scalars(stmt)).all()
        ]


def window_cutoff(now: datetime, seconds: float) -> datetime:
    """``now - seconds`` (helper for the sweeper)."""
    return now - timedelta(seconds=seconds)

"""Background operations (``l07_operations``): a validation or a deployment started over REST, run by one process,
polled by anyone until it ends. The row outlives the process that ran it, so a poll after a restart still answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import SqlOperation

RUNNING = "RUNNING"
# Waiting for a validation slot (``max_concurrent_validations``); live like RUNNING, it heart-beats and can end.
QUEUED = "QUEUED"
LIVE = (QUEUED, RUNNING)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


@dataclass(frozen=True)
class Operation:
    """One background operation. ``status`` is QUEUED while it waits for a validation slot, RUNNING until it ends
    (the final values depend on ``kind``)."""

    operation_id: str
    kind: str
    model_id: str
    status: str
    requested_by: str
    owner: str
    created_at: datetime
    heartbeat_at: datetime
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None
    finished_at: datetime | None = None

    @property
    def error(self) -> dict[str, Any] | None:
        """``{code, message}`` when the operation failed or was rejected."""
        return {"code": self.error_code, "message": self.error_message} if self.error_code else None


def _to_model(row: SqlOperation) -> Operation:
    return Operation(
        operation_id=row.operation_id, kind=row.kind, model_id=row.model_id, status=row.status,
        requested_by=row.requested_by, owner=row.owner, created_at=_aware(row.created_at),
        heartbeat_at=_aware(row.heartbeat_at), params=dict(row.params or {}), result=dict(row.result or {}),
        error_code=row.error_code, error_message=row.error_message, finished_at=_aware(row.finished_at))


class OperationRepository:
    """Data access for ``l07_operations``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, op: Operation) -> None:
        self.session.add(SqlOperation(
            operation_id=op.operation_id, kind=op.kind, model_id=op.model_id, status=op.status,
            requested_by=op.requested_by, params=op.params, result=op.result, owner=op.owner,
            heartbeat_at=op.heartbeat_at, created_at=op.created_at))

    async def get(self, operation_id: str) -> Operation | None:
        row = await self.session.get(SqlOperation, operation_id, populate_existing=True)
        return _to_model(row) if row is not None else None

    async def heartbeat(self, operation_ids: list[str], now: datetime) -> None:
        """Refresh the heartbeat of live (queued or running) operations this process holds."""
        if operation_ids:
            await self.session.execute(update(SqlOperation).where(
                SqlOperation.operation_id.in_(operation_ids), SqlOperation.status.in_(LIVE)).values(heartbeat_at=now))

    async def mark_running(self, operation_id: str, now: datetime) -> bool:
        """A QUEUED operation got its slot; False when it is not QUEUED (already running or ended)."""
        done = await self.session.execute(update(SqlOperation).where(
            SqlOperation.operation_id == operation_id, SqlOperation.status == QUEUED).values(
            status=RUNNING, heartbeat_at=now))
        return done.rowcount == 1

    async def finish(self, operation_id: str, status: str, now: datetime, *, result: dict[str, Any] | None = None,
                     error_code: str | None = None, error_message: str | None = None) -> bool:
        """End a live operation; False when it had already ended (another process declared it dead)."""
        values: dict[str, Any] = {"status": status, "finished_at": now, "error_code": error_code,
                                  "error_message": (error_message or "")[:4000] or None}
        if result is not None:
            values["result"] = result
        done = await self.session.execute(update(SqlOperation).where(
            SqlOperation.operation_id == operation_id, SqlOperation.status.in_(LIVE)).values(**values))
        return done.rowcount == 1

    async def fail_stale(self, stale_before: datetime, now: datetime, error_code: str, message: str,
                         owner: str | None = None) -> list[str]:
        """Mark FAILED every live operation whose heartbeat is older than ``stale_before`` (or, with ``owner``,
        every one that owner holds, whatever its heartbeat); returns their ids."""
        where = [SqlOperation.status.in_(LIVE)]
        where.append(SqlOperation.owner == owner if owner is not None else SqlOperation.heartbeat_at < stale_before)
        ids = list((await self.session.scalars(select(SqlOperation.operation_id).where(*where))).all())
        if ids:
            await self.session.execute(update(SqlOperation).where(
                SqlOperation.operation_id.in_(ids), SqlOperation.status.in_(LIVE)).values(
                status="FAILED", finished_at=now, error_code=error_code, error_message=message))
        return ids

    async def list(self, model_id: str | None = None, status: str | tuple[str, ...] | None = None,
                   limit: int = 100) -> list[Operation]:
        stmt = select(SqlOperation).order_by(SqlOperation.created_at.desc()).limit(limit)
        if model_id is not None:
            stmt = stmt.where(SqlOperation.model_id == model_id)
        if status is not None:
            stmt = stmt.where(SqlOperation.status.in_([status] if isinstance(status, str) else list(status)))
        return [_to_model(r) for r in (await self.session.scalars(stmt)).all()]

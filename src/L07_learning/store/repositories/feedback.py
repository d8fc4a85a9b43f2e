"""Release watches, incidents and component circuit breakers (contract §4.2, §4.4), shared by every process.

Every move that must happen once (a window's verdict, the rollback claim, a breaker trip, a half-open probe) is one
conditional ``UPDATE ... WHERE`` whose row count says who won, as in ``repositories/loop.py``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import (
    SqlComponentBreaker,
    SqlIncident,
    SqlLoopRun,
    SqlModel,
    SqlModelOutcome,
    SqlModelWatch,
    SqlOutboxEvent,
)
from ._upsert import insert_ignore

APPROVED_EVENT = "com.agentic.learning.model_deployment_approved"


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _row_dict(row: Any) -> dict[str, Any]:
    out = {c.name: getattr(row, c.key) for c in row.__table__.columns}
    return {k: _utc(v) if isinstance(v, datetime) else v for k, v in out.items()}


class WatchRepository:
    """``l07_model_watches`` and ``l07_incidents`` inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def unwatched_active(self) -> list[dict[str, Any]]:
        """PRODUCTION ACTIVE models without a watch row: id, name, data (deployed_at) and their predecessor."""
        rows = (await self.session.scalars(
            select(SqlModel).where(SqlModel.serving_state == "ACTIVE",
                                   ~select(SqlModelWatch.model_id).where(SqlModelWatch.model_id == SqlModel.model_id)
                                   .exists()))).all()
        out = []
        for row in rows:
            previous = await self.session.scalar(
                select(SqlModel.model_id).where(SqlModel.name == row.name, SqlModel.model_id != row.model_id,
                                                SqlModel.data["superseded_by"].as_string() == row.model_id))
            policy = await self.session.scalar(select(SqlLoopRun.policy).where(SqlLoopRun.model_id == row.model_id))
            out.append({"model_id": row.model_id, "name": row.name, "deployed_at": (row.data or {}).get("deployed_at"),
                        "updated_at": _utc(row.updated_at), "baseline_model_id": previous, "policy": policy,
                        "canary_config": await self._canary_config(row.model_id)})
        return out

    async def _canary_config(self, model_id: str) -> dict[str, Any] | None:
        """The canary configuration the model's release to PRODUCTION carried (its newest approval event)."""
        payloads = await self.session.scalars(
            select(SqlOutboxEvent.payload).where(SqlOutboxEvent.subject == model_id,
                                                 SqlOutboxEvent.event_type == APPROVED_EVENT)
            .order_by(SqlOutboxEvent.id.desc()))
        for payload in payloads.all():
            data = (payload or {}).get("data") or {}
            if data.get("to_stage") == "PRODUCTION" and data.get("from_stage") != "PRODUCTION":
                return data.get("canary_config") or None
        return None

    async def add(self, values: dict[str, Any]) -> None:
        await self.session.execute(insert_ignore(self.session, SqlModelWatch.__table__), [values])

    async def get(self, model_id: str) -> dict[str, Any] | None:
        row = await self.session.get(SqlModelWatch, model_id, populate_existing=True)
        return _row_dict(row) if row is not None else None

    async def list(self, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        stmt = select(SqlModelWatch).order_by(SqlModelWatch.started_at.desc())
        if statuses:
            stmt = stmt.where(SqlModelWatch.status.in_(statuses))
        return [_row_dict(r) for r in (await self.session.scalars(stmt)).all()]

    async def serving_state(self, model_id: str) -> str | None:
        return await self.session.scalar(select(SqlModel.serving_state).where(SqlModel.model_id == model_id))

    async def record_window(self, model_id: str, index: int, result: dict[str, Any], now: datetime) -> bool:
        """Store window ``index``'s verdict; False when another process stored it first."""
        res = await self.session.execute(
            update(SqlModelWatch).where(SqlModelWatch.model_id == model_id, SqlModelWatch.status == "WATCHING",
                                        SqlModelWatch.windows_evaluated == index)
            .values(windows_evaluated=index + 1, last_result=result, updated_at=now))
        return res.rowcount == 1  # type: ignore[attr-defined]

    async def note(self, model_id: str, result: dict[str, Any], now: datetime) -> None:
        """Store the latest look (no window completed) without moving the window count."""
        await self.session.execute(update(SqlModelWatch).where(SqlModelWatch.model_id == model_id,
                                                               SqlModelWatch.status == "WATCHING")
                                   .values(last_result=result, updated_at=now))

    async def decide_canary(self, model_id: str, status: str, canary: dict[str, Any], now: datetime,
                            result: dict[str, Any] | None = None) -> bool:
        """Store the canary's verdict once (from RUNNING); False when another process decided it first."""
        values: dict[str, Any] = {"canary_status": status, "canary": canary, "updated_at": now}
        if result is not None:
            values["last_result"] = result
        res = await self.session.execute(
            update(SqlModelWatch).where(SqlModelWatch.model_id == model_id, SqlModelWatch.status == "WATCHING",
                                        SqlModelWatch.canary_status == "RUNNING").values(**values))
        return res.rowcount == 1  # type: ignore[attr-defined]

    async def task_types(self, model_id: str, since: datetime, until: datetime) -> set[str]:
        """Task types of the model's scored outcomes served in ``[since, until)``."""
        rows = await self.session.scalars(
            select(SqlModelOutcome.task_type).distinct()
            .where(SqlModelOutcome.model_id == model_id, SqlModelOutcome.completed_at.isnot(None),
                   SqlModelOutcome.served_at >= since, SqlModelOutcome.served_at < until))
        return {t or "general" for t in rows.all()}

    async def served_between(self, model_id: str, since: datetime, until: datetime,
                             task_types: set[str]) -> list[Any]:
        """``(quality, is_error)`` of the model's scored outcomes served in ``[since, until)`` for ``task_types``."""
        types = [t for t in task_types if t != "general"]
        kind = SqlModelOutcome.task_type.in_(types)
        if "general" in task_types:
            kind = or_(kind, SqlModelOutcome.task_type.is_(None), SqlModelOutcome.task_type == "general")
        rows = await self.session.execute(
            select(SqlModelOutcome.quality_score, SqlModelOutcome.is_error)
            .where(SqlModelOutcome.model_id == model_id, SqlModelOutcome.completed_at.isnot(None),
                   SqlModelOutcome.served_at >= since, SqlModelOutcome.served_at < until, kind))
        return rows.all()

    async def claim(self, model_id: str, holder: str, now: datetime, stale_before: datetime) -> bool:
        """Take the rollback of a watched model: from WATCHING, or from a claimer silent since ``stale_before``."""
        res = await self.session.execute(
            update(SqlModelWatch).where(
                SqlModelWatch.model_id == model_id,
                or_(SqlModelWatch.status == "WATCHING",
                    and_(SqlModelWatch.status == "ROLLING_BACK", SqlModelWatch.claimed_at < stale_before)))
            .values(status="ROLLING_BACK", claimed_by=holder, claimed_at=now, updated_at=now))
        return res.rowcount == 1  # type: ignore[attr-defined]

    async def end(self, model_id: str, status: str, now: datetime, holder: str | None = None,
                  result: dict[str, Any] | None = None) -> bool:
        """Close a watch (ROLLED_BACK, ROLLBACK_FAILED, ENDED); with ``holder`` only if that process holds the claim."""
        stmt = update(SqlModelWatch).where(SqlModelWatch.model_id == model_id)
        if holder is not None:
            stmt = stmt.where(SqlModelWatch.status == "ROLLING_BACK", SqlModelWatch.claimed_by == holder)
        else:
            stmt = stmt.where(SqlModelWatch.status.in_(("WATCHING", "NO_BASELINE")))
        values: dict[str, Any] = {"status": status, "ended_at": now, "updated_at": now}
        if result is not None:
            values["last_result"] = result
        res = await self.session.execute(stmt.values(**values))
        return res.rowcount == 1  # type: ignore[attr-defined]

    def add_incident(self, **values: Any) -> None:
        self.session.add(SqlIncident(**values))

    async def incidents(self, model_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        stmt = select(SqlIncident).order_by(SqlIncident.created_at.desc()).limit(limit)
        if model_id is not None:
            stmt = stmt.where(SqlIncident.model_id == model_id)
        return [_row_dict(r) for r in (await self.session.scalars(stmt)).all()]


class BreakerRepository:
    """``l07_component_breakers`` inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ensure(self, component: str, now: datetime) -> dict[str, Any]:
        await self.session.execute(insert_ignore(self.session, SqlComponentBreaker.__table__), [
            {"component": component, "state": "CLOSED", "consecutive_failures": 0, "trips": 0, "updated_at": now}])
        row = await self.session.get(SqlComponentBreaker, component, populate_existing=True)
        return _row_dict(row)

    async def get(self, component: str) -> dict[str, Any] | None:
        row = await self.session.get(SqlComponentBreaker, component, populate_existing=True)
        return _row_dict(row) if row is not None else None

    async def all(self) -> list[dict[str, Any]]:
        rows = await self.session.scalars(select(SqlComponentBreaker).order_by(SqlComponentBreaker.component))
        return [_row_dict(r) for r in rows.all()]

    async def move(self, component: str, expect: dict[str, Any], now: datetime, **values: Any) -> bool:
        """Update the breaker only if its columns still hold ``expect``; False when another process moved it."""
        stmt = update(SqlComponentBreaker).where(SqlComponentBreaker.component == component)
        for key, value in expect.items():
            column = getattr(SqlComponentBreaker, key)
            stmt = stmt.where(column.is_(None) if value is None else column == value)
        res = await self.session.execute(stmt.values(updated_at=now, **values))
        return res.rowcount == 1  # type: ignore[attr-defined]

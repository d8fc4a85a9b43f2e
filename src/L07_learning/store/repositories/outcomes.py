"""Per-model outcome series (``l07_model_outcomes``): which model served an execution, joined with its L06 score.

The model and the score arrive in either order (``model.response_logged``, a trace's ``metadata.model_id``, the
score event). ``merge`` is one ``INSERT ... ON CONFLICT DO UPDATE`` that keeps what is already stored (the first
model and the first score win) and stamps ``completed_at`` once, at the moment the row first holds both; a replay
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import SqlModel, SqlModelOutcome
from ._upsert import chunks

FIELDS = ("model_id", "model_ref", "model_source", "task_type", "served_at", "latency_ms", "total_tokens",
          "quality_score", "failure", "is_error", "scored_at")


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; every stored time is UTC.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


@dataclass(frozen=True)
class Sample:
    """One scored outcome as the watch's statistics read it."""

    quality: float
    is_error: bool


class OutcomeRepository:
    """Data access for ``l07_model_outcomes`` inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def resolve(self, refs: set[str]) -> dict[str, str]:
        """Reported model references -> registered model ids: an id as itself, a model name as its ACTIVE version.
        References that match neither are left out (the caller keeps them as reported)."""
        if not refs:
            return {}
        out: dict[str, str] = {}
        for model_id in await self.session.scalars(select(SqlModel.model_id).where(SqlModel.model_id.in_(refs))):
            out[model_id] = model_id
        names = refs - set(out)
        if names:
            rows = await self.session.execute(select(SqlModel.name, SqlModel.model_id)
                                              .where(SqlModel.name.in_(names), SqlModel.serving_state == "ACTIVE"))
            out.update({name: model_id for name, model_id in rows.all()})
        return out

    async def merge(self, rows: list[dict[str, Any]], now: datetime) -> None:
        """Upsert one row per execution (the caller merged a batch's events per execution first)."""
        if not rows:
            return
        table = SqlModelOutcome.__table__
        module = postgresql if self.session.get_bind().dialect.name == "postgresql" else sqlite
        values = []
        for row in rows:
            full = {k: row.get(k) for k in FIELDS}
            complete = full["model_id"] is not None and full["quality_score"] is not None
            values.append({"execution_id": row["execution_id"], **full, "created_at": now,
                           "completed_at": now if complete else None})
        for part in chunks(values):
            stmt = module.insert(table)
            t, x = table.c, stmt.excluded
            score_arrives = and_(t.quality_score.is_(None), x.quality_score.isnot(None))
            merged = {k: func.coalesce(t[k], x[k]) for k in FIELDS if k not in ("failure", "is_error")}
            # A score's failure classification outranks the trace's outcome, whichever came first.
            merged["failure"] = case((score_arrives, x.failure), else_=func.coalesce(t.failure, x.failure))
            merged["is_error"] = case((score_arrives, x.is_error), else_=func.coalesce(t.is_error, x.is_error))
            done = and_(func.coalesce(t.model_id, x.model_id).isnot(None),
                        func.coalesce(t.quality_score, x.quality_score).isnot(None))
            merged["completed_at"] = func.coalesce(t.completed_at, case((done, literal(now, table.c.completed_at.type)),
                                                                       else_=None))
            await self.session.execute(stmt.on_conflict_do_update(index_elements=["execution_id"], set_=merged), part)

    def _completed(self, model_id: str, since: datetime | None, until: datetime | None) -> list[Any]:
        where = [SqlModelOutcome.model_id == model_id, SqlModelOutcome.completed_at.isnot(None)]
        if since is not None:
            where.append(SqlModelOutcome.completed_at >= since)
        if until is not None:
            where.append(SqlModelOutcome.completed_at < until)
        return where

    async def summary(self, model_id: str, since: datetime | None = None, until: datetime | None = None,
                      by_task_type: bool = False) -> list[dict[str, Any]]:
        """Count, mean quality, quality variance and error count of the scored outcomes in the window (one row, or
        one per task type)."""
        q = SqlModelOutcome.quality_score
        errors = func.sum(case((SqlModelOutcome.is_error.is_(True), 1), else_=0))
        cols = [func.count(), func.avg(q), func.avg(q * q), errors, func.avg(SqlModelOutcome.latency_ms),
                func.min(SqlModelOutcome.completed_at), func.max(SqlModelOutcome.completed_at)]
        stmt = select(SqlModelOutcome.task_type, *cols) if by_task_type else select(*cols)
        stmt = stmt.where(*self._completed(model_id, since, until))
        if by_task_type:
            stmt = stmt.group_by(SqlModelOutcome.task_type).order_by(SqlModelOutcome.task_type)
        out = []
        for row in (await self.session.execute(stmt)).all():
            task_type, rest = (row[0], row[1:]) if by_task_type else (None, row)
            n, mean, mean_sq, err, latency, first, last = rest
            n = int(n or 0)
            var = max(float(mean_sq) - float(mean) ** 2, 0.0) * n / (n - 1) if n > 1 else 0.0
            out.append({**({"task_type": task_type or "general"} if by_task_type else {}), "samples": n,
                        "quality_mean": float(mean) if mean is not None else None, "quality_variance": var,
                        "errors": int(err or 0), "error_rate": (int(err or 0) / n) if n else None,
                        "latency_ms_mean": float(latency) if latency is not None else None,
                        "first_at": _utc(first), "last_at": _utc(last)})
        return out

    async def unscored(self, model_id: str, since: datetime | None = None, until: datetime | None = None) -> int:
        """Executions the model served whose score has not arrived (yet)."""
        where = [SqlModelOutcome.model_id == model_id, SqlModelOutcome.quality_score.is_(None)]
        if since is not None:
            where.append(SqlModelOutcome.served_at >= since)
        if until is not None:
            where.append(SqlModelOutcome.served_at < until)
        return int(await self.session.scalar(select(func.count()).select_from(SqlModelOutcome).where(*where)) or 0)

    async def points(self, model_id: str, since: datetime | None, until: datetime | None,
                     limit: int = 200_000) -> list[tuple[datetime, float, bool]]:
        """``(completed_at, quality, is_error)`` of the window's scored outcomes, oldest first (for time buckets)."""
        rows = await self.session.execute(
            select(SqlModelOutcome.completed_at, SqlModelOutcome.quality_score, SqlModelOutcome.is_error)
            .where(*self._completed(model_id, since, until))
            .order_by(SqlModelOutcome.completed_at, SqlModelOutcome.execution_id).limit(limit))
        return [(_utc(at), float(q), bool(e)) for at, q, e in rows.all()]  # type: ignore[misc]

    async def count_completed(self, model_id: str, since: datetime | None = None) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(SqlModelOutcome)
                                             .where(*self._completed(model_id, since, None))) or 0)

    async def window(self, model_id: str, since: datetime, index: int, size: int) -> list[Sample]:
        """The ``index``-th (from 0) run of ``size`` scored outcomes completed since ``since``, in completion order.

        Completion times never change once set, so a window read twice holds the same outcomes."""
        rows = await self.session.execute(
            select(SqlModelOutcome.quality_score, SqlModelOutcome.is_error)
            .where(*self._completed(model_id, since, None))
            .order_by(SqlModelOutcome.completed_at, SqlModelOutcome.execution_id)
            .offset(index * size).limit(size))
        return [Sample(float(q), bool(e)) for q, e in rows.all()]

    async def before(self, model_id: str, until: datetime, limit: int) -> list[Sample]:
        """The newest ``limit`` scored outcomes of a model completed before ``until`` (a predecessor's baseline)."""
        rows = await self.session.execute(
            select(SqlModelOutcome.quality_score, SqlModelOutcome.is_error)
            .where(*self._completed(model_id, None, until))
            .order_by(SqlModelOutcome.completed_at.desc(), SqlModelOutcome.execution_id.desc()).limit(limit))
        return [Sample(float(q), bool(e)) for q, e in rows.all()]

    async def served_models(self, refs: list[str]) -> dict[str, str]:
        """Model id -> registered name, for the ids among ``refs`` that are registered."""
        if not refs:
            return {}
        rows = await self.session.execute(select(SqlModel.model_id, SqlModel.name).where(SqlModel.model_id.in_(refs)))
        return dict(rows.all())  # type: ignore[arg-type]

"""Rows of the OpenAI-compatible fine-tuning API: uploaded files, fine-tuning jobs and their import events."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import SqlFineTuningEvent, SqlFineTuningFile, SqlFineTuningJob


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _row(obj: Any) -> dict[str, Any]:
    out = {c.key: getattr(obj, c.key) for c in obj.__table__.columns}
    out["created_at"] = _aware(out["created_at"])
    return out


class FineTuningRepository:
    """Data access for ``l07_ft_files``, ``l07_ft_jobs`` and ``l07_ft_events``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add_file(self, **fields: Any) -> None:
        self.session.add(SqlFineTuningFile(**fields))

    async def file(self, file_id: str) -> dict[str, Any] | None:
        row = await self.session.get(SqlFineTuningFile, file_id)
        return _row(row) if row is not None else None

    async def files(self, purpose: str | None = None) -> list[dict[str, Any]]:
        stmt = select(SqlFineTuningFile).order_by(SqlFineTuningFile.created_at.desc(), SqlFineTuningFile.file_id)
        if purpose:
            stmt = stmt.where(SqlFineTuningFile.purpose == purpose)
        return [_row(r) for r in (await self.session.scalars(stmt)).all()]

    async def set_import(self, file_id: str, format: str, report: dict[str, Any]) -> None:  # noqa: A002
        row = await self.session.get(SqlFineTuningFile, file_id)
        if row is not None:
            row.import_format, row.import_report = format, report

    async def delete_file(self, file_id: str) -> None:
        await self.session.execute(delete(SqlFineTuningFile).where(SqlFineTuningFile.file_id == file_id))

    def add_job(self, **fields: Any) -> None:
        self.session.add(SqlFineTuningJob(**fields))

    async def job(self, ft_job_id: str) -> dict[str, Any] | None:
        row = await self.session.get(SqlFineTuningJob, ft_job_id)
        return _row(row) if row is not None else None

    async def update_job(self, ft_job_id: str, **fields: Any) -> None:
        row = await self.session.get(SqlFineTuningJob, ft_job_id)
        if row is not None:
            for key, value in fields.items():
                setattr(row, key, value)

    async def jobs(self) -> list[dict[str, Any]]:
        """Jobs newest first (ties by id, so pagination is stable)."""
        stmt = select(SqlFineTuningJob).order_by(SqlFineTuningJob.created_at.desc(), SqlFineTuningJob.ft_job_id.desc())
        return [_row(r) for r in (await self.session.scalars(stmt)).all()]

    def add_event(self, ft_job_id: str, level: str, message: str, data: dict[str, Any]) -> None:
        self.session.add(SqlFineTuningEvent(ft_job_id=ft_job_id, level=level, message=message, data=data))

    async def events(self, ft_job_id: str) -> list[dict[str, Any]]:
        stmt = (select(SqlFineTuningEvent).where(SqlFineTuningEvent.ft_job_id == ft_job_id)
                .order_by(SqlFineTuningEvent.id))
        return [_row(r) for r in (await self.session.scalars(stmt)).all()]

"""Datasets, their immutable versions and version members (``l07_datasets``, ``l07_dataset_versions``,
``l07_dataset_members``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ..tables import SqlDataset, SqlDatasetMember, SqlDatasetVersion
from ._upsert import chunks


class DatasetRepository:
    """Data access for datasets and their versions."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, dataset_id: str) -> SqlDataset | None:
        return await self.session.get(SqlDataset, dataset_id)

    async def get_by_name(self, name: str) -> SqlDataset | None:
        return await self.session.scalar(select(SqlDataset).where(SqlDataset.name == name))

    async def resolve(self, id_or_name: str) -> SqlDataset | None:
        """The dataset with this id, else the one with this name."""
        return await self.get(id_or_name) or await self.get_by_name(id_or_name)

    def add_dataset(self, dataset_id: str, name: str, version: str, created_at: datetime) -> None:
        self.session.add(SqlDataset(dataset_id=dataset_id, name=name, latest_version=version, created_at=created_at,
                                    updated_at=created_at))

    async def set_latest(self, dataset_id: str, version: str) -> None:
        row = await self.get(dataset_id)
        if row is not None:
            row.latest_version = version
            row.updated_at = utcnow()

    def add_version(self, row: dict[str, Any]) -> None:
        self.session.add(SqlDatasetVersion(**row))

    async def add_members(self, dataset_id: str, version: str, members: list[tuple[str, str, int, str]]) -> None:
        """Insert ``(example_id, split, position, content_hash)`` members of one version."""
        table = SqlDatasetMember.__table__
        rows = [
            {"dataset_id": dataset_id, "version": version, "example_id": e, "split": s, "position": p, "content_hash": h}
            for e, s, p, h in members
        ]
        for part in chunks(rows):
            await self.session.execute(table.insert(), part)

    async def get_version(self, dataset_id: str, version: str) -> SqlDatasetVersion | None:
        return await self.session.get(SqlDatasetVersion, (dataset_id, version))

    async def versions(self, dataset_id: str) -> list[SqlDatasetVersion]:
        rows = await self.session.scalars(
            select(SqlDatasetVersion).where(SqlDatasetVersion.dataset_id == dataset_id).order_by(SqlDatasetVersion.created_at)
        )
        return list(rows.all())

    async def members(self, dataset_id: str, version: str) -> list[tuple[str, str, int, str]]:
        """``(example_id, split, position, content_hash)`` ordered by split position."""
        rows = await self.session.execute(
            select(SqlDatasetMember.example_id, SqlDatasetMember.split, SqlDatasetMember.position,
                   SqlDatasetMember.content_hash)
            .where(SqlDatasetMember.dataset_id == dataset_id, SqlDatasetMember.version == version)
            .order_by(SqlDatasetMember.position)
        )
        return [(r[0], r[1], int(r[2]), r[3]) for r in rows.all()]

    async def list(self) -> list[SqlDataset]:
        return list((await self.session.scalars(select(SqlDataset).order_by(SqlDataset.created_at))).all())

    async def version_counts(self) -> dict[str, int]:
        rows = await self.session.execute(
            select(SqlDatasetVersion.dataset_id, func.count()).group_by(SqlDatasetVersion.dataset_id)
        )
        return {r[0]: int(r[1]) for r in rows.all()}

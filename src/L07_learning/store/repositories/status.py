"""Row counts per table, for ``l07 status``."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import Base


async def table_counts(session: AsyncSession) -> dict[str, int]:
    """Number of rows in every L07 table."""
    counts: dict[str, int] = {}
    for name, table in sorted(Base.metadata.tables.items()):
        counts[name] = int(await session.scalar(select(func.count()).select_from(table)) or 0)
    return counts

"""The loop at a glance for people who run it: the funnel events -> examples -> accepted -> datasets -> jobs ->
models over the last day and week, and what the filter (or a reviewer) did not accept, by reason."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..models._base import utcnow
from ..store.db import Database
from ..store.repositories.overview import FUNNEL_STAGES, funnel_counts, reason_counts

__all__ = ["FUNNEL_STAGES", "WINDOWS", "Overview"]

WINDOWS = {"day": timedelta(days=1), "week": timedelta(days=7)}


class Overview:
    """Funnel and rejection counts.

    Args:
        db: The database to count in.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def funnel(self) -> dict[str, Any]:
        """``{"day": {stage: n}, "week": {...}, "rejections": {"day": {"DECISION/reason": n}, "week": {...}}}``."""
        now = utcnow()
        starts = {window: now - span for window, span in WINDOWS.items()}
        async with self.db.session() as session:
            return {**await funnel_counts(session, starts), "rejections": await reason_counts(session, starts)}

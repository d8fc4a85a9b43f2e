"""The loop's funnel in few reads: how many events, examples, accepted examples, dataset versions, training jobs and
models were stored in each window, and the non-accept decisions per reason. Each count is one read for all windows
(conditional sums over an indexed range, from the index alone for examples), so the overview stays fast with hundreds
of thousands of examples."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import (SqlDatasetVersion, SqlModel, SqlProcessedEvent, SqlRejectedExample, SqlTrainingExample,
                      SqlTrainingJob)

FUNNEL_STAGES = ("events", "examples", "accepted", "datasets", "jobs", "models")


def _since(column: Any, start: datetime, extra: Any = True) -> Any:
    return func.coalesce(func.sum(case(((column >= start) & extra, 1), else_=0)), 0)


async def _windowed(session: AsyncSession, column: Any, windows: dict[str, datetime], *where: Any,
                    extra: dict[str, Any] | None = None) -> dict[str, dict[str, int]]:
    """``{window: {name: n}}``: rows since each window's start, overall and under each ``extra`` condition."""
    earliest = min(windows.values())
    parts = {"all": True, **(extra or {})}
    labels = [(w, name) for w in windows for name in parts]
    stmt = select(*[_since(column, windows[w], parts[name]) for w, name in labels]).where(column >= earliest, *where)
    row = (await session.execute(stmt)).one()
    out: dict[str, dict[str, int]] = {w: {} for w in windows}
    for (w, name), n in zip(labels, row):
        out[w][name] = int(n or 0)
    return out


async def funnel_counts(session: AsyncSession, windows: dict[str, datetime]) -> dict[str, dict[str, int]]:
    """``{window: {stage: n}}``: rows of each funnel stage stored since each window's start (models: trained ones,
    base models left out)."""
    # Two index-only counts (created_at; status + created_at), not one pass over every example row of the window.
    examples = await _windowed(session, SqlTrainingExample.created_at, windows)
    accepted = await _windowed(session, SqlTrainingExample.created_at, windows, SqlTrainingExample.status == "ACCEPTED")
    simple = {
        "events": await _windowed(session, SqlProcessedEvent.processed_at, windows),
        "datasets": await _windowed(session, SqlDatasetVersion.created_at, windows),
        "jobs": await _windowed(session, SqlTrainingJob.created_at, windows),
        "models": await _windowed(session, SqlModel.created_at, windows, SqlModel.model_type != "BASE"),
    }
    return {w: {"events": simple["events"][w]["all"], "examples": examples[w]["all"],
                "accepted": accepted[w]["all"], "datasets": simple["datasets"][w]["all"],
                "jobs": simple["jobs"][w]["all"], "models": simple["models"][w]["all"]} for w in windows}


async def reason_counts(session: AsyncSession, windows: dict[str, datetime]) -> dict[str, dict[str, int]]:
    """``{window: {"DECISION/reason": n}}``: non-accept decisions (the filter's and reviewers') since each start,
    most frequent first."""
    earliest = min(windows.values())
    col = SqlRejectedExample.created_at
    stmt = (select(SqlRejectedExample.decision, SqlRejectedExample.reason, *[_since(col, s) for s in windows.values()])
            .where(col >= earliest).group_by(SqlRejectedExample.decision, SqlRejectedExample.reason))
    out: dict[str, dict[str, int]] = {w: {} for w in windows}
    for decision, reason, *counts in (await session.execute(stmt)).all():
        for w, n in zip(windows, counts):
            if n:
                out[w][f"{decision}/{reason}"] = int(n)
    return {w: dict(sorted(c.items(), key=lambda kv: -kv[1])) for w, c in out.items()}

"""Browsing and reviewing stored examples: filtered pages of ``l07_training_examples`` (the stored, secret-masked
text), the reason each got from the filter, and the close of a ``l07_review_queue`` item by a person."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import SqlRejectedExample, SqlReviewItem, SqlTrainingExample

_PAGE_COLUMNS = (
    SqlTrainingExample.example_id, SqlTrainingExample.status, SqlTrainingExample.task_type,
    SqlTrainingExample.agent_id, SqlTrainingExample.domain, SqlTrainingExample.quality_score,
    SqlTrainingExample.confidence, SqlTrainingExample.input_text, SqlTrainingExample.output_text,
    SqlTrainingExample.created_at,
)


class ExampleReviewRepository:
    """Data access for the example browser and the human review of REVIEW examples."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @staticmethod
    def _filtered(stmt: Select[Any], *, status: str | None, reason: str | None, task_type: str | None,
                  agent_id: str | None, text: str | None) -> Select[Any]:
        if status:
            stmt = stmt.where(SqlTrainingExample.status == status)
        if task_type:
            stmt = stmt.where(SqlTrainingExample.task_type == task_type)
        if agent_id:
            stmt = stmt.where(SqlTrainingExample.agent_id == agent_id)
        if reason:
            decided = select(SqlRejectedExample.example_id).where(
                (SqlRejectedExample.reason == reason) | (SqlRejectedExample.code == reason))
            stmt = stmt.where(SqlTrainingExample.example_id.in_(decided))
        if text:
            pattern = f"%{text}%"
            stmt = stmt.where(SqlTrainingExample.input_text.like(pattern) | SqlTrainingExample.output_text.like(pattern)
                              | SqlTrainingExample.example_id.like(pattern))
        return stmt

    async def page(self, *, status: str | None = None, reason: str | None = None, task_type: str | None = None,
                   agent_id: str | None = None, text: str | None = None, limit: int = 50,
                   offset: int = 0) -> tuple[list[dict[str, Any]], int | None, bool]:
        """One page of examples, newest first, how many match in all, and whether more follow; each row names the
        filter's reasons. A text search reads every text, so it is not counted twice: its total is None."""
        filters = {"status": status, "reason": reason, "task_type": task_type, "agent_id": agent_id, "text": text}
        stmt = self._filtered(select(*_PAGE_COLUMNS), **filters).order_by(
            SqlTrainingExample.created_at.desc(), SqlTrainingExample.example_id.desc()).limit(limit + 1).offset(offset)
        rows = [dict(r._mapping) for r in (await self.session.execute(stmt)).all()]
        more = len(rows) > limit
        rows = rows[:limit]
        total = None if text else int(await self.session.scalar(
            self._filtered(select(func.count()).select_from(SqlTrainingExample), **filters)) or 0)
        reasons = await self.reasons([r["example_id"] for r in rows])
        for row in rows:
            row["reasons"] = reasons.get(row["example_id"], [])
        return rows, total, more

    async def reasons(self, example_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The filter's non-accept decisions per example, oldest first."""
        if not example_ids:
            return {}
        stmt = (select(SqlRejectedExample.example_id, SqlRejectedExample.decision, SqlRejectedExample.reason,
                       SqlRejectedExample.code, SqlRejectedExample.detail)
                .where(SqlRejectedExample.example_id.in_(example_ids)).order_by(SqlRejectedExample.id))
        out: dict[str, list[dict[str, Any]]] = {}
        for r in (await self.session.execute(stmt)).all():
            out.setdefault(r.example_id, []).append(
                {"decision": r.decision, "reason": r.reason, "code": r.code, "detail": r.detail})
        return out

    async def get(self, example_id: str) -> dict[str, Any] | None:
        """One example's page row, with its reasons; None when unknown."""
        row = (await self.session.execute(
            select(*_PAGE_COLUMNS).where(SqlTrainingExample.example_id == example_id))).first()
        if row is None:
            return None
        out = dict(row._mapping)
        out["reasons"] = (await self.reasons([example_id])).get(example_id, [])
        return out

    async def distinct(self, column: str) -> list[str]:
        """The stored values of ``task_type`` or ``agent_id`` (the browser's filter choices)."""
        col = {"task_type": SqlTrainingExample.task_type, "agent_id": SqlTrainingExample.agent_id}[column]
        rows = await self.session.scalars(select(col).where(col.is_not(None)).distinct().order_by(col).limit(500))
        return list(rows.all())

    async def set_reviewed(self, example_id: str, status: str) -> int:
        """Move a REVIEW example to ``status`` and close its open queue items; returns the examples changed (0 when
        it was no longer in REVIEW: another reviewer was first)."""
        changed = await self.session.execute(
            update(SqlTrainingExample).where(SqlTrainingExample.example_id == example_id)
            .where(SqlTrainingExample.status == "REVIEW").values(status=status))
        await self.session.execute(
            update(SqlReviewItem).where(SqlReviewItem.example_id == example_id).where(SqlReviewItem.status == "OPEN")
            .values(status=status[:16]))
        return int(changed.rowcount or 0)  # type: ignore[attr-defined]

    async def set_answer(self, example_id: str, output_text: str, content_hash: str) -> None:
        """Replace a REVIEW example's assistant answer (already redacted) everywhere training reads it: the text
        column, the stored example and its last assistant message."""
        row = await self.session.get(SqlTrainingExample, example_id)
        if row is None:
            return
        data = dict(row.data)
        data["output_text"], data["content_hash"] = output_text, content_hash
        messages = [dict(m) for m in data.get("messages") or []]
        answers = [m for m in messages if m.get("role") == "assistant" and not m.get("tool_calls")]
        if answers:
            answers[-1]["content"] = output_text
            data["messages"] = messages
        row.output_text, row.content_hash, row.data = output_text, content_hash, data

    def add_human_rejection(self, example_id: str, agent_id: str | None, actor: str, note: str | None) -> None:
        """A reviewer's REJECT, counted and queryable with the filter's own rejections (reason ``human_review``)."""
        self.session.add(SqlRejectedExample(
            example_id=example_id, decision="REJECT", reason="human_review", code=None, rule="reviewer",
            detail=(f"rejected by {actor}" + (f": {note}" if note else ""))[:2000], agent_id=agent_id, payload={}))

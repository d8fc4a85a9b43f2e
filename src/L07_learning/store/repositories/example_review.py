"""Browsing and reviewing stored examples: filtered pages of ``l07_training_examples`` (the stored, secret-masked
text), the reason each got from the filter, and the close of a ``l07_review_queue`` item by a person."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal_column, or_, select, table, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import EXAMPLE_SEARCH, SQLITE_TRIGRAM, SqlRejectedExample, SqlReviewItem, SqlTrainingExample

_PAGE_COLUMNS = (
    SqlTrainingExample.example_id, SqlTrainingExample.status, SqlTrainingExample.task_type,
    SqlTrainingExample.agent_id, SqlTrainingExample.domain, SqlTrainingExample.quality_score,
    SqlTrainingExample.confidence, SqlTrainingExample.input_text, SqlTrainingExample.output_text,
    SqlTrainingExample.created_at,
)


TRIGRAM = 3
"""The trigram indexes answer texts of at least this many characters; shorter ones are matched row by row."""


def text_match(text: str, dialect: str) -> ColumnElement[bool]:
    """Examples whose id, input or output contains ``text`` in any letter case (``%`` and ``_`` are plain
    characters), answered from the text search index of migration 0009 (``EXAMPLE_SEARCH``) instead of reading
    every stored text."""
    columns = (SqlTrainingExample.input_text, SqlTrainingExample.output_text, SqlTrainingExample.example_id)
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    if len(text) < TRIGRAM or (dialect == "sqlite" and not SQLITE_TRIGRAM):
        # No trigram to look up (or no trigram index on an old SQLite): read the rows newest first (a short text
        # matches many, so a page fills early). lower(...) LIKE keeps PostgreSQL off its trigram index, which it
        # would read whole for such a pattern.
        return or_(*(func.lower(c).like(func.lower(pattern), escape="\\") for c in columns))
    if dialect == "sqlite":
        # A quoted phrase of the trigram tokenizer matches the rows holding it as a substring of one column.
        phrase = '"' + text.replace('"', '""') + '"'
        matching = (select(literal_column("rowid")).select_from(table(EXAMPLE_SEARCH))
                    .where(literal_column(EXAMPLE_SEARCH).op("MATCH")(phrase)))
        return literal_column(f"{SqlTrainingExample.__tablename__}.rowid").in_(matching)
    # PostgreSQL's pg_trgm GIN index serves ILIKE '%...%' itself.
    return or_(*(c.ilike(pattern, escape="\\") for c in columns))


class ExampleReviewRepository:
    """Data access for the example browser and the human review of REVIEW examples."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _filtered(self, stmt: Select[Any], *, status: str | None, reason: str | None, task_type: str | None,
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
            stmt = stmt.where(text_match(text, self.session.get_bind().dialect.name))
        return stmt

    async def page(self, *, status: str | None = None, reason: str | None = None, task_type: str | None = None,
                   agent_id: str | None = None, text: str | None = None, limit: int = 50,
                   offset: int = 0) -> tuple[list[dict[str, Any]], int | None, bool]:
        """One page of examples, newest first, how many match in all, and whether more follow; each row names the
        filter's reasons. A text search is not counted (a common word matches most examples): its total is None."""
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

"""Filter outcomes: decided examples in ``l07_training_examples`` (status + redacted/masked text), every non-accept
decision in ``l07_rejected_examples`` with its reason code, REVIEW items in ``l07_review_queue``, and the reads the
filter needs (stored hashes, execution keys, the accepted pool)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import SqlRejectedExample, SqlReviewItem, SqlTrainingExample
from ._upsert import chunks

_UPDATED_COLUMNS = (
    "status", "content_hash", "quality_score", "confidence", "composite_score", "input_text", "output_text", "data",
    "agent_id", "task_type", "domain",
)


class FilterDecisionRepository:
    """Data access for the quality filter's decisions."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def upsert_examples(self, rows: list[dict[str, Any]]) -> None:
        """Insert decided examples, or update status and text of ones the extractor stored as PENDING."""
        if not rows:
            return
        table = SqlTrainingExample.__table__
        module = postgresql if self.session.get_bind().dialect.name == "postgresql" else sqlite
        for part in chunks(rows):
            stmt = module.insert(table).values(part)
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.example_id], set_={c: getattr(stmt.excluded, c) for c in _UPDATED_COLUMNS}
            )
            await self.session.execute(stmt)

    def add_rejection(
        self, example_id: str, decision: str, reason: str, code: str | None, rule: str | None, detail: str | None,
        agent_id: str | None, payload: dict[str, Any],
    ) -> None:
        """Record one non-accept decision (``payload`` must already have secrets masked)."""
        self.session.add(SqlRejectedExample(
            example_id=example_id, decision=decision, reason=reason, code=code, rule=rule, detail=detail,
            agent_id=agent_id, payload=payload,
        ))

    def add_review(self, example_id: str, reason: str, payload: dict[str, Any]) -> None:
        self.session.add(SqlReviewItem(example_id=example_id, reason=reason, payload=payload, status="OPEN"))

    async def stored_hashes(self, hashes: list[str], exclude_ids: set[str]) -> dict[str, str]:
        """``{content_hash: example_id}`` for hashes whose first stored example (any status) is another example.

        The earliest stored example of a hash is the original (the later arrival is the duplicate), so an example
        that is itself that original is never reported, even when later duplicates were stored after it.
        """
        found: dict[str, str] = {}
        first: set[str] = set()
        for part in chunks(sorted(set(hashes))):
            rows = await self.session.execute(
                select(SqlTrainingExample.content_hash, SqlTrainingExample.example_id)
                .where(SqlTrainingExample.content_hash.in_(part))
                .order_by(SqlTrainingExample.created_at, SqlTrainingExample.example_id)
            )
            for h, eid in rows.all():
                if h in first:
                    continue
                first.add(h)
                if eid not in exclude_ids:
                    found[h] = eid
        return found

    async def mark_rejected(self, example_ids: list[str]) -> None:
        """Set stored (PENDING) rows of examples the filter rejected without storing them (duplicates) to REJECTED."""
        for part in chunks(sorted(set(example_ids))):
            await self.session.execute(
                update(SqlTrainingExample).where(SqlTrainingExample.example_id.in_(part))
                .where(SqlTrainingExample.status == "PENDING").values(status="REJECTED")
            )

    async def stored_execution_keys(self, keys: list[tuple[str, str]], exclude_ids: set[str]) -> dict[tuple[str, str], str]:
        """``{(source_type, execution_id): example_id}`` already stored under another example id."""
        found: dict[tuple[str, str], str] = {}
        for part in chunks(sorted(set(keys))):
            rows = await self.session.execute(
                select(SqlTrainingExample.source_type, SqlTrainingExample.execution_id, SqlTrainingExample.example_id)
                .where(tuple_(SqlTrainingExample.source_type, SqlTrainingExample.execution_id).in_(part))
            )
            for st, exe, eid in rows.all():
                if eid not in exclude_ids:
                    found[(st, exe)] = eid
        return found

    async def pool_ids(self, statuses: tuple[str, ...]) -> list[tuple[str, str]]:
        """``(example_id, status)`` of every stored example in ``statuses``."""
        rows = await self.session.execute(
            select(SqlTrainingExample.example_id, SqlTrainingExample.status).where(SqlTrainingExample.status.in_(statuses))
        )
        return [(r[0], r[1]) for r in rows.all()]

    async def pool_texts(self, example_ids: list[str]) -> list[tuple[str, str, str, str, str, str]]:
        """``(example_id, status, input_text, output_text, task_type, domain)`` for the given ids."""
        out: list[tuple[str, str, str, str, str, str]] = []
        for part in chunks(example_ids):
            rows = await self.session.execute(
                select(
                    SqlTrainingExample.example_id, SqlTrainingExample.status, SqlTrainingExample.input_text,
                    SqlTrainingExample.output_text, SqlTrainingExample.task_type, SqlTrainingExample.domain,
                ).where(SqlTrainingExample.example_id.in_(part))
            )
            out += [tuple(r) for r in rows.all()]  # type: ignore[misc]
        return out

    async def list_rejected(
        self, reason: str | None = None, code: str | None = None, decision: str | None = None, limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Stored non-accept decisions, newest first; ``reason`` matches the reason or its code (``E7111``)."""
        stmt = select(SqlRejectedExample).order_by(SqlRejectedExample.id.desc()).limit(limit)
        if reason:
            stmt = stmt.where((SqlRejectedExample.reason == reason) | (SqlRejectedExample.code == reason)
                              | (SqlRejectedExample.rule == reason))
        if code:
            stmt = stmt.where(SqlRejectedExample.code == code)
        if decision:
            stmt = stmt.where(SqlRejectedExample.decision == decision.upper())
        return [
            {
                "id": r.id, "example_id": r.example_id, "decision": r.decision, "reason": r.reason, "code": r.code,
                "rule": r.rule, "detail": r.detail, "agent_id": r.agent_id, "payload": r.payload,
                "created_at": r.created_at,
            }
            for r in (await self.session.scalars(stmt)).all()
        ]

    async def counts_by_reason(self) -> dict[str, int]:
        """Number of stored decisions per ``decision/reason``."""
        rows = await self.session.execute(
            select(SqlRejectedExample.decision, SqlRejectedExample.reason, func.count()).group_by(
                SqlRejectedExample.decision, SqlRejectedExample.reason
            )
        )
        return {f"{d}/{r}": int(n) for d, r, n in rows.all()}

    async def open_reviews(self, limit: int = 100) -> list[dict[str, Any]]:
        stmt = select(SqlReviewItem).where(SqlReviewItem.status == "OPEN").order_by(SqlReviewItem.id).limit(limit)
        return [
            {"id": r.id, "example_id": r.example_id, "reason": r.reason, "created_at": r.created_at}
            for r in (await self.session.scalars(stmt)).all()
        ]

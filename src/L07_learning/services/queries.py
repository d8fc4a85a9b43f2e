"""Read-only questions about what is stored, for the CLI and the API (which never open a repository themselves).

Each method opens its own short transaction and returns plain models or rows; nothing here changes state
(a read of training data adds its audit row).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..models.reward_signal import PreferencePair
from ..models.training_example import TrainingExample
from ..store.db import Database
from ..store.repositories.audit import audit, list_audit
from ..store.repositories.events import RejectedEvent, RejectedEventRepository
from ..store.repositories.examples import ExampleRepository
from ..store.repositories.filter_decisions import FilterDecisionRepository
from ..store.repositories.joins import JoinRepository, JoinRow
from ..store.repositories.rewards import RewardRepository
from ..store.repositories.status import table_counts


class Queries:
    """Read access to the stored examples, events, joins, preference pairs and audit log.

    Args:
        db: The database to read.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def table_counts(self) -> dict[str, int]:
        """Number of rows in every L07 table."""
        async with self.db.session() as session:
            return await table_counts(session)

    async def examples(self, status: str | None = None, limit: int | None = None, *,
                       audited: bool = False) -> list[TrainingExample]:
        """Stored examples, oldest first, optionally of one status (PENDING, ACCEPTED, ...).

        Args:
            audited: A person reads the texts (``l07 examples list``): record the read of training data in the audit
                log (contract §7.4), in the read's own transaction. Internal batch reads leave it off.
        """
        async with self.db.session() as session:
            examples = await ExampleRepository(session).list(status=status, limit=limit)
            if audited:
                await audit(session, "training_data.read", "training_example", None,
                            details={"status": status, "limit": limit, "returned": len(examples)})
            return examples

    async def count_examples(self, status: str | None = None) -> int:
        """Number of stored examples, optionally of one status."""
        async with self.db.session() as session:
            return await ExampleRepository(session).count(status=status)

    async def filter_rejections(self, reason: str | None = None, decision: str | None = None,
                                limit: int = 100) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The quality filter's non-accept decisions, newest first, and the totals per ``decision/reason``."""
        async with self.db.session() as session:
            repo = FilterDecisionRepository(session)
            return await repo.list_rejected(reason=reason, decision=decision, limit=limit), await repo.counts_by_reason()

    async def rejected_events(self, code: str | None = None, limit: int = 100) -> list[RejectedEvent]:
        """Events refused at ingestion (contract §1.9), newest first."""
        async with self.db.session() as session:
            return await RejectedEventRepository(session).list(code=code, limit=limit)

    async def join_counts(self) -> dict[str, int]:
        """Rows of the pending-join store per status."""
        async with self.db.session() as session:
            return await JoinRepository(session).count_by_status()

    async def joins(self, status: str, limit: int = 100) -> list[JoinRow]:
        """Rows of the pending-join store in one status."""
        async with self.db.session() as session:
            return await JoinRepository(session).list(status, limit)

    async def preference_pairs(self) -> list[PreferencePair]:
        """Every stored preference pair."""
        async with self.db.session() as session:
            return await RewardRepository(session).list_pairs()

    async def audit_log(self, *, action: str | None = None, actor: str | None = None,
                        resource_type: str | None = None, resource_id: str | None = None,
                        request_id: str | None = None, result: str | None = None, since: datetime | None = None,
                        limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Audit rows matching every given filter, newest first, and how many match in all."""
        async with self.db.session() as session:
            return await list_audit(session, action=action, actor=actor, resource_type=resource_type,
                                    resource_id=resource_id, request_id=request_id, result=result, since=since,
                                    limit=limit, offset=offset)

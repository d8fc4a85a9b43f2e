"""People reading and deciding examples: filtered pages of the stored examples (their secret-masked text only), and
the human decision on an example the filter sent to REVIEW (contract §3.3 "REVIEW"), for the console and the API.

A reviewer's ACCEPT makes the example ACCEPTED (so the next dataset version picks it up); a REJECT makes it REJECTED
and counts it under the reason ``human_review``. Both close its review-queue item and are audited in the same
transaction. Reads of example texts are audited as reads of training data (contract §7.4).
"""

from __future__ import annotations

from typing import Any, Literal

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.training_example import ExampleStatus, compute_content_hash
from ..store.db import Database
from .filtering.redaction import redact_for_storage
from ..store.repositories.audit import audit
from ..store.repositories.example_review import ExampleReviewRepository

__all__ = ["ExampleNotReviewable", "ExampleReview"]

MAX_PAGE = 200


class ExampleNotReviewable(L07Error):
    """E7110 for an unknown example (HTTP 404) or one no longer in REVIEW (HTTP 409)."""

    def __init__(self, example_id: str, status: str | None) -> None:
        message = (f"no example with id {example_id}" if status is None
                   else f"example {example_id} is {status}, not REVIEW: only REVIEW examples are decided by a person")
        super().__init__(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, message, example_id=example_id, status=status)
        self._status = 404 if status is None else 409

    @property
    def http_status(self) -> int:
        return self._status


def _status(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return ExampleStatus(value.strip().upper()).value
    except ValueError:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                       f"unknown status {value!r}; allowed: {', '.join(s.value for s in ExampleStatus)}",
                       allowed=[s.value for s in ExampleStatus]) from None


class ExampleReview:
    """Browse stored examples and decide REVIEW ones.

    Args:
        db: The database holding the examples, the filter's decisions and the review queue.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(self, *, status: str | None = None, reason: str | None = None, task_type: str | None = None,
                   agent_id: str | None = None, text: str | None = None, limit: int = 50, offset: int = 0,
                   actor: str | None = None) -> dict[str, Any]:
        """``{data, count, more, limit, offset}``: one page of examples, newest first, with the filter's reasons;
        ``count`` is None for a text search (``more`` says whether a next page exists). The read is audited.

        Raises:
            L07Error: E7110 for an unknown status or a page size outside 1..200.
        """
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"limit must be 1..{MAX_PAGE} and offset >= 0", limit=limit, offset=offset)
        filters = {"status": _status(status), "reason": reason or None, "task_type": task_type or None,
                   "agent_id": agent_id or None, "text": text or None}
        async with self.db.session() as session:
            rows, total, more = await ExampleReviewRepository(session).page(**filters, limit=limit, offset=offset)
            await audit(session, "training_data.read", "training_example", None, actor=actor,
                        details={**{k: v for k, v in filters.items() if v}, "limit": limit, "offset": offset,
                                 "returned": len(rows)})
        return {"data": rows, "count": total, "more": more, "limit": limit, "offset": offset}

    async def get(self, example_id: str, actor: str | None = None) -> dict[str, Any]:
        """One example with the filter's reasons (audited read); 404 E7110 when unknown."""
        async with self.db.session() as session:
            row = await ExampleReviewRepository(session).get(example_id)
            if row is None:
                raise ExampleNotReviewable(example_id, None)
            await audit(session, "training_data.read", "training_example", example_id, actor=actor,
                        details={"returned": 1})
        return row

    async def choices(self) -> dict[str, list[str]]:
        """Stored task types and agents (filter choices)."""
        async with self.db.session() as session:
            repo = ExampleReviewRepository(session)
            return {"task_type": await repo.distinct("task_type"), "agent_id": await repo.distinct("agent_id")}

    async def decide(self, example_id: str, decision: Literal["accept", "reject"], actor: str,
                     note: str | None = None, output_text: str | None = None) -> dict[str, Any]:
        """A person's decision on a REVIEW example: ACCEPTED or REJECTED, queue item closed, audited. With
        ``output_text`` (accept only) the reviewer's corrected answer replaces the stored one, stored redacted like
        every stored text.

        Raises:
            ExampleNotReviewable: unknown example (404) or not in REVIEW any more (409); nothing changes.
            L07Error: E7110 for a decision other than accept or reject, or an edited answer that is empty or comes
                with a reject.
        """
        if decision not in ("accept", "reject"):
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"decision must be accept or reject, not {decision!r}", decision=decision)
        edited = None
        if output_text is not None:
            if decision != "accept" or not output_text.strip():
                raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                               "an edited answer must be non-empty and comes with decision accept only",
                               decision=decision)
            edited = str(redact_for_storage(output_text.strip()))
        status = ExampleStatus.ACCEPTED.value if decision == "accept" else ExampleStatus.REJECTED.value
        async with self.db.session() as session:
            repo = ExampleReviewRepository(session)
            row = await repo.get(example_id)
            if row is None or row["status"] != ExampleStatus.REVIEW.value:
                raise ExampleNotReviewable(example_id, None if row is None else row["status"])
            if not await repo.set_reviewed(example_id, status):
                raise ExampleNotReviewable(example_id, "decided by another reviewer")
            if status == ExampleStatus.REJECTED.value:
                repo.add_human_rejection(example_id, row["agent_id"], actor, note)
            if edited is not None:
                await repo.set_answer(example_id, edited, compute_content_hash(row["input_text"], edited))
            await audit(session, "example.review", "training_example", example_id, actor=actor,
                        details={"decision": decision, "from_status": row["status"], "to_status": status,
                                 "note": note, "edited": edited is not None})
        return {"example_id": example_id, "status": status, "decided_by": actor, "decision": decision,
                "edited": edited is not None}

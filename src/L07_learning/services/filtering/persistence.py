"""Storing one batch's decisions in one transaction: decided examples, non-accept decisions with their reasons, the
review queue, PII-redaction audit rows, the batch's alerts, and the RLHF data of the accepted examples (secrets
masked and PII redacted in everything stored)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ...events.publisher import EventPublisher
from ...models._base import new_id
from ...models.error_codes import L07Error, L07ErrorCode
from ...store.db import Database
from ...store.repositories.audit import audit
from ...store.repositories.examples import example_row
from ...store.repositories.filter_decisions import FilterDecisionRepository
from ..ingestion.accepted import record_accepted
from .decisions import Decision, FilterReport
from .redaction import redact_for_storage

# Duplicates and incomplete inputs live in the rejected table only: stored, a duplicate would make the original look
# like the later arrival on a replay (and an execution duplicate would break the (source_type, execution_id) key).
_NOT_STORED = ("duplicate", "incomplete")


async def persist(db: Database, report: FilterReport, redact: Callable[[Any], Any] = redact_for_storage) -> None:
    """Store ``report``; ``redact`` gives each stored payload its form (secrets masked, PII redacted, in every field:
    chat messages, tool parameters and structured input included, not only the texts the filter rewrote).

    Raises:
        L07Error: E7014 (storage write failure); nothing of the batch is stored (one transaction), so a retry
            re-decides it, and an example another worker stored meanwhile then shows up as a duplicate.
    """
    try:
        await _store(db, report, redact)
    except SQLAlchemyError as exc:
        raise L07Error(L07ErrorCode.STORAGE_WRITE_FAILURE,
                       f"storing {len(report.decisions)} filter decisions failed: {exc.__class__.__name__}",
                       examples=len(report.decisions)) from exc


async def _store(db: Database, report: FilterReport, redact: Callable[[Any], Any]) -> None:
    rows = []
    async with db.session() as session:
        repo = FilterDecisionRepository(session)
        for d in report.decisions:
            raw = d.example.model_dump(mode="json") if d.example else (
                d.raw if isinstance(d.raw, dict) else {"repr": repr(d.raw)[:4000]})
            payload = redact(raw)
            if d.example is not None and d.reason not in _NOT_STORED:
                rows.append(example_row(d.example, d.composite, payload))
            if d.decision is not Decision.ACCEPT:
                repo.add_rejection(d.example_id or f"unparsed-{new_id()}", d.decision.value, d.reason, d.code,
                                   d.rule, d.detail, d.example.agent_id if d.example else None, payload)
            if d.decision is Decision.REVIEW and d.example_id:
                repo.add_review(d.example_id, d.reason, payload)
            if d.example is not None and d.example.metadata.get("pii_redacted") and d.decision is not Decision.REJECT:
                await audit(session, "example.pii_redacted", "training_example", d.example_id,
                            details={"kinds": d.example.metadata.get("pii_kinds", []), "decision": d.decision.value},
                            error_code=L07ErrorCode.PII_DETECTED_IN_TRAINING_DATA.value)
        await repo.upsert_examples(rows)
        # Pairs and signal answers only from what was accepted, as it is stored (ingestion.accepted).
        await record_accepted(session, [d.example for d in report.decisions
                                        if d.decision is Decision.ACCEPT and d.example is not None], redact)
        await repo.mark_rejected([d.example_id for d in report.decisions if d.example_id and d.reason in _NOT_STORED])
        publisher = EventPublisher()
        for a in report.alerts:
            await publisher.publish(session, "learning.learning_system_alert", a, subject=a["alert_id"])

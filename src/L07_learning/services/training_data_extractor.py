"""``TrainingDataExtractor``: the seed's extraction interface over the shared ingestion pipeline (contract §0, §1).

The extractor persists what extraction itself owns (processed-event keys, pending joins, rejections, reward signals,
preference pairs) and returns the examples; storing them after filtering is the caller's job
(``LearningService.process_event``). Callers that must not lose examples between the two steps pass
``on_examples`` to ``services.ingestion.ingest_events`` instead, which runs inside the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..events.cloudevent import RawEvent
from ..models.training_example import TrainingExample
from ..settings import Settings
from ..store.db import Database
from .ingestion.pipeline import IngestionPipeline
from .ingestion.results import BatchResult


class TrainingDataExtractor:
    """Turns consumed CloudEvents into chat-format training examples.

    Args:
        db: Database for joins and idempotency keys (default: the configured one).
        settings: Join window, TTL, allow-list (default: ``get_settings()``).
    """

    def __init__(self, db: Database | None = None, settings: Settings | None = None) -> None:
        self.pipeline = IngestionPipeline(db=db, settings=settings)
        self.last_result: BatchResult | None = None

    async def extract_from_event(self, event: Any) -> TrainingExample | None:
        """Extract from one event (a ``CloudEvent``, dict, JSON text/bytes or ``RawEvent``).

        Returns:
            The example the event completed, or None when it is a duplicate, ignored, waiting for its join partner,
            or invalid (then it is stored in ``l07_rejected_events`` with its code; nothing is raised).
        """
        examples = await self.extract_batch([event])
        return examples[0] if examples else None

    async def extract_batch(self, events: Iterable[Any]) -> list[TrainingExample]:
        """Extract from many events in one transaction; output keeps input order, duplicate ids are collapsed.

        Raises:
            L07Error: only E7014 when the database cannot store the batch (nothing of the batch is kept then).
        """
        raw = [_raw(e) for e in events]
        self.last_result = await self.pipeline.ingest(raw, transport="inprocess", store_examples=False)
        return self.last_result.examples


def _raw(event: Any) -> Any:
    # A cloudevents-SDK or our own CloudEvent object is turned into its structured-mode dict.
    if isinstance(event, (RawEvent, Mapping, str, bytes, bytearray)):
        return event
    to_dict = getattr(event, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    get_attributes = getattr(event, "get_attributes", None)
    if callable(get_attributes):
        return {**dict(get_attributes()), "data": getattr(event, "data", None)}
    return event

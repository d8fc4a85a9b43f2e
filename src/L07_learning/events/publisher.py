"""Publishing L07's own events (contract §2) through the transactional outbox.

``publish`` only writes a row in the caller's transaction, so an event exists exactly when the state change it
describes committed; ``events/outbox_relay.py`` delivers rows to the configured sinks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..models._base import new_id, utcnow
from ..observability.logging import REQUEST_ID
from ..store.repositories.outbox import OutboxRepository

L07_SOURCE = "https://agentic.local/layers/l07"
TYPE_PREFIX = "com.agentic."


def full_type(event_type: str) -> str:
    """``learning.x`` -> ``com.agentic.learning.x`` (published types carry the prefix, contract §8 #21)."""
    if event_type.startswith(TYPE_PREFIX):
        return event_type
    if not event_type.startswith("learning."):
        event_type = f"learning.{event_type}"
    return TYPE_PREFIX + event_type


def build_cloudevent(event_type: str, data: dict[str, Any], subject: str | None = None) -> dict[str, Any]:
    """A CloudEvents 1.0 envelope for an L07 event."""
    name = full_type(event_type).split("learning.", 1)[1]
    event: dict[str, Any] = {
        "specversion": "1.0",
        "type": full_type(event_type),
        "source": L07_SOURCE,
        "id": new_id(),
        "time": utcnow().isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "dataschema": f"{name}-v1",
        "data": data,
    }
    if subject:
        event["subject"] = subject
    rid = REQUEST_ID.get()
    if rid:
        event["l07requestid"] = rid
    return event


class EventPublisher:
    """Writes L07 events into the outbox of the caller's transaction."""

    async def publish(self, session: AsyncSession, event_type: str, data: dict[str, Any], subject: str | None = None) -> dict[str, Any]:
        """Add one event to the outbox; it is delivered only if the surrounding transaction commits.

        Returns:
            The CloudEvent as it will be delivered.
        """
        event = build_cloudevent(event_type, data, subject)
        OutboxRepository(session).add(event, subject)
        return event

"""Rejected events as ``l07_rejected_events`` rows: the E7xxx code, the reason and the raw payload, redacted (contract
§7.4: a rejected event's secrets and PII never rest in clear either)."""

from __future__ import annotations

import logging
from typing import Any

from ...events.cloudevent import RawEvent, raw_text
from ...models.error_codes import L07Error
from ..filtering.redaction import StorageRedactor
from .parsing import Parsed
from .results import ItemResult

log = logging.getLogger(__name__)


def clean(text: str) -> str:
    """Text a database stores as it is: no NUL, no lone surrogates."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class Rejections:
    """Collects the rejections of one batch (``rows``) and marks their events rejected in ``items``."""

    def __init__(self, redact: StorageRedactor, transport: str) -> None:
        self._redact = redact
        self.transport = transport
        self.rows: list[dict[str, Any]] = []

    def reject(self, items: dict[int, ItemResult], p: Parsed, err: L07Error, raw: Any) -> None:
        items[p.index] = ItemResult("rejected", code=err.code.value, reason=err.message)
        body = raw.body if isinstance(raw, RawEvent) else raw
        ev = p.event
        self.rows.append({
            "event_id": ev.id[:512] if ev else err.details.get("event_id"),
            "source": ev.source[:512] if ev else err.details.get("event_source"),
            "event_type": ev.type[:256] if ev else None,
            "code": err.code.value,
            "reason": self._redact.text(clean(err.message))[:4000],
            "transport": self.transport,
            "raw_payload": self._stored_payload(clean(raw_text(body))),
        })
        log.warning("event rejected %s: %s", err.code.value, err.message,
                    extra={"event_id": ev.id if ev else None, "transport": self.transport})

    def _stored_payload(self, text: str) -> str:
        """The rejected payload, redacted. A payload the JSON-aware redaction cannot walk (nested past the
        interpreter's recursion limit: exactly what gets rejected as E7015) is redacted as plain text instead."""
        try:
            return self._redact.raw(text)
        except Exception:  # noqa: BLE001 - RecursionError and kin: the text form still masks secrets and PII
            return self._redact.text(text)

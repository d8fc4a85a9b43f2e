"""Step 1 of a batch, without I/O: one raw event in, a ``Parsed`` (event, kind, record, or the error) out.

Envelope (structured, binary, L01), nesting depth, type, source allow-list, ``data`` fields and the lengths of strings
bound for key columns. A failure becomes a ``Parsed`` carrying its E70xx error; it never raises, so one event never
stops its batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ...events.cloudevent import PLAN, RESPONSE, SCORE, TRACE, CloudEvent, RawEvent, check_source, read_event
from ...models.error_codes import L07Error, L07ErrorCode
from ...settings import Settings
from .isolation import first_line
from .provenance import EventProvenance
from .records import check_storable, may_hold_unstorable, parse_plan, parse_response, parse_score, parse_trace

log = logging.getLogger(__name__)

_PARSERS = {SCORE: parse_score, PLAN: parse_plan, RESPONSE: parse_response}


@dataclass
class Parsed:
    """One input event after parsing: ``index`` in the batch; ``kind`` ``None`` for a type L07 does not consume;
    ``error`` set when it is to be rejected."""

    index: int
    event: CloudEvent | None
    kind: str | None
    record: dict[str, Any] | None
    error: L07Error | None


class EventParser:
    """Parses raw events under one configuration (size and depth limits, trace step limit, source allow-list)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._allow_list = tuple(settings.source_allow_list)

    def parse(self, index: int, raw: Any, provenance: EventProvenance | None = None) -> Parsed:
        """Parse one raw event; never raises (errors are returned). ``provenance``: the caller's binding and the
        producer signature check (E7115), applied to every consumed kind."""
        body, headers = (raw.body, raw.headers) if isinstance(raw, RawEvent) else (raw, None)
        event: CloudEvent | None = None
        settings = self.settings
        try:
            event, plain = read_event(body, headers=headers, max_bytes=settings.max_event_bytes,
                                      max_depth=settings.max_event_depth)
            # Checked after parsing so that a refused source still has its (source, id) claimed: a replay is a no-op.
            check_source(event.source, self._allow_list)
            kind = event.kind
            if kind is None:
                return Parsed(index, event, None, None, None)
            record = parse_trace(event, settings.max_trace_steps) if kind == TRACE else _PARSERS[kind](event)
            if not plain or may_hold_unstorable(body):
                check_storable(record)
            if provenance is not None:
                provenance.check(event, kind, record, body, headers)
            return Parsed(index, event, kind, record, None)
        except L07Error as exc:
            return Parsed(index, event, event.kind if event else None, None, exc)
        except Exception as exc:  # noqa: BLE001 - whatever a producer sends is a rejected event, never a crash
            log.warning("E7015 event %d could not be parsed", index, exc_info=True)
            err = L07Error(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"unparseable event: {first_line(exc)}")
            return Parsed(index, event, None, None, err)

"""``POST /api/v1/events``: CloudEvents over HTTP, structured or binary mode, one event or a batch.

The router only splits the request into raw events; parsing, validation, deduplication, joins, extraction and
rejection storage are the shared ingestion path (``services.ingestion``), the same code the file and Redis sources
run. An invalid event is stored in ``l07_rejected_events`` with its code before the answer goes out.

The caller's key binding travels with the events: a producer key may post only the sources and kinds it is bound
to (``services/ingestion/provenance.py``); anything else is rejected with E7115, stored, counted and audited.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ...models.error_codes import L07Error, L07ErrorCode
from ...services.ingestion.pipeline import RawEvent, ingest_and_filter
from ..deps import CanIngest, ContextDep
from ..errors import error_responses

router = APIRouter(prefix="/api/v1/events", tags=["events"])

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"

_CLOUDEVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A CloudEvents 1.0 event in structured mode (contract §1.1)",
    "required": ["specversion", "id", "source", "type"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1, "examples": ["https://agentic.local/layers/l02"]},
        "type": {"type": "string", "minLength": 1, "examples": ["com.agentic.execution.trace_generated"]},
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"type": "string"},
        "dataschema": {"type": "string"},
        "subject": {"type": "string"},
        "data": {"description": "The event payload (contract §1.2-§1.5)"},
    },
}
_BATCH_SCHEMA: dict[str, Any] = {"type": "array", "items": _CLOUDEVENT_SCHEMA, "minItems": 1}
_REQUEST_BODY = {
    "required": True,
    "description": (
        "Structured mode: one event (`application/cloudevents+json` or `application/json`) or a batch "
        "(`application/cloudevents-batch+json`, or a JSON array). Binary mode: the `ce-specversion`, `ce-id`, "
        "`ce-source` and `ce-type` headers carry the attributes and the body is `data`."
    ),
    "content": {
        STRUCTURED: {"schema": _CLOUDEVENT_SCHEMA},
        BATCH: {"schema": _BATCH_SCHEMA},
        "application/json": {"schema": {"oneOf": [_CLOUDEVENT_SCHEMA, _BATCH_SCHEMA]}},
    },
}


class EventResult(BaseModel):
    """What became of one event, in request order."""

    index: int
    status: str = Field(description="extracted, pending, processed, duplicate, ignored or rejected")
    code: str | None = Field(default=None, description="E7xxx code when rejected")
    reason: str | None = None
    examples: int = Field(default=0, description="Training examples this event completed")


class IngestResponse(BaseModel):
    """Counts of the request plus one result per event."""

    accepted: int = Field(description="Events taken in (stored, joined, extracted, or ignored by type)")
    rejected: int
    duplicates: int
    examples_extracted: int
    examples_accepted: int = Field(description="Extracted examples the quality filter accepted")
    pending_join: int
    rejected_by_code: dict[str, int]
    results: list[EventResult]


def _split(request: Request, body: bytes, max_batch: int) -> tuple[list[Any], bool]:
    """The raw events of a request and whether it was a batch."""
    headers = request.headers
    if "ce-specversion" in headers:
        carried = {k: v for k, v in headers.items() if k.startswith("ce-") or k == "content-type"}
        return [RawEvent(body, carried)], False
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    looks_like_array = body.lstrip()[:1] == b"["
    if media != BATCH and not looks_like_array:
        return [body], False
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        return [body], False  # unparseable: the pipeline rejects and stores it as one event (E7015)
    if not isinstance(items, list):
        return [body], False
    if not items:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "the batch holds no events")
    if len(items) > max_batch:
        raise L07Error(
            L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
            f"the batch holds {len(items)} events; at most {max_batch} per request",
            events=len(items), max_batch_events=max_batch,
        )
    return items, True


@router.post(
    "",
    name="events.ingest",
    status_code=202,
    response_model=IngestResponse,
    responses=error_responses(400, 401, 403, 413, 429, 500),
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def ingest(request: Request, principal: CanIngest, ctx: ContextDep) -> IngestResponse:
    """Ingest CloudEvents. A single invalid event answers 400 with its code; in a batch, invalid events are
    reported per item and the valid ones are kept. Every rejected event is stored with its code."""
    body = await request.body()
    raws, is_batch = _split(request, body, ctx.config.max_batch_events)
    if ctx.limiter is not None:
        ctx.limiter.acquire(principal.key_id, cost=len(raws))
    # The same path as every other source: ingest (stored PENDING), then the quality filter decides.
    result, accepted = await ingest_and_filter(raws, "http", db=ctx.db, settings=ctx.settings,
                                               quality_filter=ctx.quality_filter, binding=principal.event_binding())
    summary = result.summary
    request.state.audit_details = {
        "events": summary.events_read,
        "rejected": summary.events_rejected,
        "duplicates": summary.duplicates,
        "examples_extracted": summary.examples_extracted,
        "examples_accepted": len(accepted),
        "batch": is_batch,
        "rejected_by_code": dict(summary.rejected_by_code),
    }
    items = [
        EventResult(index=i, status=item.status, code=item.code, reason=item.reason, examples=len(item.examples))
        for i, item in enumerate(result.items)
    ]
    if not is_batch and items[0].status == "rejected":
        raise L07Error(items[0].code or L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, items[0].reason, stored_as="rejected_event")
    return IngestResponse(
        accepted=summary.events_read - summary.events_rejected - summary.duplicates,
        rejected=summary.events_rejected,
        duplicates=summary.duplicates,
        examples_extracted=summary.examples_extracted,
        examples_accepted=len(accepted),
        pending_join=summary.pending_join,
        rejected_by_code=dict(summary.rejected_by_code),
        results=items,
    )

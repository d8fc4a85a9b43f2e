"""CloudEvents 1.0 envelopes as L07 consumes them (contract §1.1, §1.9).

Choice: a small Pydantic v2 model of the CloudEvents 1.0 spec instead of the ``cloudevents`` SDK. Why:

* every failure must become an ``L07Error`` with the contract's code (E7015 for a broken envelope, E7110 for a wrong
  attribute type); a Pydantic model gives us the failing field precisely, the SDK raises its own exception types;
* the hot path (``benchmarks/extract.py``) parses tens of thousands of events per second; Pydantic's compiled
  validator is faster than the SDK's attribute-by-attribute conversion, and pydantic is already a dependency;
* three wire forms must collapse onto one model: structured JSON, HTTP binary mode (``ce-*`` headers + body) and the
  platform's L01 envelope ``{event_type, aggregate_type, aggregate_id, payload, metadata, timestamp}``, which the SDK
  does not know.

``parse_event`` accepts any of these forms (bytes, str or dict) and returns a ``CloudEvent``; ``event_kind`` maps the
contract's type strings (short, prefixed and the seed's aliases) onto the four consumed kinds.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..models.error_codes import L07Error, L07ErrorCode
from . import json_text

TRACE, SCORE, PLAN, RESPONSE = "trace", "score", "plan", "response"

# Exact, case-sensitive type strings (contract §1.1): short, prefixed, and the seed's aliases.
EVENT_KINDS: dict[str, str] = {
    "execution.trace_generated": TRACE,
    "com.agentic.execution.trace_generated": TRACE,
    "task.completed": TRACE,
    "evaluation.quality_score_computed": SCORE,
    "com.agentic.evaluation.quality_score_computed": SCORE,
    "evaluation.completed": SCORE,
    "planning.decision_recorded": PLAN,
    "com.agentic.planning.decision_recorded": PLAN,
    "plan.created": PLAN,
    "model.response_logged": RESPONSE,
    "com.agentic.model.response_logged": RESPONSE,
}
ALIAS_TYPES = frozenset({"task.completed", "evaluation.completed", "plan.created"})

# L01 envelopes are the platform's event-store records; their id namespace keeps derived ids stable across replays.
_L01_NAMESPACE = uuid.UUID("6f0e5b8e-3b7a-4c55-9d6e-07a1e0000001")
_L01_KEYS = frozenset({"event_type", "aggregate_type", "aggregate_id", "payload"})

# Nesting allowed in one event, envelope included. Real traces nest under 10 levels; serialisers further down refuse
# ~255 (pydantic's model_dump), so a deeper event would wait in the join table and fail every batch that completes it.
MAX_DEPTH = 64
# Lengths of the envelope attributes that become key columns (``l07_processed_events``: String(512)/String(256)).
MAX_ID_LENGTH = 512
MAX_TYPE_LENGTH = 256


@dataclass(frozen=True)
class RawEvent:
    """One event as a transport delivered it: a body plus, for HTTP binary mode, its headers."""

    body: bytes | str | Mapping[str, Any]
    headers: Mapping[str, str] | None = None


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event. Extension attributes are kept (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow", frozen=False)

    specversion: str
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    source: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    type: str = Field(min_length=1, max_length=MAX_TYPE_LENGTH)
    time: datetime | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    subject: str | None = None
    data: Any = None

    @field_validator("specversion")
    @classmethod
    def _v1(cls, v: str) -> str:
        if v != "1.0":
            raise ValueError("specversion must be '1.0'")
        return v

    @property
    def kind(self) -> str | None:
        """``trace`` / ``score`` / ``plan`` / ``response``, or None for a type L07 does not consume."""
        return EVENT_KINDS.get(self.type)

    @property
    def is_alias(self) -> bool:
        """True for the seed's alias types, whose data may use fallback field names (contract §1.2, §1.3)."""
        return self.type in ALIAS_TYPES

    def to_dict(self) -> dict[str, Any]:
        """The event as a structured-mode JSON object."""
        out = self.model_dump(mode="json", exclude_none=True)
        if self.time is not None:
            out["time"] = self.time.isoformat().replace("+00:00", "Z")
        return out


_STRING_ATTRIBUTES = ("id", "source", "type", "subject", "datacontenttype", "dataschema")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_storable_attributes(event: CloudEvent) -> None:
    """E7110 for an envelope string PostgreSQL cannot store (NUL, lone surrogate): these become key columns and
    log fields, and one such value would fail the whole transaction of its batch."""
    for name in _STRING_ATTRIBUTES:
        v = getattr(event, name)
        if v is not None and ("\x00" in v or (not v.isascii() and not _utf8(v))):
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"invalid CloudEvent attribute {name!r}: contains NUL or unpaired surrogate characters",
                           field=name)


def _reject(code: L07ErrorCode, message: str, **context: Any) -> L07Error:
    return L07Error(code, message, **context)


def _decode(raw: bytes | str | Mapping[str, Any], max_bytes: int) -> tuple[dict[str, Any], bool]:
    """The event object, and whether it was read by orjson (see ``json_text.read``)."""
    if isinstance(raw, Mapping):
        return dict(raw), False
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > max_bytes:
            raise _reject(L07ErrorCode.TRACE_LIMIT_EXCEEDED, f"event is {len(raw)} bytes, limit {max_bytes}")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _reject(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"event is not UTF-8: {exc}") from None
    if not isinstance(raw, str):
        raise _reject(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"event must be JSON text or an object, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise _reject(L07ErrorCode.TRACE_LIMIT_EXCEEDED, f"event is {len(raw)} characters, limit {max_bytes}")
    try:
        value, plain = json_text.read(raw)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        raise _reject(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"event is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _reject(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"event must be a JSON object, got {type(value).__name__}")
    return value, plain


def _too_deep(limit: int | None = None, envelope: Mapping[str, Any] | None = None) -> L07Error:
    bound = f"more than {limit} levels" if limit else "too deeply to be read"
    # The envelope's own id and source, when readable, say which event it was (the rejection row shows them).
    known = {k: envelope[k] for k in ("id", "source") if isinstance((envelope or {}).get(k), str)
             and 0 < len(envelope[k]) <= MAX_ID_LENGTH} if envelope else {}
    return _reject(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"event nests {bound}", max_depth=limit or MAX_DEPTH,
                   **{f"event_{k}": v for k, v in known.items()})


def _check_depth(obj: Any, text: Any, max_depth: int, envelope: Mapping[str, Any] | None = None) -> None:
    """E7015 when the event nests deeper than ``max_depth``; text with fewer brackets than that needs no walk."""
    if isinstance(text, (str, bytes)) and json_text.brackets(text) <= max_depth:
        return
    if json_text.too_deep(obj, max_depth):
        raise _too_deep(max_depth, envelope)


def from_l01_envelope(env: Mapping[str, Any]) -> dict[str, Any]:
    """Map the platform's L01 envelope onto CloudEvent attributes.

    ``metadata.event_id``/``id`` and ``metadata.source`` are used when present; otherwise the id is derived from the
    envelope's content (uuid5), so a replayed envelope keeps its id and stays idempotent, and the source is
    ``l01.<aggregate_type>`` (the sibling-layer form of the allow-list).
    """
    meta = env.get("metadata") if isinstance(env.get("metadata"), Mapping) else {}
    event_id = meta.get("event_id") or meta.get("id") or env.get("id")
    if not event_id:
        canon = json.dumps(env, sort_keys=True, separators=(",", ":"), default=str)
        event_id = str(uuid.uuid5(_L01_NAMESPACE, canon))
    out: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(event_id),
        "source": meta.get("source") or f"l01.{env.get('aggregate_type') or 'events'}",
        "type": env.get("event_type"),
        "subject": str(env["aggregate_id"]) if env.get("aggregate_id") is not None else None,
        "data": env.get("payload"),
        "datacontenttype": "application/json",
    }
    if env.get("timestamp"):
        out["time"] = env["timestamp"]
    return out


def from_binary(headers: Mapping[str, str], body: bytes | str | None) -> dict[str, Any]:
    """HTTP binary content mode: attributes in ``ce-*`` headers, the body is ``data`` (JSON when the type says so)."""
    attrs: dict[str, Any] = {}
    content_type = None
    for key, value in headers.items():
        lk = key.lower()
        if lk.startswith("ce-"):
            attrs[lk[3:]] = value
        elif lk == "content-type":
            content_type = value
    if content_type:
        attrs["datacontenttype"] = content_type
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _reject(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"binary-mode body is not UTF-8: {exc}") from None
    if body is not None and body != "" and (content_type is None or "json" in content_type):
        try:
            attrs["data"] = json.loads(body)
        except RecursionError:
            raise _too_deep() from None
        except ValueError as exc:
            raise _reject(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"binary-mode body is not valid JSON: {exc}") from None
    elif body:
        attrs["data"] = body
    return attrs


@lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


@lru_cache(maxsize=4096)
def _source_allowed(source: str, patterns: tuple[str, ...]) -> bool:
    # A platform has a handful of producers: caching the verdict per source keeps the regexes off the hot path.
    # fullmatch: a pattern's ``$`` would also accept the source with a trailing newline.
    return any(p.fullmatch(source) for p in _compiled(patterns))


def check_source(source: str, allow_list: list[str] | tuple[str, ...]) -> None:
    """E7115 when ``source`` matches no allow-list pattern (contract §1.1, §1.9)."""
    patterns = allow_list if isinstance(allow_list, tuple) else tuple(allow_list)
    if not _source_allowed(source, patterns):
        raise L07Error(L07ErrorCode.EVENT_AUTHENTICITY_FAILED, f"source {source!r} is not on the allow-list", source=source)


def parse_event(
    raw: bytes | str | Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    allow_list: list[str] | tuple[str, ...] | None = None,
    max_bytes: int = 1_000_000,
    max_depth: int = MAX_DEPTH,
) -> CloudEvent:
    """Parse one event in any accepted wire form.

    Args:
        raw: Structured-mode JSON (bytes/str/dict), an L01 envelope, or the body of a binary-mode HTTP request.
        headers: HTTP headers; when they carry ``ce-specversion`` the request is in binary mode.
        allow_list: Source regexes; None skips the check.
        max_bytes: Oversized events are refused with E7018.
        max_depth: Events nesting deeper (envelope included) are refused with E7015.

    Raises:
        L07Error: E7015 (not JSON, not an object, nested too deep, bad or missing envelope attribute), E7110
            (attribute of the wrong type or too long), E7018 (oversized), E7115 (source not allowed).
    """
    event, _ = read_event(raw, headers=headers, max_bytes=max_bytes, max_depth=max_depth)
    if allow_list is not None:
        check_source(event.source, allow_list)
    return event


def read_event(
    raw: bytes | str | Mapping[str, Any], *, headers: Mapping[str, str] | None = None, max_bytes: int = 1_000_000,
    max_depth: int = MAX_DEPTH,
) -> tuple[CloudEvent, bool]:
    """``parse_event`` without the allow-list, plus whether orjson read the text: then ``data`` holds only finite
    floats and 64-bit integers, which lets the ingestion skip a walk over the record (``json_text.read``)."""
    plain = False
    if headers is not None and any(k.lower() == "ce-specversion" for k in headers):
        if isinstance(raw, Mapping):
            if json_text.too_deep(raw, max_depth - 1):
                raise _too_deep(max_depth)
            raw = json.dumps(raw, default=str)
        if isinstance(raw, (str, bytes, bytearray)) and len(raw) > max_bytes:
            raise _reject(L07ErrorCode.TRACE_LIMIT_EXCEEDED, f"event is {len(raw)} bytes, limit {max_bytes}")
        obj = from_binary(headers, raw)
        # The body is one level below the envelope.
        _check_depth(obj.get("data"), raw, max_depth - 1, obj)
    else:
        obj, plain = _decode(raw, max_bytes)
        _check_depth(obj, raw, max_depth, obj)
        if "specversion" not in obj and _L01_KEYS <= obj.keys():
            obj = from_l01_envelope(obj)
    try:
        event = CloudEvent.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "event"
        missing = err["type"] == "missing" or (field in {"id", "source", "type"} and err["type"] == "string_too_short")
        bad_version = field == "specversion"
        code = (
            L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR
            if missing or bad_version
            else L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH
        )
        raise L07Error(code, f"invalid CloudEvent attribute {field!r}: {err['msg']}", field=field) from None
    _check_storable_attributes(event)
    return event, plain


def raw_text(raw: Any) -> str:
    """The raw payload as text, for the rejected-events table (never raises)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", errors="replace")
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, default=str, sort_keys=True)
    except Exception:  # noqa: BLE001 - a payload that cannot be written is stored as its type, never a crash
        try:
            return repr(raw)
        except Exception:  # noqa: BLE001 - deep or cyclic objects make repr recurse too
            return f"<unprintable {type(raw).__name__}>"


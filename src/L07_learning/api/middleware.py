"""The request envelope: request id, body-size limit, HTTP metrics, access log, audit, last-resort error handling.
One pure ASGI middleware so every request passes each step in a fixed order.

Request id: taken from ``X-Request-ID`` when it is a sane token, otherwise a new UUID4; bound to the
``REQUEST_ID`` context variable, which JSON logs, audit rows and published events read, and echoed in the response.

Audit (contract §7.4): a row for every mutating call made with a key, every 401 and 403 (any method; a 401 names the
key prefix presented, never the token), and every read of training data (a route sets ``audit_read``). Each row holds
the client address and user agent. The rows a service writes for a change take the same origin and the caller's key.
The API call's own row joins the request's first write transaction, so a change never commits without it; when the
outcome or the route's details come only after that commit, a second row completes it. A call that wrote nothing gets
its row before the response starts; if that row cannot be written the caller gets 500 E7804 instead of an answer it
could not prove.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..models.error_codes import L07Error, L07ErrorCode
from ..observability.logging import REQUEST_ID
from ..observability.metrics import ERRORS, HTTP_LATENCY, HTTP_REQUESTS
from ..services.audit_trail import CALL, ORIGIN, AuditTrail, CallRecord, canonical_details
from .errors import OPENAI_PREFIX, PayloadTooLarge, l07_error_body, openai_error_body

log = logging.getLogger(__name__)
access_log = logging.getLogger("L07_learning.api.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}\Z")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"
KEY_PREFIX_CHARS = 8
"""Characters of a refused key kept in its audit row: ``l07_`` plus 4 of its 43 random ones, enough to tell keys
apart, far too few to use."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _json_message(status: int, body: dict[str, Any]) -> tuple[Message, Message]:
    payload = json.dumps(body).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
    }
    return start, {"type": "http.response.body", "body": payload, "more_body": False}


class RequestContextMiddleware:
    """See the module docstring.

    Args:
        app: The wrapped ASGI app.
        max_request_bytes: Largest accepted body; larger ones are refused with 413 before the route runs.
    """

    def __init__(self, app: ASGIApp, max_request_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = _header(scope, b"x-request-id")
        request_id = supplied if supplied and _REQUEST_ID_RE.match(supplied) else str(uuid.uuid4())
        token = REQUEST_ID.set(request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        method = scope["method"]
        response: dict[str, Any] = {"status": None, "started": False, "replaced": False}
        record = CallRecord(lambda result: self._call_row(scope, result, None))
        origin_token, call_token = ORIGIN.set(_RequestOrigin(scope)), CALL.set(record)

        async def send_wrapper(message: Message) -> None:
            if response["replaced"]:
                return
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                if not await self._audit(scope, message["status"], record):
                    # Nothing proves this call happened, so the caller must not get its answer.
                    response["replaced"] = True
                    response["status"] = 500
                    err = L07Error(L07ErrorCode.AUDIT_LOG_WRITE_FAILURE, "the audit record could not be written")
                    start, body = _json_message(500, l07_error_body(err))
                    start["headers"].append((b"x-request-id", request_id.encode()))
                    await send(start)
                    await send(body)
                    response["started"] = True
                    return
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                response["started"] = True
            await send(message)

        try:
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
                raise PayloadTooLarge(self.max_request_bytes, int(declared))
            await self.app(scope, self._limited(receive), send_wrapper)
        except PayloadTooLarge as exc:
            # Refused before routing (declared length): answered here, nothing ran.
            state["error_code"] = exc.code.value
            await self._send_error(scope, send_wrapper, response, exc.http_status, l07_error_body(exc))
        except Exception as exc:  # noqa: BLE001 - the last net: every unexpected failure becomes E7910, never a bare 500
            log.exception("unhandled error in %s %s", method, scope.get("path"))
            state["error_code"] = L07ErrorCode.UNHANDLED_EXCEPTION.value
            ERRORS.labels(error_code=L07ErrorCode.UNHANDLED_EXCEPTION.value, error_type="integration").inc()
            err = L07Error(L07ErrorCode.UNHANDLED_EXCEPTION, f"unexpected error: {exc.__class__.__name__}")
            await self._send_error(scope, send_wrapper, response, 500, l07_error_body(err))
        finally:
            record.closed = True  # work the request started in the background writes no call row of its own
            self._observe(scope, method, response["status"] or 500, time.perf_counter() - started)
            CALL.reset(call_token)
            ORIGIN.reset(origin_token)
            REQUEST_ID.reset(token)

    @staticmethod
    async def _send_error(scope: Scope, send: Send, response: dict[str, Any], status: int,
                          body: dict[str, Any]) -> None:
        if response["started"]:
            return  # too late to change the answer; the failure is logged
        if str(scope.get("path", "")).startswith(OPENAI_PREFIX):
            body = openai_error_body(status, body)
        for message in _json_message(status, body):
            await send(message)

    def _limited(self, receive: Receive) -> Receive:
        limit = self.max_request_bytes
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the route's body read, so the route's exception handler answers 413.
                    raise PayloadTooLarge(limit)
            return message

        return wrapped

    @staticmethod
    def _route_path(scope: Scope) -> str:
        route = scope.get("route")
        return getattr(route, "path", None) or UNMATCHED_ROUTE

    def _observe(self, scope: Scope, method: str, status: int, elapsed: float) -> None:
        route = self._route_path(scope)
        HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
        HTTP_LATENCY.labels(method=method, route=route).observe(elapsed)
        principal = scope.get("state", {}).get("principal")
        access_log.info(
            "%s %s %s",
            method,
            scope.get("path"),
            status,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "key_id": getattr(principal, "key_id", None),
                "error_code": scope.get("state", {}).get("error_code"),
            },
        )

    @staticmethod
    def _audited(scope: Scope, status: int | None) -> bool:
        """Whether this call gets an audit row: a mutating call with a key, any refusal, a read of training data."""
        state = scope.get("state", {})
        if state.get("audit_read") or status in (401, 403):
            return True
        return scope["method"] not in _SAFE_METHODS and state.get("principal") is not None

    def _call_row(self, scope: Scope, result: str, status: int | None) -> dict[str, Any] | None:
        """``audit()`` arguments for this call's row as far as it is known now; None when it needs no row."""
        if not self._audited(scope, status):
            return None
        state = scope.get("state", {})
        principal = state.get("principal")
        route = scope.get("route")
        path_params = scope.get("path_params") or {}
        resource_id = state.get("audit_resource_id") or next(iter(path_params.values()), None)
        details: dict[str, Any] = {"method": scope["method"], "path": scope.get("path")}
        if status is not None:
            details["status"] = status
        if principal is not None:
            actor, actor_type = principal.key_id, "api_key"
            details["role"] = principal.role.value
        else:
            prefix = _presented_key_prefix(scope)
            actor, actor_type = prefix or "none", "anonymous"
            details["key_prefix"] = prefix
        if state.get("audit_read"):
            details["training_data_read"] = True
        details.update(state.get("audit_details") or {})
        return {
            "action": "api." + (getattr(route, "name", None) or "unknown"),
            "resource_type": str((getattr(route, "tags", None) or ["api"])[0]),
            "resource_id": str(resource_id) if resource_id is not None else None,
            "result": result,
            "actor": actor,
            "actor_type": actor_type,
            "details": details,
            "error_code": state.get("error_code") if status is not None and status >= 400 else None,
            "request_id": state.get("request_id"),
        }

    async def _audit(self, scope: Scope, status: int, record: CallRecord) -> bool:
        """Write (or complete) the call's audit row as the response starts; False when a needed row failed."""
        attached = record.audit_id
        record.closed = True  # from here on no transaction attaches the call row
        outcome = "success" if status < 400 else "denied" if status in (401, 403) else "failure"
        row = self._call_row(scope, outcome, status)
        if row is None:
            return True
        if attached is not None:
            # The change committed together with the call's row; add a row only when the outcome says more.
            before = record.attached or {}
            said = {k: v for k, v in row["details"].items() if k != "status"}
            if status < 400 and row["resource_id"] == before.get("resource_id") and canonical_details(said) == before.get(
                    "details"):
                return True
            row["details"]["completes"] = attached
        try:
            await AuditTrail(scope["app"].state.l07.db).record(**row)
            return True
        except Exception:  # noqa: BLE001 - any failure to persist the row is E7804
            log.exception("audit write failed for %s", row["action"])
            ERRORS.labels(error_code=L07ErrorCode.AUDIT_LOG_WRITE_FAILURE.value, error_type="integration").inc()
            # A committed change already holds its call row: the answer stands, only the completion is lost.
            return attached is not None


class _RequestOrigin:
    """The audit origin of one HTTP request: client address, user agent, and the key once authenticated."""

    def __init__(self, scope: Scope) -> None:
        client = scope.get("client")
        self.ip_address = client[0] if client else None
        self.user_agent = _header(scope, b"user-agent")
        self._state = scope.setdefault("state", {})

    def actor(self) -> tuple[str, str] | None:
        principal = self._state.get("principal")
        return ("api_key", principal.key_id) if principal is not None else None


def _presented_key_prefix(scope: Scope) -> str | None:
    """The first characters of the key the caller sent (bearer or X-API-Key), never the whole token."""
    token = _header(scope, b"x-api-key")
    authorization = _header(scope, b"authorization")
    if authorization and authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
    if not token:
        return None
    return token[: min(KEY_PREFIX_CHARS, len(token) // 2)] + "..."

"""The request envelope: request id, body-size limit, HTTP metrics, access log, audit of mutating calls, last-resort
error handling. One pure ASGI middleware so every request passes each step in a fixed order.

Request id: taken from ``X-Request-ID`` when it is a sane token, otherwise a new UUID4; bound to the
``REQUEST_ID`` context variable, which JSON logs, audit rows and published events read, and echoed in the response.

Audit: every call with a method other than GET/HEAD/OPTIONS made with a valid key (or refused for its role) gets
one audit row with the key id, the action (route name), the outcome and the request id. The row is written before
the response starts; if it cannot be written the caller gets 500 E7804 instead of a success it could not prove.
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
from .errors import PayloadTooLarge, l07_error_body

log = logging.getLogger(__name__)
access_log = logging.getLogger("L07_learning.api.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"


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

        async def send_wrapper(message: Message) -> None:
            if response["replaced"]:
                return
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                if method not in _SAFE_METHODS and not await self._audit(scope, message["status"]):
                    # The change may have happened, but without its audit row the caller must not see success.
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
            await self._send_error(send_wrapper, response, exc.http_status, l07_error_body(exc))
        except Exception as exc:  # noqa: BLE001 - the last net: every unexpected failure becomes E7910, never a bare 500
            log.exception("unhandled error in %s %s", method, scope.get("path"))
            state["error_code"] = L07ErrorCode.UNHANDLED_EXCEPTION.value
            ERRORS.labels(error_code=L07ErrorCode.UNHANDLED_EXCEPTION.value, error_type="integration").inc()
            err = L07Error(L07ErrorCode.UNHANDLED_EXCEPTION, f"unexpected error: {exc.__class__.__name__}")
            await self._send_error(send_wrapper, response, 500, l07_error_body(err))
        finally:
            self._observe(scope, method, response["status"] or 500, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    @staticmethod
    async def _send_error(send: Send, response: dict[str, Any], status: int, body: dict[str, Any]) -> None:
        if response["started"]:
            return  # too late to change the answer; the failure is logged
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

    async def _audit(self, scope: Scope, status: int) -> bool:
        """Write the audit row of a mutating call; True when written or not needed."""
        state = scope.get("state", {})
        principal = state.get("principal")
        if principal is None:
            return True  # no key, no actor: unauthenticated attempts go to the access log and metrics only
        route = scope.get("route")
        action = "api." + (getattr(route, "name", None) or "unknown")
        tags = getattr(route, "tags", None) or ["api"]
        path_params = scope.get("path_params") or {}
        resource_id = state.get("audit_resource_id") or next(iter(path_params.values()), None)
        outcome = "success" if status < 400 else "denied" if status in (401, 403) else "failure"
        details = {"method": scope["method"], "path": scope.get("path"), "status": status, "role": principal.role.value}
        details.update(state.get("audit_details") or {})
        try:
            await scope["app"].state.l07.service.access.record_api_call(
                action,
                str(tags[0]),
                str(resource_id) if resource_id is not None else None,
                result=outcome,
                key_id=principal.key_id,
                details=details,
                error_code=state.get("error_code") if status >= 400 else None,
                request_id=state.get("request_id"),
            )
            return True
        except Exception:  # noqa: BLE001 - any failure to persist the row is E7804
            log.exception("audit write failed for %s", action)
            ERRORS.labels(error_code=L07ErrorCode.AUDIT_LOG_WRITE_FAILURE.value, error_type="integration").inc()
            return False

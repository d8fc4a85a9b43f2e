"""One JSON error body for every failure, ``{code, name, message, detail}``, with the E7xxx table's HTTP status.

``L07Error`` carries its status in the error-code table (contract §6 "HTTP mapping"); request validation errors
become E7110 (E7500 when the training ``config`` is at fault), both 400. HTTP-level errors that have no E7xxx
meaning (unknown route, wrong method) use ``HTTP<status>`` as their code so the body keeps one shape.
"""

from __future__ import annotations

import logging
import math
from enum import Enum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..models.error_codes import L07Error, L07ErrorCode
from ..observability.metrics import ERRORS

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every non-2xx answer."""

    code: str = Field(description="E7xxx code (or HTTP<status> for routing errors)", examples=["E7250"])
    name: str | None = Field(default=None, description="Symbolic name of the code", examples=["MODEL_NOT_FOUND"])
    message: str = Field(description="What went wrong, for people")
    detail: dict[str, Any] = Field(default_factory=dict, description="Structured context: ids, fields, limits")


class PayloadTooLarge(L07Error):
    """The request body is over ``max_request_bytes`` (HTTP 413)."""

    def __init__(self, limit: int, seen: int | None = None) -> None:
        super().__init__(
            L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
            f"request body larger than {limit} bytes",
            limit_bytes=limit,
            **({"content_length": seen} if seen is not None else {}),
        )

    @property
    def http_status(self) -> int:
        return 413


class RateLimited(L07Error):
    """A key sent events faster than its limit (HTTP 429 with ``Retry-After``).

    E7104 ("requester over quota") is the table's code for a requester over its allowance; the status is 429, not
    the table's 402, because waiting ``retry_after_s`` fixes it and no payment or quota change is needed.
    """

    def __init__(self, key_id: str, retry_after_s: float, limit_per_s: float) -> None:
        super().__init__(
            L07ErrorCode.FINE_TUNING_QUOTA_EXCEEDED,
            f"event rate limit of {limit_per_s:g}/s exceeded for key {key_id}",
            key_id=key_id,
            retry_after_s=round(retry_after_s, 3),
            limit_events_per_s=limit_per_s,
        )
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        return 429


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
                   request: Request | None = None) -> JSONResponse:
    """A JSON error response with the shared body (in OpenAI's error shape under ``/v1/``)."""
    if request is not None and request.url.path.startswith(OPENAI_PREFIX):
        body = openai_error_body(status, body)
    return JSONResponse(status_code=status, content=body, headers=headers)


OPENAI_PREFIX = "/v1/"
"""The OpenAI-compatible endpoints answer errors as the OpenAI API does, so its clients raise their usual errors."""

_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                 429: "rate_limit_error"}


def openai_error_body(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}``: the message keeps the E7xxx code, ``code`` is OpenAI's when
    the error names one (``model_not_found``...), else the E7xxx code."""
    detail = body.get("detail") or {}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": f"{body.get('code')}: {body.get('message')}", "type": kind,
                      "param": detail.get("param"), "code": detail.get("openai_code") or body.get("code")}}


def l07_error_body(exc: L07Error) -> dict[str, Any]:
    return {"code": exc.code.value, "name": exc.code.name, "message": exc.message, "detail": _jsonable(exc.details)}


def _jsonable(value: Any) -> Any:
    # Error details may hold enums, datetimes or exceptions; the body must always serialise.
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Enum):
        return _jsonable(value.value)
    return str(value)


def _error_type(code: L07ErrorCode) -> str:
    prefix = code.value[:3]
    return {"E70": "data", "E71": "security", "E72": "integration", "E75": "validation"}.get(prefix, "integration")


async def handle_l07_error(request: Request, exc: L07Error) -> JSONResponse:
    """Map an ``L07Error`` to its table status and the shared body."""
    status = exc.http_status
    request.state.error_code = exc.code.value
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="l07"'
    if status >= 500:
        log.error("request failed: %s", exc, extra={"code": exc.code.value, "detail": _jsonable(exc.details)})
    else:
        log.info("request refused: %s", exc, extra={"code": exc.code.value, "status": status})
    ERRORS.labels(error_code=exc.code.value, error_type=_error_type(exc.code)).inc()
    return error_response(status, l07_error_body(exc), headers or None, request)


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Request bodies and parameters that fail their schema: E7110 (E7500 for a training ``config``), 400."""
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    in_config = any(len(e["loc"]) > 1 and e["loc"][0] == "body" and e["loc"][1] == "config" for e in errors)
    code = L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID if in_config else L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH
    request.state.error_code = code.value
    message = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5]) or "invalid request"
    body = {"code": code.value, "name": code.name, "message": message, "detail": {"errors": errors}}
    return error_response(code.spec.http_status, body, request=request)


async def handle_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing errors (404 unknown path, 405 wrong method) in the shared body."""
    if isinstance(exc.__cause__, PayloadTooLarge):
        # FastAPI wraps failures while reading a body into a 400; an over-long streamed body is still a 413.
        return await handle_l07_error(request, exc.__cause__)
    code = f"HTTP{exc.status_code}"
    request.state.error_code = code
    body = {"code": code, "name": None, "message": str(exc.detail), "detail": {}}
    return error_response(exc.status_code, body, dict(exc.headers) if exc.headers else None, request)


def install_error_handlers(app: FastAPI) -> None:
    """Register the three handlers on ``app``."""
    app.add_exception_handler(L07Error, handle_l07_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, handle_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)  # type: ignore[arg-type]


_DESCRIPTIONS = {
    400: "Invalid request (E7110, E7500, E7029, E7036, E7015 ...)",
    401: "Missing, unknown or revoked API key",
    402: "Quota or cost limit (E7104, E7700, E7701)",
    403: "The key's role does not allow this (E7904)",
    404: "Unknown id (E7028, E7250, E7410)",
    409: "Conflict with the current state (E7045, E7251, E7252)",
    413: "Request body too large",
    429: "Event rate limit exceeded; see Retry-After",
    500: "Unexpected failure (E7910 and other server-side codes)",
    503: "A dependency is unavailable (E7202, breaker open)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses, all with ``ErrorBody``."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


class OpenAIError(BaseModel):
    message: str = Field(description="What went wrong, starting with the E7xxx code")
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = Field(default=None, description="The request field at fault", examples=["training_file"])
    code: str | None = Field(default=None, description="OpenAI's code where one applies, else the E7xxx code",
                             examples=["model_not_found"])


class OpenAIErrorBody(BaseModel):
    """The body of every non-2xx answer under ``/v1/``, as the OpenAI API writes it."""

    error: OpenAIError


def openai_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the ``/v1/`` routes, all with ``OpenAIErrorBody``."""
    return {s: {"model": OpenAIErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}

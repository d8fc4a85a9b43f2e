"""Structured logging: JSON lines on stderr (or plain text), with the request id when one is bound."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("l07_request_id", default=None)

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra={...}`` fields are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = REQUEST_ID.get()
        if rid:
            payload["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (test runners and CLIs swap it and close the old one)."""

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # type: ignore[no-untyped-def]
        return None


def configure_logging(level: str = "INFO", fmt: str = "json", path: str | None = None) -> None:
    """Install one handler (stderr, or the file ``path``) on the ``L07_learning`` logger tree (idempotent)."""
    root = logging.getLogger(__package__.split(".")[0] if __package__ else "L07_learning")
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if getattr(handler, "_l07", False):
            root.removeHandler(handler)
    handler: logging.Handler = logging.FileHandler(path) if path else _StderrHandler()
    handler._l07 = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.propagate = False

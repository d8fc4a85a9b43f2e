"""Destinations for published events. Each sink's ``deliver`` is idempotent per event id, so a relay retry after a
crash between "sent" and "recorded as sent" never produces a second copy where the sink can prevent it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from ..models.error_codes import L07Error, L07ErrorCode


class EventSink(Protocol):
    """Where the outbox relay delivers events."""

    name: str

    async def deliver(self, event: dict[str, Any]) -> None:
        """Deliver one CloudEvent; raise on failure (the relay retries)."""

    async def close(self) -> None:
        """Release connections."""


class JsonlSink:
    """Appends one JSON line per event to a file (the default sink; L04 or a shipper tails it)."""

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen: set[str] | None = None

    def _load_seen(self) -> set[str]:
        if self._seen is None:
            self._seen = set()
            if self.path.exists():
                for line in self.path.read_text().splitlines():
                    try:
                        self._seen.add(json.loads(line)["id"])
                    except (ValueError, KeyError):
                        continue
        return self._seen

    async def deliver(self, event: dict[str, Any]) -> None:
        seen = self._load_seen()
        if event["id"] in seen:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, sort_keys=True, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        seen.add(event["id"])

    async def close(self) -> None:
        return None


# Atomically claim the event id and append to the stream, so a retried delivery adds nothing.
_XADD_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return redis.call('XADD', KEYS[1], '*', 'event', ARGV[1], 'type', ARGV[2])
end
return false
"""


class RedisStreamSink:
    """XADDs events to a Redis Stream, exactly once per event id (a Lua script claims the id first)."""

    name = "redis"

    def __init__(self, url: str, stream: str = "l07.learning.events", dedup_ttl_s: int = 7 * 24 * 3600) -> None:
        import redis.asyncio as aioredis

        self.stream = stream
        self.dedup_ttl_s = dedup_ttl_s
        self.client = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=5)

    async def deliver(self, event: dict[str, Any]) -> None:
        try:
            await self.client.eval(_XADD_ONCE, 2, self.stream, f"{self.stream}:delivered:{event['id']}",
                                   json.dumps(event, default=str), event["type"], self.dedup_ttl_s)
        except Exception as exc:  # noqa: BLE001 - any broker failure is "not delivered yet"
            raise L07Error(L07ErrorCode.EVENT_STREAM_DISCONNECTION, f"redis sink: {exc}") from exc

    async def close(self) -> None:
        await self.client.aclose()


class WebhookSink:
    """POSTs each event in CloudEvents structured mode. Receivers dedupe on ``ce-id`` (HTTP is at-least-once)."""

    name = "webhook"

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        import httpx

        self.url = url
        self.client = httpx.AsyncClient(timeout=timeout_s)

    async def deliver(self, event: dict[str, Any]) -> None:
        try:
            resp = await self.client.post(self.url, json=event, headers={
                "content-type": "application/cloudevents+json", "ce-id": event["id"]})
        except Exception as exc:  # noqa: BLE001
            raise L07Error(L07ErrorCode.NETWORK_CONNECTIVITY_ERROR, f"webhook sink: {exc}") from exc
        if resp.status_code >= 300:
            raise L07Error(L07ErrorCode.NETWORK_CONNECTIVITY_ERROR, f"webhook sink answered {resp.status_code}")

    async def close(self) -> None:
        await self.client.aclose()


def sinks_from_settings(settings: Any) -> list[EventSink]:
    """Build the sinks named in ``settings.outbox_sinks`` (``jsonl``, ``redis``, ``webhook``)."""
    sinks: list[EventSink] = []
    for name in settings.outbox_sinks:
        if name == "jsonl":
            sinks.append(JsonlSink(settings.outbox_jsonl_path))
        elif name == "redis":
            if not settings.redis_url:
                raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, "outbox sink 'redis' needs L07_REDIS_URL")
            sinks.append(RedisStreamSink(settings.redis_url))
        elif name == "webhook":
            if not settings.webhook_url:
                raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, "outbox sink 'webhook' needs L07_WEBHOOK_URL")
            sinks.append(WebhookSink(settings.webhook_url))
        else:
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"unknown outbox sink {name!r}")
    return sinks

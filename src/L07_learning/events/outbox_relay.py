"""Delivers outbox rows to every configured sink until each acknowledges (contract §2, issue 8).

A row is marked delivered only when every sink has it; per-sink acknowledgements are recorded, so after a sink
outage only the missing sinks are retried. Failures back off (1 s x 2^n, capped at 60 s, +-10% jitter, contract §5.7).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from ..observability import metrics
from ..store.db import Database
from ..store.repositories.outbox import OutboxRepository
from .sinks import EventSink

log = logging.getLogger(__name__)


def backoff_seconds(attempt: int, base: float = 1.0, cap: float = 60.0, jitter: float = 0.1) -> float:
    """Standard retry delay for the ``attempt``-th failure (0-based)."""
    delay = min(cap, base * (2 ** attempt))
    return delay * (1 + random.uniform(-jitter, jitter))


class OutboxRelay:
    """Moves events from the outbox table to sinks.

    Args:
        db: The database holding the outbox.
        sinks: Destinations; each must have a unique ``name``.
    """

    def __init__(self, db: Database, sinks: list[EventSink]) -> None:
        self.db = db
        self.sinks = sinks

    async def run_once(self, limit: int = 100) -> dict[str, int]:
        """Try every due event once. Returns counts of ``delivered`` (fully) and ``failed`` attempts."""
        delivered = failed = 0
        async with self.db.session() as s:
            rows = [(r.event_id, r.payload, r.attempts) for r in await OutboxRepository(s).claim_due(limit)]
        pending = [event_id for event_id, _, _ in rows]
        try:
            for event_id, payload, attempts in rows:
                ok = await self._deliver(event_id, payload, attempts)
                pending.remove(event_id)
                delivered += ok
                failed += not ok
        finally:
            if pending:
                # Stopped mid-pass (shutdown): hand the claims back at once instead of letting them wait out the lease.
                await asyncio.shield(self._release(pending))
        async with self.db.session() as s:
            metrics.OUTBOX_PENDING.set(await OutboxRepository(s).pending_count())
        return {"delivered": delivered, "failed": failed}

    async def _deliver(self, event_id: str, payload: dict[str, Any], attempts: int) -> bool:
        async with self.db.session() as s:
            done = await OutboxRepository(s).delivered_sinks(event_id)
        errors: list[str] = []
        for sink in self.sinks:
            if sink.name in done:
                continue
            try:
                await sink.deliver(payload)
            except Exception as exc:  # noqa: BLE001 - a sink failure delays the event; it is retried, never dropped
                errors.append(f"{sink.name}: {exc}")
                continue
            async with self.db.session() as s:
                OutboxRepository(s).mark_sink_delivered(event_id, sink.name)
        async with self.db.session() as s:
            repo = OutboxRepository(s)
            if errors:
                await repo.mark_failed(event_id, "; ".join(errors), backoff_seconds(attempts))
                log.warning("outbox delivery failed", extra={"event_id": event_id, "errors": errors})
                return False
            await repo.mark_delivered(event_id)
        return True

    async def _release(self, event_ids: list[str]) -> None:
        async with self.db.session() as s:
            await OutboxRepository(s).release(event_ids)

    async def drain(self, timeout_s: float = 30.0, poll_s: float = 0.2) -> int:
        """Deliver until nothing is due or ``timeout_s`` passes. Returns how many events are still pending."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            result = await self.run_once()
            async with self.db.session() as s:
                pending = await OutboxRepository(s).pending_count()
            if pending == 0 or loop.time() >= deadline:
                return pending
            if result["delivered"] == 0:
                await asyncio.sleep(poll_s)

    async def serve(self, stop: asyncio.Event, poll_s: float = 1.0) -> None:
        """Relay until ``stop`` is set (used by ``l07 serve`` and the worker)."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - keep relaying; the error is logged with its stack
                log.exception("outbox relay pass failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=poll_s)
            except asyncio.TimeoutError:
                pass
        # One last pass on the way out: what the process committed just before stopping still leaves with it.
        with contextlib.suppress(Exception):
            await self.run_once()

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()

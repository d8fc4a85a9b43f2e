"""Per-policy circuit breakers, stored in the database (contract §4.4, §9).

A policy's breaker opens after ``TRIP_AFTER`` consecutive runs that failed or were REJECTED: the policy stops
triggering (and so stops spending budget), a ``learning.learning_system_alert`` is written to the outbox in the same
transaction as the run's outcome, and ``l07_loop_breaker_trips_total`` counts it. Only ``resume`` (``l07 loop resume``)
closes it; a run staged or sent to review resets the count.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ...events.publisher import EventPublisher
from ...models._base import new_id, utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...observability.metrics import CIRCUIT_BREAKER_STATE, LOOP_BREAKER_TRIPS
from ...store.db import Database
from ...store.repositories.audit import audit
from ...store.repositories.loop import LoopRepository, PolicyState

log = logging.getLogger(__name__)

TRIP_AFTER = 3
ALERT_EVENT = "learning.learning_system_alert"


def _gauge(policy: str, state: str) -> None:
    for s in ("CLOSED", "OPEN"):
        CIRCUIT_BREAKER_STATE.labels(component=f"loop:{policy}", state=s.lower()).set(1 if s == state else 0)


class PolicyBreakers:
    """Reads and moves the breakers of the loop's policies.

    Args:
        db: The database holding ``l07_loop_policies``.
        publisher: Writes the alert into the outbox (default ``EventPublisher()``).
    """

    def __init__(self, db: Database, publisher: EventPublisher | None = None) -> None:
        self.db = db
        self.publisher = publisher or EventPublisher()

    async def record(self, session: AsyncSession, policy: str, *, failed: bool, verdict: str, run_id: str,
                     error_code: str | None = None, message: str | None = None) -> PolicyState:
        """Count one finished run in the caller's transaction; opens the breaker on the ``TRIP_AFTER``-th failure.

        Returns:
            The policy's state after the run.
        """
        repo = LoopRepository(session)
        now = utcnow()
        state = await repo.ensure_policy(policy, now)
        failures = state.consecutive_failures + 1 if failed else 0
        values: dict[str, Any] = {"consecutive_failures": failures, "last_verdict": verdict}
        trips = failed and failures >= TRIP_AFTER and state.breaker_state != "OPEN"
        if trips:
            reason = f"{failures} consecutive failed or rejected runs; last: {verdict}" + (f" ({message})" if message else "")
            values.update(breaker_state="OPEN", breaker_opened_at=now, breaker_reason=reason[:2000])
            await self.publisher.publish(session, ALERT_EVENT, {
                "alert_id": new_id(), "alert_name": "loop_policy_breaker_open", "severity": "high",
                "error_code": error_code or L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED.value,
                "domain": "training", "message": f"loop policy {policy} paused: {reason}",
                "details": {"policy": policy, "run_id": run_id, "consecutive_failures": failures},
                "circuit_breaker_state": "OPEN"}, subject=policy)
            await audit(session, "loop.breaker_open", "loop_policy", policy, actor="l07-loop",
                        details={"reason": reason, "run_id": run_id}, error_code=error_code)
        await repo.update_policy(policy, now, **values)
        if trips:
            LOOP_BREAKER_TRIPS.labels(policy=policy).inc()
            _gauge(policy, "OPEN")
            log.error("loop policy breaker opened", extra={"policy": policy, "run_id": run_id})
        return await repo.get_policy(policy)  # type: ignore[return-value]

    async def resume(self, policy: str, actor: str = "l07") -> PolicyState:
        """Close the policy's breaker and clear its failure count (audited); a closed breaker stays closed.

        Raises:
            L07Error: E7905 when the loop has never seen a policy of that name.
        """
        async with self.db.session() as session:
            repo = LoopRepository(session)
            state = await repo.get_policy(policy)
            if state is None:
                known = [p.policy for p in await repo.list_policies()]
                raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"no loop policy {policy!r}; known: {known}",
                               policy=policy, known=known)
            await repo.update_policy(policy, utcnow(), breaker_state="CLOSED", breaker_opened_at=None,
                                     breaker_reason=None, consecutive_failures=0, paused=False)
            await audit(session, "loop.resume", "loop_policy", policy, actor=actor,
                        details={"was": state.breaker_state, "reason": state.breaker_reason})
            resumed = await repo.get_policy(policy)
        _gauge(policy, "CLOSED")
        return resumed  # type: ignore[return-value]

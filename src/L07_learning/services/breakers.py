"""Component circuit breakers for training, validation and deployment (contract §4.4), stored in the database.

Every process (``l07 run``, workers, the API) reads and moves the same rows, so a breaker tripped by one is open for
all, and it survives a restart. CLOSED -> OPEN after ``failures`` consecutive failures (the deployment breaker also
opens at once on a quality rollback, §4.4 "quality degradation > 5%"); OPEN -> HALF_OPEN after ``cooldown_s``, when
one caller gets the probe (``allow``); the probe's success closes the breaker, its failure opens it again. The
training breaker also needs a person: it stays OPEN until ``reset`` (``l07 loop reset-breaker training``). While a
breaker is open the loop starts no new run (training: reject new jobs; validation and deployment: halt releases).

Each move is a conditional update (``BreakerRepository.move``) retried on a lost race, so two processes that record
failures at once count both, and one trip alerts once (``learning.learning_system_alert`` in the outbox and an audit
row, in the caller's transaction).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..events.publisher import EventPublisher
from ..models._base import new_id, utcnow
from ..models.error_codes import L07Error, L07ErrorCode
from ..observability.metrics import CIRCUIT_BREAKER_STATE
from ..store.db import Database
from ..store.repositories.audit import audit
from ..store.repositories.feedback import BreakerRepository

log = logging.getLogger(__name__)

STATES = ("CLOSED", "OPEN", "HALF_OPEN")
_RACE_RETRIES = 8


@dataclass(frozen=True)
class BreakerSpec:
    """When a component's breaker opens and how it closes again (contract §4.4)."""

    failures: int
    cooldown_s: float
    manual_reset: bool = False


SPECS = {
    # §4.4 training (global): 3 consecutive models below their baseline (REJECTED by validation, E7402); 1 h
    # cool-down and manual approval.
    "training": BreakerSpec(failures=3, cooldown_s=3600.0, manual_reset=True),
    # §4.4 generic default: 5 consecutive failures, 300 s.
    "validation": BreakerSpec(failures=5, cooldown_s=300.0),
    # §4.4 deployment: 2 failures or a quality degradation, 900 s, canary as the probe.
    "deployment": BreakerSpec(failures=2, cooldown_s=900.0),
}


# The code each trip alert carries: E7402 negative feedback loop (training, §4.4), E7203 validation failed,
# E7204 regression (a deployment worse than its baseline).
ALERT_CODES = {"training": "E7402", "validation": "E7203", "deployment": "E7204"}


def _gauge(component: str, state: str) -> None:
    for s in STATES:
        CIRCUIT_BREAKER_STATE.labels(component=component, state=s.lower()).set(1 if s == state else 0)


def _spec(component: str) -> BreakerSpec:
    spec = SPECS.get(component)
    if spec is None:
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND,
                       f"no circuit breaker {component!r}; known: {', '.join(SPECS)}", known=list(SPECS))
    return spec


class ComponentBreakers:
    """Reads and moves the component breakers.

    Args:
        db: The database holding ``l07_component_breakers``.
        publisher: Writes trip alerts to the outbox (default ``EventPublisher()``).
    """

    def __init__(self, db: Database, publisher: EventPublisher | None = None) -> None:
        self.db = db
        self.publisher = publisher or EventPublisher()

    async def record(self, session: AsyncSession, component: str, *, ok: bool, reason: str | None = None) -> dict[str, Any]:
        """Count one success or failure of ``component`` in the caller's transaction; returns the breaker after it."""
        spec = _spec(component)
        repo = BreakerRepository(session)
        for _ in range(_RACE_RETRIES):
            now = utcnow()
            row = await repo.ensure(component, now)
            expect = {"state": row["state"], "consecutive_failures": row["consecutive_failures"]}
            if ok:
                values: dict[str, Any] = {"consecutive_failures": 0, "last_success_at": now}
                if row["state"] == "HALF_OPEN":
                    values.update(state="CLOSED", opened_at=None, reason=None, probe_started_at=None)
                if await repo.move(component, expect, now, **values):
                    _gauge(component, values.get("state", row["state"]))
                    return {**row, **values}
                continue
            failures = row["consecutive_failures"] + 1
            trips = row["state"] == "HALF_OPEN" or (row["state"] == "CLOSED" and failures >= spec.failures)
            values = {"consecutive_failures": failures, "last_failure_at": now}
            why = f"{failures} consecutive failures; last: {reason or 'unknown'}"
            if row["state"] == "HALF_OPEN":
                why = f"half-open probe failed: {reason or 'unknown'}"
            if trips:
                values.update(state="OPEN", opened_at=now, reason=why[:2000], trips=row["trips"] + 1,
                              probe_started_at=None)
            if await repo.move(component, expect, now, **values):
                if trips:
                    await self._alert(session, component, why)
                return {**row, **values}
        raise L07Error(L07ErrorCode.UNHANDLED_EXCEPTION, f"breaker {component}: too many concurrent updates")

    async def trip(self, session: AsyncSession, component: str, reason: str) -> bool:
        """Open ``component``'s breaker now (a quality rollback); False when it already was open."""
        _spec(component)
        repo = BreakerRepository(session)
        for _ in range(_RACE_RETRIES):
            now = utcnow()
            row = await repo.ensure(component, now)
            if row["state"] == "OPEN":
                return False
            if await repo.move(component, {"state": row["state"], "trips": row["trips"]}, now, state="OPEN",
                               opened_at=now, reason=reason[:2000], trips=row["trips"] + 1, probe_started_at=None,
                               last_failure_at=now, consecutive_failures=row["consecutive_failures"] + 1):
                await self._alert(session, component, reason)
                return True
        return False

    async def _alert(self, session: AsyncSession, component: str, reason: str) -> None:
        await self.publisher.publish(session, "learning.learning_system_alert", {
            "alert_id": new_id(), "alert_name": f"{component}_breaker_open", "severity": "high",
            "error_code": ALERT_CODES[component],
            "domain": component, "message": f"{component} circuit breaker open: {reason}",
            "details": {"component": component}, "circuit_breaker_state": "OPEN"}, subject=component)
        await audit(session, "breaker.open", "circuit_breaker", component, actor="l07", details={"reason": reason})
        _gauge(component, "OPEN")
        log.error("circuit breaker opened", extra={"component": component, "reason": reason})

    async def allow(self, component: str) -> tuple[bool, str]:
        """Whether ``component`` may run now, and why not. After the cool-down the first caller gets the half-open
        probe (one run); the others wait for its outcome."""
        spec = _spec(component)
        async with self.db.session() as session:
            repo = BreakerRepository(session)
            now = utcnow()
            row = await repo.get(component)
            if row is None or row["state"] == "CLOSED":
                return True, ""
            if row["state"] == "OPEN" and spec.manual_reset:
                return False, f"{component} breaker open ({row['reason']}); `l07 loop reset-breaker {component}`"
            since = row["probe_started_at"] if row["state"] == "HALF_OPEN" else row["opened_at"]
            if since is not None and now - since < timedelta(seconds=spec.cooldown_s):
                left = spec.cooldown_s - (now - since).total_seconds()
                what = "half-open probe running" if row["state"] == "HALF_OPEN" else f"open ({row['reason']})"
                return False, f"{component} breaker {what}; next probe in {left:.0f} s"
            if await repo.move(component, {"state": row["state"], "probe_started_at": row["probe_started_at"]}, now,
                               state="HALF_OPEN", probe_started_at=now):
                _gauge(component, "HALF_OPEN")
                return True, "half-open probe"
            return False, f"{component} breaker: another process took the probe"

    async def reset(self, component: str, actor: str = "l07") -> dict[str, Any]:
        """Close a breaker by hand (audited); the training breaker's required approval."""
        _spec(component)
        async with self.db.session() as session:
            repo = BreakerRepository(session)
            now = utcnow()
            row = await repo.ensure(component, now)
            await repo.move(component, {}, now, state="CLOSED", opened_at=None, reason=None, probe_started_at=None,
                            consecutive_failures=0)
            await audit(session, "breaker.reset", "circuit_breaker", component, actor=actor,
                        details={"was": row["state"], "reason": row["reason"]})
        _gauge(component, "CLOSED")
        return (await self.status())[component]

    async def status(self) -> dict[str, dict[str, Any]]:
        """Every component's breaker with its thresholds (a breaker never moved reads CLOSED)."""
        async with self.db.session() as session:
            stored = {r["component"]: r for r in await BreakerRepository(session).all()}
        out = {}
        for name, spec in SPECS.items():
            row = stored.get(name, {})
            out[name] = {
                "component": name, "state": row.get("state", "CLOSED"),
                "consecutive_failures": row.get("consecutive_failures", 0), "trips": row.get("trips", 0),
                "opened_at": row["opened_at"].isoformat() if row.get("opened_at") else None,
                "reason": row.get("reason"), "failure_threshold": spec.failures, "cooldown_s": spec.cooldown_s,
                "manual_reset": spec.manual_reset,
            }
        return out

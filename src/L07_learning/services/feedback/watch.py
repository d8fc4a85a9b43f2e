"""``ReleaseWatch``: watches every PRODUCTION ACTIVE model against its predecessor and rolls it back on a sustained
drop (contract §4.2: quality down > 5% over >= 1000 samples, or error rate up > 1 point) or a failed canary (E7205).

When the release event carried a canary configuration, the canary is judged first, once, after its window
(``canary``: candidate against incumbent over the same window and task types); a pass publishes
``model_deployment_approved`` with the canary's result (L04 may take the release to all traffic), a failure rolls
back with reason ``canary_failure``.

A model that becomes ACTIVE gets a watch row on the next look (any process; the insert is idempotent) naming its
predecessor, the version it superseded. Each look reads the candidate's scored outcomes since its release in
windows of ``watch_min_samples`` and tests each full window against the predecessor's newest outcomes before the
release (``stats.judge_window``: one-sided tests, false-alarm budget ``watch_false_alarm_rate`` over the watch's
whole life; see that module for the rate). A window's verdict is stored once (conditional update on the window
count), and a rollback verdict is claimed once (WATCHING -> ROLLING_BACK), so any number of processes may watch and
exactly one rolls back. The rollback itself is the registry's (``ModelRegistry.rollback``: the predecessor ACTIVE
again, audited, ``learning.model_deployment_failed`` with ``rolled_back_to`` in the same transaction); then one
transaction records the incident, closes the watch, pauses the loop policy that produced the model and opens the
deployment breaker. A claimer that dies is replaced after ``CLAIM_STALE_S``; the replacement sees whether the swap
already happened and finishes the bookkeeping.

It runs on every ``l07 run`` tick (``LearningLoop.tick``) and on demand (``l07 models watch ID``,
``POST /api/v1/models/{id}/watch``).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta
from typing import Any

from ...events.publisher import EventPublisher
from ...models._base import new_id, utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...observability.metrics import (
    MODEL_OUTCOME_ERROR_RATE,
    MODEL_OUTCOME_QUALITY,
    MODEL_OUTCOME_SAMPLES,
    MODEL_WATCH_ERROR_RATE_DELTA,
    MODEL_WATCH_QUALITY_RATIO,
)
from ...settings import Settings
from ...store.db import Database
from ...store.repositories.audit import audit
from ...store.repositories.feedback import WatchRepository
from ...store.repositories.loop import LoopRepository
from ...store.repositories.models import as_datetime
from ...store.repositories.outcomes import OutcomeRepository
from ..breakers import ComponentBreakers
from .canary import CANARY_GRACE_S, canary_window, judge_canary
from .stats import Summary, Thresholds, Verdict, judge_window

log = logging.getLogger(__name__)

ACTOR = "l07-watch"


class _Row:
    """A ``(quality, is_error)`` row as ``Summary.of`` reads it."""

    __slots__ = ("quality", "is_error")

    def __init__(self, quality: float, is_error: bool | None) -> None:
        self.quality, self.is_error = float(quality), bool(is_error)

CLAIM_STALE_S = 300.0
OPEN_STATES = ("WATCHING", "ROLLING_BACK")


def release_time(model: dict[str, Any], now: datetime) -> datetime:
    """When the watch of a model from ``WatchRepository.unwatched_active`` starts: its deployment time."""
    return as_datetime(model["deployed_at"]) or model["updated_at"] or now


class ReleaseWatch:
    """Watches released models and rolls back the ones that got worse.

    Args:
        db: The shared database.
        registry: The ``ModelRegistry`` whose ``rollback`` makes the predecessor ACTIVE again.
        settings: ``watch_*`` thresholds and window size.
        holder: This process's name in rollback claims.
    """

    def __init__(self, db: Database, registry: Any, settings: Settings, holder: str | None = None,
                 publisher: EventPublisher | None = None) -> None:
        self.db = db
        self.registry = registry
        self.settings = settings
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self.publisher = publisher or EventPublisher()
        self.breakers = ComponentBreakers(db, self.publisher)
        self.thresholds = Thresholds.from_settings(settings)

    async def tick(self) -> dict[str, str]:
        """Open watches for newly ACTIVE models, then evaluate every open watch; ``{model_id: what happened}``."""
        await self.open_new()
        async with self.db.session() as session:
            watches = await WatchRepository(session).list(OPEN_STATES + ("NO_BASELINE",))
        out: dict[str, str] = {}
        for watch in watches:
            try:
                out[watch["model_id"]] = (await self.evaluate(watch["model_id"]))["state"]
            except L07Error as exc:
                log.error("watch of %s: %s", watch["model_id"], exc)
                out[watch["model_id"]] = f"error {exc.code.value}: {exc.message}"
        return out

    async def open_watches(self) -> list[dict[str, Any]]:
        """The watches still running (for ``l07 loop status``): model, predecessor, windows judged, last verdict."""
        async with self.db.session() as session:
            rows = await WatchRepository(session).list(OPEN_STATES + ("NO_BASELINE",))
        return [{"model_id": w["model_id"], "model_name": w["model_name"], "baseline_model_id": w["baseline_model_id"],
                 "status": w["status"], "windows_evaluated": w["windows_evaluated"], "canary": w["canary_status"],
                 "state": (w["last_result"] or {}).get("state"), "samples": (w["last_result"] or {}).get("samples", 0),
                 "started_at": w["started_at"].isoformat()} for w in rows]

    async def open_new(self) -> list[str]:
        """A watch row for every PRODUCTION ACTIVE model without one; returns their ids."""
        now = utcnow()
        async with self.db.session() as session:
            repo = WatchRepository(session)
            fresh = await repo.unwatched_active()
            for m in fresh:
                started = release_time(m, now)
                canary = m["canary_config"] is not None and m["baseline_model_id"] is not None
                await repo.add({"model_id": m["model_id"], "model_name": m["name"],
                                "canary_status": "RUNNING" if canary else None,
                                "canary": canary_window(m["canary_config"], started) if canary else {},
                                "baseline_model_id": m["baseline_model_id"], "policy": m["policy"],
                                "status": "WATCHING" if m["baseline_model_id"] else "NO_BASELINE",
                                "started_at": started, "windows_evaluated": 0,
                                "last_result": {} if m["baseline_model_id"] else
                                {"state": "no predecessor: nothing to compare with or roll back to"},
                                "updated_at": now})
        return [m["model_id"] for m in fresh]

    async def evaluate(self, model_id: str) -> dict[str, Any]:
        """Test the model's completed windows; roll back on a significant drop. Returns the watch after the look.

        Raises:
            L07Error: E7250 when the model has never been ACTIVE (no watch).
        """
        async with self.db.session() as session:
            repo = WatchRepository(session)
            watch = await repo.get(model_id)
            serving = await repo.serving_state(model_id)
        if watch is None:
            if serving == "ACTIVE":
                await self.open_new()
                return await self.evaluate(model_id)
            raise L07Error(L07ErrorCode.MODEL_NOT_FOUND,
                           f"model {model_id} has no release watch: only a PRODUCTION ACTIVE model is watched",
                           model_id=model_id)
        if watch["status"] == "ROLLING_BACK":
            stale = watch["claimed_at"] is None or utcnow() - watch["claimed_at"] > timedelta(seconds=CLAIM_STALE_S)
            if stale:
                await self._claim_and_roll_back(watch, watch["last_result"])
            return await self._view(model_id, "rollback in progress" if not stale else None)
        if watch["status"] not in ("WATCHING", "NO_BASELINE"):
            return await self._view(model_id)
        if watch["last_result"].get("rollback"):
            # A process stored a rollback verdict and stopped before claiming it: finish its work.
            await self._claim_and_roll_back(watch, watch["last_result"])
            return await self._view(model_id)
        if serving != "ACTIVE":
            async with self.db.session() as session:
                await WatchRepository(session).end(model_id, "ENDED", utcnow(),
                                                   result={**watch["last_result"], "state": f"no longer ACTIVE ({serving})"})
            return await self._view(model_id)
        if watch["status"] == "NO_BASELINE":
            return await self._view(model_id)
        if watch["canary_status"] == "RUNNING" and await self._canary(watch):
            return await self._view(model_id)
        return await self._windows(watch)

    async def _canary(self, watch: dict[str, Any]) -> bool:
        """Decide the canary once its window (plus a grace for late scores) is over; True when it rolled back."""
        model_id, canary, now = watch["model_id"], watch["canary"], utcnow()
        ends = as_datetime(canary["ends_at"])
        if ends is None or now < ends + timedelta(seconds=CANARY_GRACE_S):
            return False
        start, incumbent = watch["started_at"], watch["baseline_model_id"]
        async with self.db.session() as session:
            repo = WatchRepository(session)
            types = await repo.task_types(model_id, start, ends) & await repo.task_types(incumbent, start, ends)
            cand = Summary.of(_Row(q, e) for q, e in await repo.served_between(model_id, start, ends, types))
            inc = Summary.of(_Row(q, e) for q, e in await repo.served_between(incumbent, start, ends, types))
        counts = {"task_types": sorted(types), "candidate_samples": cand.n, "incumbent_samples": inc.n,
                  "candidate_quality_mean": cand.mean, "incumbent_quality_mean": inc.mean,
                  "candidate_error_rate": cand.error_rate, "incumbent_error_rate": inc.error_rate,
                  "decided_at": now.isoformat()}
        need = self.settings.watch_canary_min_samples
        if min(cand.n, inc.n) < need:
            async with self.db.session() as session:
                await WatchRepository(session).decide_canary(model_id, "INCONCLUSIVE", {**canary, **counts, "reason":
                    f"fewer than {need} scored outcomes on a side over the same task types"}, now)
            return False
        result = {**judge_canary(cand, inc, self.thresholds, canary.get("error_limit")), **counts, "canary": True}
        if result["rollback"]:
            failed = {**result, "state": "canary failed"}
            async with self.db.session() as session:
                decided = await WatchRepository(session).decide_canary(model_id, "FAILED", {**canary, "result": result},
                                                                       now, result=failed)
            if decided:
                await self._claim_and_roll_back(watch, failed)
            return True
        version = (await self.registry.get_model(model_id)).version
        async with self.db.session() as session:
            if await WatchRepository(session).decide_canary(model_id, "PASSED", {**canary, "result": result}, now):
                # The canary passed: L04 may take the release to all traffic.
                await self.publisher.publish(session, "learning.model_deployment_approved", {
                    "model_id": model_id, "version": version, "from_stage": "PRODUCTION", "to_stage": "PRODUCTION",
                    "approval_chain": [{"role": "canary", "actor": ACTOR, "at": now.isoformat()}],
                    "canary_config": None, "canary_result": {k: result[k] for k in counts} | {"passed": True},
                    "approved_at": now.isoformat()}, subject=model_id)
                await audit(session, "model.canary_passed", "model", model_id, actor=ACTOR, details=result)
        return False

    async def _windows(self, watch: dict[str, Any]) -> dict[str, Any]:
        model_id, size = watch["model_id"], self.settings.watch_min_samples
        async with self.db.session() as session:
            outcomes = OutcomeRepository(session)
            baseline = Summary.of(await outcomes.before(watch["baseline_model_id"], watch["started_at"],
                                                        self.settings.watch_baseline_samples))
            done = await outcomes.count_completed(model_id, watch["started_at"])
        MODEL_OUTCOME_SAMPLES.labels(model_name=watch["model_name"]).set(done)
        if baseline.n < size:
            note = {"state": f"baseline too small: {baseline.n} scored outcomes of {watch['baseline_model_id']} "
                             f"before the release, {size} needed", "samples": done, "baseline_samples": baseline.n}
            async with self.db.session() as session:
                await WatchRepository(session).note(model_id, note, utcnow())
            return await self._view(model_id)
        k = watch["windows_evaluated"]
        while done >= (k + 1) * size:
            async with self.db.session() as session:
                window = Summary.of(await OutcomeRepository(session).window(model_id, watch["started_at"], k, size))
            verdict = judge_window(window, baseline, k + 1, self.thresholds)
            result = {**verdict.to_dict(), "state": "rollback" if verdict.rollback else "within thresholds",
                      "samples": done, "window_samples": window.n, "baseline_samples": baseline.n,
                      "quality_mean": window.mean, "baseline_quality_mean": baseline.mean,
                      "error_rate": window.error_rate, "baseline_error_rate": baseline.error_rate}
            async with self.db.session() as session:
                recorded = await WatchRepository(session).record_window(model_id, k, result, utcnow())
            MODEL_WATCH_QUALITY_RATIO.labels(model_name=watch["model_name"]).set(verdict.quality_ratio or 0.0)
            MODEL_WATCH_ERROR_RATE_DELTA.labels(model_name=watch["model_name"]).set(verdict.error_rate_delta)
            if not recorded:
                return await self.evaluate(model_id)  # another process judged this window: read its verdict
            log.info("watch window judged", extra={"model_id": model_id, "window": k + 1, "rollback": verdict.rollback})
            if verdict.rollback:
                await self._claim_and_roll_back(watch, result, verdict)
                return await self._view(model_id)
            k += 1
        if k == watch["windows_evaluated"]:
            async with self.db.session() as session:
                last = (await WatchRepository(session).get(model_id) or {}).get("last_result") or {}
                await WatchRepository(session).note(model_id, {**last, "samples": done, "next_window_at": (k + 1) * size,
                                                               "state": last.get("state", "collecting")}, utcnow())
        return await self._view(model_id)

    async def _claim_and_roll_back(self, watch: dict[str, Any], result: dict[str, Any],
                                   verdict: Verdict | None = None) -> None:
        model_id, now = watch["model_id"], utcnow()
        async with self.db.session() as session:
            if not await WatchRepository(session).claim(model_id, self.holder, now,
                                                        now - timedelta(seconds=CLAIM_STALE_S)):
                return
        quality = verdict.quality_degraded if verdict is not None else bool(result.get("quality_degraded"))
        reason = "canary_failure" if result.get("canary") else "quality_degradation" if quality else "bug"
        kind = "canary_failure" if result.get("canary") else "quality_degradation" if quality else "error_rate"
        error: L07Error | None = None
        rolled_back_to: str | None = None
        async with self.db.session() as session:
            serving = await WatchRepository(session).serving_state(model_id)
        if serving == "ACTIVE":
            try:
                target = await self._target_version(watch)
                active = await self.registry.rollback(model_id, actor=ACTOR, reason=reason, to_version=target)
                rolled_back_to = active.model_id
            except L07Error as exc:
                error = exc
                log.error("automatic rollback of %s failed: %s", model_id, exc)
        else:
            # The swap happened before (a claimer that died after it): only the bookkeeping is left.
            rolled_back_to = watch["baseline_model_id"]
        await self._record(watch, result, kind, reason, rolled_back_to, error, now)

    async def _target_version(self, watch: dict[str, Any]) -> str | None:
        """The predecessor's version when it is still STANDBY (else the registry's default target)."""
        try:
            previous = await self.registry.get_model(watch["baseline_model_id"])
        except L07Error:
            return None
        return previous.version if previous.serving_state.value == "STANDBY" else None

    async def _record(self, watch: dict[str, Any], result: dict[str, Any], kind: str, reason: str,
                      rolled_back_to: str | None, error: L07Error | None, now: datetime) -> None:
        model_id, name, policy = watch["model_id"], watch["model_name"], watch["policy"]
        code = {"canary_failure": L07ErrorCode.CANARY_DEPLOYMENT_FAILURE,
                "quality_degradation": L07ErrorCode.MODEL_QUALITY_BELOW_MINIMUM}.get(
            kind, L07ErrorCode.MODEL_REGRESSION_DETECTED).value
        why = f"{name} {model_id} rolled back automatically: {result.get('reason', kind)}" if error is None else \
            f"{name} {model_id} should roll back ({result.get('reason', kind)}) but could not: {error.message}"
        version = None
        if error is not None:
            try:
                version = (await self.registry.get_model(model_id)).version
            except L07Error:
                version = None
        details = {"verdict": result, "reason": reason, "baseline_model_id": watch["baseline_model_id"],
                   **({"rollback_error": error.to_dict()} if error is not None else {})}
        async with self.db.session() as session:
            repo = WatchRepository(session)
            if not await repo.end(model_id, "ROLLED_BACK" if error is None else "ROLLBACK_FAILED", now,
                                  holder=self.holder, result={**result, "state": why}):
                return  # our claim went stale and another process took it over
            repo.add_incident(incident_id=new_id(), model_id=model_id, model_name=name, kind=kind, error_code=code,
                              rolled_back_to=rolled_back_to, policy=policy, actor=ACTOR, details=details, created_at=now)
            if error is not None:
                # The registry published nothing: the failure is reported here, with nothing rolled back to.
                await self.publisher.publish(session, "learning.model_deployment_failed", {
                    "model_id": model_id, "version": version, "stage": "PRODUCTION", "error_code": code,
                    "error_message": why, "rolled_back_to": None, "failed_at": now.isoformat()}, subject=model_id)
            await audit(session, "model.watch_rollback", "model", model_id, actor=ACTOR,
                        result="success" if error is None else "failure", error_code=code, details=details)
            if policy:
                loop = LoopRepository(session)
                await loop.ensure_policy(policy, now)
                await loop.update_policy(policy, now, paused=True, breaker_state="OPEN", breaker_opened_at=now,
                                         breaker_reason=f"released model {model_id} rolled back: {kind}"[:2000])
                await audit(session, "loop.pause", "loop_policy", policy, actor=ACTOR,
                            details={"model_id": model_id, "incident": kind})
            await self.breakers.trip(session, "deployment", why)
        log.error("release watch rollback", extra={"model_id": model_id, "rolled_back_to": rolled_back_to,
                                                   "policy": policy, "kind": kind})

    async def _view(self, model_id: str, state: str | None = None) -> dict[str, Any]:
        async with self.db.session() as session:
            repo = WatchRepository(session)
            watch = await repo.get(model_id) or {}
            incidents = await repo.incidents(model_id)
            rows = await OutcomeRepository(session).summary(model_id, since=watch.get("started_at"))
        summary = rows[0] if rows else {}
        if watch.get("status") in OPEN_STATES and summary.get("samples"):
            MODEL_OUTCOME_QUALITY.labels(model_name=watch["model_name"]).set(summary["quality_mean"] or 0.0)
            MODEL_OUTCOME_ERROR_RATE.labels(model_name=watch["model_name"]).set(summary["error_rate"] or 0.0)
        return {**watch, "state": state or (watch.get("last_result") or {}).get("state") or watch.get("status"),
                "since_release": summary, "incidents": incidents,
                "window_size": self.settings.watch_min_samples,
                "false_alarm_rate": self.settings.watch_false_alarm_rate}

"""Advancing the loop's runs: a finished job is charged to the compute ledger, then its model goes through the one
release path (``LearningService.deploy_model``): DEPLOY -> STAGING with a signed ``model_ready_for_deployment``,
REVIEW -> the review queue, REJECT -> the model is REJECTED (quarantined) with the failing stages as the reason.

Any process may advance a run it claims (``claimed_by`` with a heartbeat), so validations are split between
``l07 run`` processes, and a run whose claimer died is taken over once its claim is stale. A process validates one
model at a time and claims no other run meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelStage
from ...models.training_job import JobStatus, TrainingJob
from ...models.validation import Recommendation
from ...store.repositories.loop import LoopRepository, LoopRun
from ..breakers import ComponentBreakers
from .breakers import PolicyBreakers

log = logging.getLogger(__name__)

# A verdict per outcome, and whether it counts against the policy's breaker.
OUTCOMES = {"STAGED": ("DEPLOY", False), "REVIEW": ("REVIEW", False), "REJECTED": ("REJECT", True),
            "FAILED": ("FAILED", True)}
TAKEN_OVER = "taken over by another process"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start is not None and end is not None else None


class RunAdvancer:
    """Moves open runs forward.

    Args:
        service: A built, initialised ``LearningService`` (jobs, registry, validator, release path).
        breakers: The policies' breakers.
        holder: This process's name.
        stale_after_s: A claim not refreshed for this long may be taken over.
    """

    def __init__(self, service: Any, breakers: PolicyBreakers, holder: str, stale_after_s: float) -> None:
        self.service = service
        self.db = service.db
        self.breakers = breakers
        self.components = ComponentBreakers(self.db, breakers.publisher)
        self.holder = holder
        self.stale_after_s = stale_after_s
        self._validations: dict[str, asyncio.Task] = {}

    async def advance(self) -> dict[str, str]:
        """One pass over the open runs; returns ``{run_id: what happened}`` for the runs that moved."""
        moved: dict[str, str] = {}
        async with self.db.session() as session:
            runs = await LoopRepository(session).open_runs()
        for run in runs:
            if self._validations and run.run_id not in self._validations:
                # One validation per process: two at once contend for the same cores and memory, and their threads
                # race on transformers' lazy imports (ImportError). Another process, or this one's next pass, takes it.
                continue
            now = utcnow()
            async with self.db.session() as session:
                claimed = await LoopRepository(session).claim_run(
                    run.run_id, self.holder, now, now - timedelta(seconds=self.stale_after_s))
            if not claimed or run.run_id in self._validations:
                continue
            if run.status == "VALIDATING":
                self._start_validation(run, run.model_id or "")
                moved[run.run_id] = "validation resumed"
                continue
            job = await self.service.sft_engine.get_job_status(run.job_id) if run.job_id else None
            if job is not None and job.status.terminal:
                moved[run.run_id] = await self._job_done(run, job)
        return moved

    async def _job_done(self, run: LoopRun, job: TrainingJob) -> str:
        timings = dict(run.timings)
        timings["queue_wait_s"] = _seconds(run.started_at, job.started_at)
        timings["training_s"] = _seconds(job.started_at, job.completed_at)
        seconds = timings["training_s"] or 0.0
        on_gpu = (job.device or "").startswith("cuda")
        charge = ((job.completed_at or utcnow()).strftime("%Y-%m-%d"), 0.0 if on_gpu else seconds,
                  seconds if on_gpu else 0.0)
        if job.status is JobStatus.COMPLETED and job.output_model_id:
            async with self.db.session() as session:
                repo = LoopRepository(session)
                if not await repo.update_claimed_run(run.run_id, self.holder, status="VALIDATING",
                                                     model_id=job.output_model_id, timings=timings):
                    return TAKEN_OVER
                await repo.charge(*charge, utcnow())
            self._start_validation(run, job.output_model_id, timings)
            return "validating"
        finished = await self.finish(run, "FAILED", timings, charge=charge,
                                     error_code=job.error_code or L07ErrorCode.UNHANDLED_EXCEPTION.value,
                                     message=job.error_message or f"job ended {job.status.value} without a model")
        return "failed" if finished else TAKEN_OVER

    def _start_validation(self, run: LoopRun, model_id: str, timings: dict[str, Any] | None = None) -> None:
        task = asyncio.create_task(self._validate(run, model_id, dict(timings or run.timings)))
        self._validations[run.run_id] = task
        task.add_done_callback(lambda _t, rid=run.run_id: self._validations.pop(rid, None))

    async def _validate(self, run: LoopRun, model_id: str, timings: dict[str, Any]) -> None:
        started = time.perf_counter()
        outcome, code, message = await self._release(model_id)
        timings["validation_release_s"] = round(time.perf_counter() - started, 3)
        await self.finish(run, outcome, timings, model_id=model_id, error_code=code, message=message, stage="validation")

    async def _release(self, model_id: str) -> tuple[str, str | None, str | None]:
        """Deploy through the one release path, unless an earlier attempt (before a crash) already decided."""
        try:
            model = await self.service.registry.get_model(model_id)
            if model.stage in (ModelStage.STAGING, ModelStage.PRODUCTION):
                return "STAGED", None, None
            if model.stage is ModelStage.REJECTED:
                return "REJECTED", L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED.value, "rejected before a restart"
            result = await self.service.deploy_model(model_id)
        except L07Error as exc:
            outcome = "REJECTED" if exc.code is L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED else "FAILED"
            return outcome, exc.code.value, exc.message
        except Exception as exc:  # noqa: BLE001 - a run ends FAILED with the reason; the loop goes on
            log.exception("release of %s failed", model_id)
            return "FAILED", L07ErrorCode.UNHANDLED_EXCEPTION.value, f"{exc.__class__.__name__}: {exc}"
        return ("STAGED", None, None) if result.recommendation is Recommendation.DEPLOY else ("REVIEW", None, None)

    async def finish(self, run: LoopRun, outcome: str, timings: dict[str, Any], *, model_id: str | None = None,
                     error_code: str | None = None, message: str | None = None,
                     charge: tuple[str, float, float] | None = None, stage: str | None = None) -> bool:
        """Close a run this process claims, charge its job's ``(day, cpu_s, gpu_s)`` and count it against its policy's
        breaker and, by the ``stage`` it ended in, the component breakers (``services/breakers.py``), all in one
        transaction (a crash in between neither charges twice nor loses the outcome).

        Returns:
            False when another process took the run over meanwhile: it finishes (and charges) the run, not us.
        """
        verdict, failed = OUTCOMES[outcome]
        async with self.db.session() as session:
            repo = LoopRepository(session)
            if not await repo.update_claimed_run(
                    run.run_id, self.holder, status=outcome, verdict=verdict, model_id=model_id or run.model_id,
                    timings=timings, error_code=error_code, error_message=(message or "")[:4000] or None,
                    finished_at=utcnow(), claimed_by=None):
                log.warning("loop run taken over by another process", extra={"run_id": run.run_id})
                return False
            if charge is not None:
                await repo.charge(*charge, utcnow())
            await self.breakers.record(session, run.policy, failed=failed, verdict=verdict, run_id=run.run_id,
                                       error_code=error_code, message=message)
            await self._components(session, stage, outcome, f"{error_code or verdict}: {message or outcome}")
        log.info("loop run finished", extra={"run_id": run.run_id, "policy": run.policy, "outcome": outcome})
        return True

    async def _components(self, session: Any, stage: str | None, outcome: str, reason: str) -> None:
        """A validation that crashed counts against validation; a model it REJECTED against training (§4.4 E7402:
        consecutive models below their baseline), one it passed for training; a staged release for deployment. A job
        that failed is its policy's concern (the policy breaker), not a sign that training as a whole regressed."""
        if stage != "validation":
            return
        crashed = outcome == "FAILED"
        await self.components.record(session, "validation", ok=not crashed, reason=reason)
        if not crashed:
            await self.components.record(session, "training", ok=outcome != "REJECTED", reason=reason)
        if outcome == "STAGED":
            await self.components.record(session, "deployment", ok=True)

    async def close(self) -> None:
        """Cancel running validations; their runs stay VALIDATING and are resumed by the next claimer."""
        for task in list(self._validations.values()):
            task.cancel()
        for task in list(self._validations.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._validations.clear()

    async def wait(self) -> None:
        """Wait for the validations in flight (tests, orderly shutdown)."""
        if self._validations:
            await asyncio.gather(*list(self._validations.values()), return_exceptions=True)

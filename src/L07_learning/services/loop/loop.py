"""``LearningLoop``: the autonomous loop behind ``l07 run`` (contract §9).

One ``tick()`` polls the watched folders, advances open runs (job finished -> validate -> release), and, on the
elected leader only, evaluates every policy's trigger and runs the due schedules. A trigger makes a new dataset
version (the first run creates the dataset, later runs add a MINOR version that keeps existing splits), queues the
job with an idempotency key derived from that version, and records the run, so a crash at any step neither loses
examples nor trains a version twice. Jobs run in the job runner (the embedded worker, or ``l07 worker``
processes), so any number of ``l07 run`` processes share them.

The wiring is one call each: ``LearningLoop.build(...)`` then ``run_forever(stop)`` for ``l07 run``;
``status()`` for ``l07 loop status`` and ``GET /api/v1/loop``; ``resume(policy)`` for ``l07 loop resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ...models._base import new_id, utcnow
from ...models.dataset import Dataset
from ...models.error_codes import L07Error
from ...models.training_job import JobType, TrainingJob
from ...settings import Settings, get_settings
from ...store.db import Database
from ...store.repositories.loop import LoopRepository, LoopRun, PolicyState
from ..breakers import SPECS as BREAKER_SPECS
from ..breakers import ComponentBreakers
from ..feedback.watch import ReleaseWatch
from ..fine_tuning_engine import load_preset
from ..learning_service import LearningService
from .breakers import PolicyBreakers
from .datasets import version_group
from .lease import LeaderLease
from .policies import LoopPolicy, PolicySet, TriggerDecision, evaluate_trigger, load_policies
from .runs import RunAdvancer
from .schedules import Scheduler, ScheduledTask, default_tasks
from .watch import FolderWatcher

log = logging.getLogger(__name__)

# A policy's claim outlives the leader lease: making a dataset version of a large group can take minutes.
POLICY_CLAIM_TTLS = 10


class LearningLoop:
    """The loop of one process.

    Args:
        service: A built ``LearningService`` (``LearningService.build``); initialised by ``start()``.
        policies: The policy set (default: one group per task type, triggers from the settings).
        watch: Folders whose ``*.jsonl`` files are ingested.
        streams: Redis Streams to consume, ``(redis_url, stream, group)`` each: one consumer task per stream in
            ``run_forever``, every batch through ingestion and the quality filter (``LearningService.consume``).
        tasks: Schedules (default ``schedules.default_tasks(service)``).
        tick_s: Pause between ticks in ``run_forever``.
        run_worker: Start the embedded job worker in ``run_forever``.
        holder: This process's lease holder name.
    """

    def __init__(self, service: LearningService, policies: PolicySet | None = None, *,
                 watch: list[str | Path] | tuple = (), streams: list[tuple[str, str, str]] | tuple = (),
                 tasks: list[ScheduledTask] | None = None,
                 tick_s: float = 5.0, run_worker: bool = True, holder: str | None = None,
                 settle_s: float = 1.0) -> None:
        self.service = service
        self.settings: Settings = service.settings
        self.db: Database = service.db
        self.policies = policies or load_policies(None)
        self.tick_s = tick_s
        self.run_worker = run_worker
        self.lease = LeaderLease(self.db, holder, ttl_s=self.settings.loop_lease_ttl_s)
        self.breakers = PolicyBreakers(self.db)
        self.runs = RunAdvancer(service, self.breakers, self.lease.holder, stale_after_s=2 * self.lease.ttl_s)
        self.components = ComponentBreakers(self.db, self.breakers.publisher)
        self.release_watch = ReleaseWatch(self.db, service.registry, self.settings, self.lease.holder)
        self.scheduler = Scheduler(self.db, default_tasks(service) if tasks is None else tasks, self.lease.holder)
        self.watchers = [FolderWatcher(d, db=self.db, settings=self.settings, quality_filter=service.filter,
                                       settle_s=settle_s, holder=self.lease.holder) for d in watch]
        self.streams = [service.stream_source(url, stream, group,
                                              max_deliveries=self.settings.dead_letter_after_attempts)
                        for url, stream, group in streams]
        self._consumers: list[asyncio.Task] = []
        self._started = False

    @classmethod
    def build(cls, settings: Settings | None = None, *, policy_file: str | Path | None = None,
              watch: list[str | Path] | tuple = (), db: Database | None = None, **options: Any) -> "LearningLoop":
        """The loop over a freshly composed ``LearningService`` (what ``l07 run`` and the API call).

        Raises:
            L07Error: E7905 missing policy file, E7500 invalid policy file.
        """
        service = LearningService.build(settings or get_settings(), db)
        return cls(service, load_policies(policy_file), watch=watch, **options)

    # --- lifecycle --------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database and start the outbox relay (``LearningService.initialize``)."""
        if not self._started:
            await self.service.initialize()
            self._started = True

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set, with the embedded job worker running beside; a failing tick is logged and the
        next one runs. On the way out the lease is given up so another process leads at once."""
        await self.start()
        if self.run_worker:
            self.service.sft_engine.start_background_worker()
        self._consumers = [asyncio.create_task(self._consume(source, stop)) for source in self.streams]
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:  # noqa: BLE001 - the loop outlives any one failure (database blip, bad policy)
                    log.exception("loop tick failed")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.tick_s)
        finally:
            await self.close()

    async def _consume(self, source: Any, stop: asyncio.Event) -> None:
        """Consume one stream until ``stop``; a broken connection is retried (unacknowledged entries are redelivered,
        and every event id is claimed once, so nothing is lost or counted twice)."""
        while not stop.is_set():
            try:
                summary = await self.service.consume(source)
                log.info("stream consumer stopped", extra={"stream": source.stream, **summary})
            except Exception:  # noqa: BLE001 - Redis down or a storage failure: retry after a pause
                log.exception("stream %s: consumer failed, retrying", source.stream)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick_s)

    async def close(self) -> None:
        """Stop the stream consumers and validations in flight, release the lease, stop the worker and the relay."""
        for source in self.streams:
            source.stop()
        if self._consumers:
            _, late = await asyncio.wait(self._consumers, timeout=5.0)
            for task in late:
                task.cancel()
        for source in self.streams:
            with contextlib.suppress(Exception):
                await source.close()
        self._consumers = []
        await self.runs.close()
        with contextlib.suppress(Exception):
            await self.lease.release()
        await self.service.cleanup()
        self._started = False

    async def resume(self, policy: str, actor: str = "l07") -> dict[str, Any]:
        """Close a policy's breaker (``l07 loop resume POLICY``)."""
        await self.start()
        return _state_dict(await self.breakers.resume(policy, actor))

    async def reset_breaker(self, component: str, actor: str = "l07") -> dict[str, Any]:
        """Close a component breaker by hand (``l07 loop reset-breaker COMPONENT``; training needs it, §4.4)."""
        await self.start()
        return await self.components.reset(component, actor)

    # --- one pass ---------------------------------------------------------------------------------------------------

    async def tick(self) -> dict[str, Any]:
        """One pass of the loop; returns what it did (files ingested, runs moved, triggers, schedules)."""
        await self.start()
        leader = await self.lease.acquire()
        report: dict[str, Any] = {"leader": leader, "files": [], "runs": {}, "policies": {}, "schedules": {}}
        for watcher in self.watchers:
            report["files"] += await watcher.poll()
        report["runs"] = await self.runs.advance()
        # Every process watches the released models; the rollback is claimed, so exactly one process makes it.
        try:
            report["watch"] = await self.release_watch.tick()
        except Exception as exc:  # noqa: BLE001 - a failing watch must not stop ingestion, runs or schedules
            log.exception("release watch failed")
            report["watch"] = {"error": f"{exc.__class__.__name__}: {exc}"}
        # The lease is renewed before each policy and each schedule (the leader's work can outlast its TTL): a process
        # that lost it stops there, so two processes never both act as leader for long.
        if leader:
            report["policies"] = await self._trigger_all(utcnow())
            report["schedules"] = await self.scheduler.run_due(still_leading=self.lease.acquire)
        return report

    async def _trigger_all(self, now: datetime) -> dict[str, str]:
        async with self.db.session() as session:
            task_types = await LoopRepository(session).accepted_task_types()
        out: dict[str, str] = {}
        for policy in self.policies.expand(task_types):
            if not await self.lease.acquire():
                log.warning("loop leadership lost; the new leader evaluates the remaining policies")
                break
            try:
                out[policy.name] = await self._claimed(policy, now)
            except L07Error as exc:
                log.error("loop policy %s: %s", policy.name, exc)
                out[policy.name] = f"error {exc.code.value}: {exc.message}"
            except Exception as exc:  # noqa: BLE001 - one broken policy must not stop the others or the schedules
                log.exception("loop policy %s failed", policy.name)
                out[policy.name] = f"error: {exc.__class__.__name__}: {exc}"
        return out

    async def _claimed(self, policy: LoopPolicy, now: datetime) -> str:
        """``_consider`` under the policy's own claim, so a process that still believes it leads (its lease lapsed
        mid-tick) and the new leader never both make a dataset version for one policy. A holder that dies keeps the
        claim for ``POLICY_CLAIM_TTLS`` lease lifetimes; a version it left without a run is then trained by the
        recovery path."""
        claim = LeaderLease(self.db, self.lease.holder, ttl_s=POLICY_CLAIM_TTLS * self.lease.ttl_s,
                            name=f"loop-policy:{policy.name}")
        if not await claim.acquire():
            return "another process is evaluating this policy"
        try:
            return await self._consider(policy, now)
        finally:
            await claim.release()

    async def _consider(self, policy: LoopPolicy, now: datetime) -> str:
        # Every write (dataset version, job, run) happens after this session is closed: on SQLite its first write
        # (ensure_policy) holds the database's write lock until it ends.
        async with self.db.session() as session:
            repo = LoopRepository(session)
            state = await repo.ensure_policy(policy.name, now)
            if state.breaker_state == "OPEN" or state.paused:
                return "breaker open"
            if await repo.runs(policy.name, status="TRAINING", limit=1) or \
                    await repo.runs(policy.name, status="VALIDATING", limit=1):
                return "run in progress"
            head = await repo.dataset_head(policy.dataset_name)
            # A crash came between a dataset version and its run: that version is trained, not a new one made.
            orphan = head if head is not None and head[1] != state.dataset_version and \
                await repo.run_for_dataset(policy.name, *head) is None else None
            if orphan is None:
                decision, _, _ = await self._evaluate(repo, policy, state, head, now)
                if not decision.fire:
                    return decision.reason
            blocked = await self._blocked(repo, now)
            if blocked:
                return blocked
        # After the session: on SQLite it holds the write lock, and a half-open probe is a write of its own.
        for component in BREAKER_SPECS:
            allowed, why = await self.components.allow(component)
            if not allowed:
                return why
        if orphan is not None:
            dataset = await self.service.curator.get_dataset(*orphan)
            return await self._submit(policy, dataset, now, "dataset version without a run (resumed)", 0.0)
        started = time.perf_counter()
        dataset = await version_group(self.service.curator, self.db, policy.dataset_name, policy.group,
                                      min_examples=policy.trigger.min_dataset_size or self.settings.minimum_dataset_size,
                                      reason=f"loop {policy.name}: {decision.reason}", created_by="l07-loop")
        return await self._submit(policy, dataset, now, decision.reason, time.perf_counter() - started)

    async def _evaluate(self, repo: LoopRepository, policy: LoopPolicy, state: PolicyState | None,
                        head: tuple[str, str] | None, now: datetime) -> tuple[TriggerDecision, int, int]:
        g = policy.group
        new = await repo.count_group(g.agent_id, g.task_type, g.labels, *(head or (None, None)))
        size = await repo.count_group(g.agent_id, g.task_type, g.labels)
        since = (state.dataset_at or state.created_at) if state is not None else None
        decision = evaluate_trigger(policy, self.settings, now=now, new_examples=new, group_size=size,
                                    since=since or now, last_run_at=state.last_run_at if state else None)
        return decision, new, size

    async def _blocked(self, repo: LoopRepository, now: datetime) -> str | None:
        """Why no new job may start now (job slots, today's compute budget), or None."""
        active = sum((await repo.active_jobs()).values())
        if active >= self.settings.max_concurrent_jobs:
            return f"waiting for a job slot ({active}/{self.settings.max_concurrent_jobs} jobs active)"
        cpu, gpu = await repo.spent(now.strftime("%Y-%m-%d"))
        if cpu >= self.settings.loop_daily_cpu_budget_s or gpu >= self.settings.loop_daily_gpu_budget_s:
            return f"daily compute budget spent (cpu {cpu:.0f} s, gpu {gpu:.0f} s)"
        return None

    async def _submit(self, policy: LoopPolicy, dataset: Dataset, now: datetime, reason: str,
                      dataset_s: float) -> str:
        """Queue the job for a dataset version and record the run with the policy's new state."""
        async with self.db.session() as session:
            pairs = await LoopRepository(session).preference_pairs(policy.group.task_type)
        kind = policy.job_kind(pairs)
        run = LoopRun(run_id=new_id(), policy=policy.name, job_type=kind.upper(), dataset_id=dataset.dataset_id,
                      dataset_version=dataset.version, examples=len(dataset.examples), status="TRAINING",
                      timings={"dataset_s": round(dataset_s, 3)}, started_at=now)
        error: L07Error | None = None
        try:
            job = await self._queue_job(policy, kind, dataset)
            run = LoopRun(**{**run.__dict__, "job_id": job.job_id})
        except L07Error as exc:
            error = exc
        async with self.db.session() as session:
            repo = LoopRepository(session)
            if not await repo.add_run(run):
                return "run already recorded"
            if error is not None:
                # Claimed here so that this process, and only it, closes the run below.
                await repo.claim_run(run.run_id, self.lease.holder, now, now)
            await repo.update_policy(policy.name, now, dataset_id=dataset.dataset_id, dataset_version=dataset.version,
                                     dataset_at=now, examples_at_last_run=len(dataset.examples),
                                     last_run_id=run.run_id, last_run_at=now)
        if error is not None:
            await self.runs.finish(run, "FAILED", run.timings, error_code=error.code.value, message=error.message)
            return f"job refused: {error.code.value} {error.message}"
        log.info("loop run started", extra={"policy": policy.name, "run_id": run.run_id, "job_id": run.job_id})
        return f"triggered ({reason}): {kind} job {run.job_id} on {dataset.name} {dataset.version}"

    async def _queue_job(self, policy: LoopPolicy, kind: str, dataset: Dataset) -> TrainingJob:
        t = policy.training
        key = f"loop:{policy.name}:{dataset.dataset_id}:{dataset.version}"
        if kind == "distillation":
            return await self.service.distillation_engine.start_distillation(
                t.teacher_model_id, dataset.dataset_id, model_name=policy.dataset_name, created_by="l07-loop",
                idempotency_key=key)
        overrides = {"model_name": policy.dataset_name, **t.config}
        # Without a preset the engine picks the measured recipe (device, model size, dataset size) under overrides.
        config = load_preset(t.preset, overrides) if t.preset else overrides
        return await self.service.sft_engine.start_training(
            dataset.dataset_id, t.base_model_id, config, job_type=JobType(kind), created_by="l07-loop",
            idempotency_key=key)

    # --- status -----------------------------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """What ``l07 loop status`` and ``GET /api/v1/loop`` show (JSON-ready).

        Per policy: new examples since its last dataset, group size, next trigger, last run and verdict, breaker;
        then the compute budget left today, jobs by status, models per stage, the REVIEW queue, the leader and the
        schedules.
        """
        await self.start()
        now = utcnow()
        day = now.strftime("%Y-%m-%d")
        async with self.db.session() as session:
            repo = LoopRepository(session)
            configured = self.policies.expand(await repo.accepted_task_types())
            stored = {s.policy: s for s in await repo.list_policies()}
            policies = []
            for policy in configured:
                state = stored.pop(policy.name, None)
                head = await repo.dataset_head(policy.dataset_name)
                decision, new, size = await self._evaluate(repo, policy, state, head, now)
                last = (await repo.runs(policy.name, limit=1) or [None])[0]
                policies.append({
                    "policy": policy.name, "configured": True, "dataset": policy.dataset_name,
                    "dataset_version": head[1] if head else None, "new_examples": new, "group_size": size,
                    "next_trigger": "breaker open: l07 loop resume " + policy.name
                    if state and state.breaker_state == "OPEN" else decision.next_trigger,
                    "last_run": last.to_dict() if last else None, **_state_dict(state, policy.name)})
            for state in stored.values():
                last = (await repo.runs(state.policy, limit=1) or [None])[0]
                policies.append({"policy": state.policy, "configured": False,
                                 "last_run": last.to_dict() if last else None, **_state_dict(state, state.policy)})
            cpu, gpu = await repo.spent(day)
            jobs = await repo.active_jobs()
            stages = await repo.models_per_stage()
            review = await repo.review_queue_size()
            open_runs = [r.to_dict() for r in await repo.open_runs()]
        return {
            "at": now.isoformat(), "this_process": self.lease.holder, "leader": await self.lease.current(),
            "policies": policies,
            "budget": {"day": day, "cpu_seconds_used": cpu, "gpu_seconds_used": gpu,
                       "cpu_seconds_left": max(self.settings.loop_daily_cpu_budget_s - cpu, 0.0),
                       "gpu_seconds_left": max(self.settings.loop_daily_gpu_budget_s - gpu, 0.0)},
            "jobs": {"active": jobs, "running": sum(jobs.values()),
                     "max_concurrent": self.settings.max_concurrent_jobs},
            "models_per_stage": stages, "review_queue": review, "open_runs": open_runs,
            "schedules": await self.scheduler.status(now),
            "breakers": await self.components.status(),
            "watches": await self.release_watch.open_watches(),
        }


def _state_dict(state: PolicyState | None, name: str | None = None) -> dict[str, Any]:
    if state is None:
        return {"policy": name, "breaker": {"state": "CLOSED", "opened_at": None, "reason": None,
                                            "consecutive_failures": 0}, "paused": False, "last_verdict": None}
    return {"policy": state.policy, "last_verdict": state.last_verdict, "paused": state.paused,
            "breaker": {"state": state.breaker_state, "consecutive_failures": state.consecutive_failures,
                        "opened_at": state.breaker_opened_at.isoformat() if state.breaker_opened_at else None,
                        "reason": state.breaker_reason}}

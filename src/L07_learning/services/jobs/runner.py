"""The training worker: claims jobs, runs each in its own process, heartbeats, cancels, retries and resumes.

A worker (``l07 worker``, or the embedded background task) loops over :meth:`JobRunner.run_once`:

1. Claim the oldest PENDING job, or a job whose worker stopped heart-beating (it died; the job resumes from its last
   checkpoint). See ``store/repositories/jobs.py`` for the claim (``FOR UPDATE SKIP LOCKED`` on PostgreSQL).
2. Prepare its input in this process (base model through ``ModelRegistry.local_path``, verified; dataset through
   ``DatasetCurator``) and write a spec file into the job's work folder.
3. Start ``python -m L07_learning.services.jobs.runner child SPEC`` (under ``torchrun`` for several processes). The
   child runs the job type's pipeline entry point (table :data:`JOB_KINDS`) and writes JSON lines (steps, evals,
   checkpoints, the result or an error code) on its stdout; library output goes to ``child.log``.
4. While it runs: store step/eval events, heartbeat, publish ``learning.training_progress_updated`` at the configured
   cadence, and watch for cancellation (a flag file stops the child within one optimizer step; after a grace period it
   is terminated).
5. Finish: retry per contract §4.1 (OOM -> smaller batch with more accumulation; NaN -> half the learning rate, once;
   transient crash -> backoff), or register the output through the job kind's ``register`` hook and complete.

The child dies with its worker (``PR_SET_PDEATHSIG``), so a killed worker never leaves training running unowned.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ...events.outbox_relay import backoff_seconds
from ...events.publisher import EventPublisher
from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ModelType
from ...models.training_job import JobConfig, JobStatus, JobType, TrainingJob
from ...observability.metrics import (
    THROUGHPUT,
    TRAINING_JOB_DURATION,
    TRAINING_JOBS,
    TRAINING_LOSS,
    TRAINING_TOKENS,
    VALIDATION_ACCURACY,
    VALIDATION_LOSS,
)
from ...settings import Settings, get_settings
from ...store.db import Database, get_database
from ...store.repositories.audit import audit
from ...store.repositories.jobs import ACTIVE_STATES, JobRepository

log = logging.getLogger(__name__)

MAX_RETRIES = 3
# Per-cause retry limits (contract §4.1); the total is capped by MAX_RETRIES.
RETRY_LIMITS = {
    L07ErrorCode.GPU_OUT_OF_MEMORY: 3,
    L07ErrorCode.TRAINING_DIVERGENCE: 1,
    L07ErrorCode.BASE_MODEL_LOADING_FAILURE: 1,
    L07ErrorCode.CHECKPOINT_SAVE_FAILURE: 3,
    L07ErrorCode.CONTAINER_STARTUP_FAILURE: 3,
    L07ErrorCode.NETWORK_CONNECTIVITY_ERROR: 3,
}
CANCEL_FILE = "CANCEL"
RESULT_FILE = "result.json"


@dataclass
class RunnerContext:
    """What a job kind's hooks may use."""

    db: Database
    settings: Settings
    registry: Any
    curator: Any
    workdir: Path


PrepareHook = Callable[[TrainingJob, JobConfig, RunnerContext], Awaitable[dict[str, Any]]]
RegisterHook = Callable[[TrainingJob, dict[str, Any], RunnerContext], Awaitable[str | None]]


@dataclass
class JobKind:
    """How one job type runs.

    Attributes:
        entry_point: ``"module:function"`` called in the child as ``fn(spec, emit, should_cancel) -> dict`` with
            ``{"adapter_dir" | "output_dir", "metrics", "cancelled"}``.
        prepare: Builds the JSON spec handed to the entry point (runs in the worker, may use the DB).
        register: Registers the output and returns its ``model_id``.
    """

    entry_point: str
    prepare: PrepareHook
    register: RegisterHook


async def split_rows(job: TrainingJob, config: JobConfig, ctx: RunnerContext) -> dict[str, list[list[dict[str, str]]]]:
    """The job's dataset version as chat rows per split (train, val, test).

    Raises:
        L07Error: E7028/E7031 for the dataset, E7031 when its train split is empty.
    """
    dataset = await ctx.curator.get_dataset(job.dataset_id, job.dataset_version)
    rows = {split: [e.chat_messages(config.system_prompt) for e in dataset.split_examples(split)]
            for split in ("train", "val", "test")}
    if not rows["train"]:
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE,
                       f"dataset {job.dataset_id} {dataset.version} has an empty train split")
    return rows


async def prepare_supervised(job: TrainingJob, config: JobConfig, ctx: RunnerContext) -> dict[str, Any]:
    """Spec for SFT-style jobs: the verified base model folder and the dataset version's splits as chat rows.

    Raises:
        L07Error: E7032/E7201/E7207 from the registry, E7028/E7031 for the dataset.
    """
    from ...pipelines.lora_targets import resolve_target_modules

    base_dir = await ctx.registry.local_path(job.base_model_id)
    splits = await split_rows(job, config, ctx)
    return {
        "base_model_dir": str(base_dir),
        "train_rows": splits["train"],
        "val_rows": splits["val"],
        "test_rows": splits["test"],
        "config": config.model_dump(mode="json"),
        "target_modules": resolve_target_modules(config.target_modules, base_dir),
        "output_dir": str(ctx.workdir / "adapter"),
        "checkpoint_dir": str(ctx.workdir / "checkpoints"),
    }


async def register_adapter(job: TrainingJob, result: dict[str, Any], ctx: RunnerContext) -> str | None:
    """Register the trained LoRA adapter as LORA_ADAPTER with lineage to base model, job and dataset version."""
    base = await ctx.registry.get_model(job.base_model_id)
    config = JobConfig(**job.config) if isinstance(job.config, dict) else job.config
    name = config.model_name or f"{base.name.split('/')[-1].lower()}-sft"
    metrics = result.get("metrics", {})
    artifact = ModelArtifact(
        name=name,
        model_type=ModelType.LORA_ADAPTER,
        parent_model_id=base.model_id,
        training_job_id=job.job_id,
        dataset_id=job.dataset_id,
        dataset_version=job.dataset_version,
        base_model_name=base.name,
        base_model_version=base.version,
        metrics={"training_metrics": {k: v for k, v in metrics.items() if k not in ("loss_curve", "evals")}},
        config=config.model_dump(mode="json"),
        tags=[job.job_type.value.lower()],
    )
    return await ctx.registry.register_model(artifact, source_dir=result["adapter_dir"])


# job_type -> pipeline entry point. RLHF and distillation plug in with their own entry points (and hooks).
JOB_KINDS: dict[JobType, JobKind] = {
    JobType.SFT: JobKind("L07_learning.pipelines.sft_pipeline:entry", prepare_supervised, register_adapter),
}


def register_job_kind(job_type: JobType, kind: JobKind) -> None:
    """Plug a pipeline into the runner (RLHF, distillation)."""
    JOB_KINDS[JobType(job_type)] = kind


def _load_job_kind(job_type: JobType) -> JobKind:
    if job_type not in JOB_KINDS:
        # RLHF and distillation modules register themselves on import.
        module = {JobType.RLHF: "rlhf_engine", JobType.DISTILLATION: "distillation_engine"}.get(job_type)
        if module:
            with contextlib.suppress(ModuleNotFoundError):
                importlib.import_module(f"..{module}", __package__)
            # In the child (``python -m``) this module is ``__main__``; kinds register on the package's job_runner.
            JOB_KINDS.update(importlib.import_module(f"{__package__}.runner").JOB_KINDS)
    if job_type not in JOB_KINDS:
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"no pipeline registered for job type {job_type.value}")
    return JOB_KINDS[job_type]


class OwnershipLost(Exception):
    """This worker's heartbeat found the job owned by another worker."""


class _Outcome:
    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.cancelled = False
        self.returncode: int | None = None


class JobRunner:
    """One worker. ``run_once`` claims and runs at most one job; ``run_forever`` loops.

    Args:
        db, registry, curator, settings, publisher: Collaborators (defaults: configured ones).
        progress_interval_s: Cadence of ``learning.training_progress_updated`` (contract: 60 s).
        cancel_grace_s: How long a cancelled child may take to stop cooperatively before it is terminated.
        worker_id: Name of this worker (default ``host:pid``).
    """

    def __init__(self, db: Database | None = None, registry: Any = None, curator: Any = None,
                 settings: Settings | None = None, publisher: EventPublisher | None = None,
                 progress_interval_s: float | None = None, cancel_grace_s: float = 10.0,
                 worker_id: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self._registry = registry
        self._curator = curator
        self.publisher = publisher or EventPublisher()
        self.progress_interval_s = (progress_interval_s if progress_interval_s is not None
                                    else self.settings.progress_interval_s)
        self.cancel_grace_s = cancel_grace_s
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from ..model_registry import ModelRegistry

            self._registry = ModelRegistry(db=self.db, settings=self.settings)
        return self._registry

    @property
    def curator(self) -> Any:
        if self._curator is None:
            from ..dataset_curator import DatasetCurator

            self._curator = DatasetCurator(db=self.db, settings=self.settings)
        return self._curator

    def workdir(self, job_id: str) -> Path:
        """The job's folder: spec, child log, checkpoints, adapter (shared by every worker that runs the job)."""
        return Path(self.settings.home) / "jobs" / job_id

    # --- loop ---------------------------------------------------------------------------------------------------

    async def run_forever(self, poll_s: float = 2.0, stop: asyncio.Event | None = None) -> None:
        """Claim and run jobs until ``stop`` is set."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            ran = await self.run_once()
            if not ran:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll_s)

    async def run_once(self) -> TrainingJob | None:
        """Claim one job and run it to a terminal state (or until this worker loses it). None when idle."""
        stale_before = utcnow() - timedelta(seconds=self.settings.worker_stale_after_s)
        async with self.db.session() as session:
            repo = JobRepository(session)
            running = [j for j in await repo.list(limit=1000) if j.status in ACTIVE_STATES]
            claimed = await repo.claim(self.worker_id, os.getpid(), stale_before)
            if claimed is None:
                return None
            job, previous = claimed
            # Jobs that are live elsewhere count against the slot limit (contract §4.1: max_concurrent_jobs).
            live_elsewhere = [j for j in running if j.job_id != job.job_id]
            if previous == JobStatus.PENDING and len(live_elsewhere) >= self.settings.max_concurrent_jobs:
                await repo.release(job.job_id, self.worker_id)
                await repo.update(job.job_id, heartbeat_at=None)
                return None
        return await self._run(job, previous)

    # --- one job ------------------------------------------------------------------------------------------------

    async def _run(self, job: TrainingJob, previous: JobStatus) -> TrainingJob:
        job_id = job.job_id
        _, _, cancel_requested = await self._read(lambda r: r.worker_of(job_id))
        if cancel_requested:
            return await self._finish_cancelled(job, started=time.monotonic())
        workdir = self.workdir(job_id)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / CANCEL_FILE).unlink(missing_ok=True)
        started = time.monotonic()
        config = JobConfig(**job.config) if isinstance(job.config, dict) else job.config
        resumed = previous != JobStatus.PENDING
        ctx = RunnerContext(self.db, self.settings, self.registry, self.curator, workdir)
        if previous == JobStatus.VALIDATING and (workdir / RESULT_FILE).is_file():
            # The worker died after training, while registering: finish from the saved result, do not retrain.
            await self._event(job_id, "resumed", {"previous_status": previous.value, "worker_id": self.worker_id})
            result = json.loads((workdir / RESULT_FILE).read_text())
            return await self._register(job, _load_job_kind(job.job_type), ctx, result, started)
        if resumed:
            if job.retry_count >= MAX_RETRIES:
                return await self._fail(job, L07ErrorCode.CHECKPOINT_RECOVERY_FAILED,
                                        "worker died and the retry limit is spent", started)
            job = await self._transition(job_id, JobStatus.RETRYING, retry_count=job.retry_count + 1,
                                         event=("resumed", {"previous_status": previous.value,
                                                            "worker_id": self.worker_id}))
        else:
            job = await self._start(job, config)
        try:
            kind = _load_job_kind(job.job_type)
        except L07Error as exc:
            return await self._fail(job, exc.code, exc.message, started)
        attempts_by_cause: dict[str, int] = {}
        while True:
            try:
                spec = await kind.prepare(job, config, ctx)
            except L07Error as exc:
                return await self._fail(job, exc.code, exc.message, started)
            if not resumed and job.status == JobStatus.INITIALIZING:
                job = await self._transition(job_id, JobStatus.PREPARING_DATA)
            spec.update(job_id=job_id, job_type=job.job_type.value)
            (workdir / "spec.json").write_text(json.dumps(spec))
            job = await self._transition(job_id, JobStatus.RUNNING)
            try:
                outcome = await self._supervise(job, config, workdir, spec)
            except OwnershipLost:
                log.warning("job %s was taken over by another worker; this worker stops its copy", job_id)
                return await self._read(lambda r: r.get(job_id))
            job = await self._read(lambda r: r.get(job_id))
            if outcome.cancelled:
                return await self._finish_cancelled(job, started)
            if outcome.result is not None:
                if outcome.result.get("cancelled"):
                    return await self._finish_cancelled(job, started)
                return await self._complete(job, kind, ctx, outcome.result, started)
            code, message = self._error_of(outcome, workdir)
            adjusted = self._retry_config(code, config, job, attempts_by_cause)
            if adjusted is None:
                return await self._fail(job, code, message, started)
            attempts_by_cause[code.value] = attempts_by_cause.get(code.value, 0) + 1
            delay = self._backoff(code, attempts_by_cause[code.value])
            log.warning("job %s: %s, retrying (%s) in %.1fs", job_id, code.value, message, delay)
            config = adjusted
            job = await self._transition(
                job_id, JobStatus.RETRYING, retry_count=job.retry_count + 1, config=config.model_dump(mode="json"),
                error_code=code.value, error_message=message,
                event=("retry", {"error_code": code.value, "error_message": message, "delay_s": delay,
                                 "config": {"batch_size": config.batch_size, "learning_rate": config.learning_rate,
                                            "gradient_accumulation_steps": config.gradient_accumulation_steps}}))
            await asyncio.sleep(delay)
            resumed = True

    @staticmethod
    def _error_of(outcome: _Outcome, workdir: Path) -> tuple[L07ErrorCode, str]:
        if outcome.error is not None:
            return L07ErrorCode(outcome.error["code"]), str(outcome.error.get("message", ""))
        tail = ""
        log_path = workdir / "child.log"
        if log_path.is_file():
            tail = log_path.read_text(errors="replace")[-500:]
        # The child vanished without reporting: a crash of the process, treated as transient (contract §4.1).
        return (L07ErrorCode.CONTAINER_STARTUP_FAILURE,
                f"training process exited with {outcome.returncode} without a result; log tail: {tail}")

    @staticmethod
    def _retry_config(code: L07ErrorCode, config: JobConfig, job: TrainingJob,
                      attempts: dict[str, int]) -> JobConfig | None:
        """The adjusted config for the next attempt, or None when the contract says fail (§4.1)."""
        limit = RETRY_LIMITS.get(code)
        if limit is None or job.retry_count >= MAX_RETRIES or attempts.get(code.value, 0) >= limit:
            return None
        if code == L07ErrorCode.GPU_OUT_OF_MEMORY:
            if config.batch_size <= 1:
                return None
            return config.model_copy(update={
                "batch_size": config.batch_size // 2,
                "gradient_accumulation_steps": min(config.gradient_accumulation_steps + 2, 8)})
        if code == L07ErrorCode.TRAINING_DIVERGENCE:
            return config.model_copy(update={"learning_rate": max(config.learning_rate * 0.5, 1e-6)})
        return config

    @staticmethod
    def _backoff(code: L07ErrorCode, attempt: int) -> float:
        if code in (L07ErrorCode.GPU_OUT_OF_MEMORY, L07ErrorCode.TRAINING_DIVERGENCE):
            return 0.0
        return backoff_seconds(attempt - 1)

    # --- child process ------------------------------------------------------------------------------------------

    def _command(self, spec_path: Path, config: JobConfig) -> list[str]:
        nproc = int(config.extra.get("nproc_per_node", 1))
        if nproc > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "L07_learning.services.jobs.runner", "child", str(spec_path)]
        return [sys.executable, "-m", "L07_learning.services.jobs.runner", "child", str(spec_path)]

    async def _supervise(self, job: TrainingJob, config: JobConfig, workdir: Path, spec: dict[str, Any]) -> _Outcome:
        outcome = _Outcome()
        env = dict(os.environ)
        src_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src_root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else src_root
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        with open(workdir / "child.log", "ab") as child_log:
            proc = await asyncio.create_subprocess_exec(
                *self._command(workdir / "spec.json", config), stdout=asyncio.subprocess.PIPE, stderr=child_log,
                env=env, limit=2**24)
        await self._update(job.job_id, worker_pid=proc.pid)
        buffer: list[tuple[str, dict[str, Any], int | None]] = []
        live: dict[str, Any] = {"last_step": None, "last_eval": None, "checkpoint": None, "t0": time.monotonic()}
        cancel_at: float | None = None
        next_beat = next_progress = time.monotonic()
        next_progress += self.progress_interval_s
        assert proc.stdout is not None
        reader = asyncio.ensure_future(proc.stdout.readline())
        try:
            while True:
                done, _ = await asyncio.wait({reader}, timeout=0.5)
                if reader in done:
                    line = reader.result()
                    if not line:
                        break
                    self._take(line, buffer, live, outcome)
                    reader = asyncio.ensure_future(proc.stdout.readline())
                    if len(buffer) < 50 and time.monotonic() < next_beat:
                        continue
                now = time.monotonic()
                if buffer or now >= next_beat:
                    cancel = await self._flush(job, buffer, live, now >= next_beat)
                    if now >= next_beat:
                        next_beat = now + self.settings.worker_heartbeat_s
                    if cancel and cancel_at is None:
                        cancel_at = now
                        outcome.cancelled = True
                        (workdir / CANCEL_FILE).touch()
                        await self._event(job.job_id, "status", {"cancel_requested": True})
                if now >= next_progress:
                    next_progress = now + self.progress_interval_s
                    await self._progress(job, config, spec, live)
                if cancel_at is not None and now - cancel_at > self.cancel_grace_s and proc.returncode is None:
                    proc.terminate()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(proc.wait(), 3.0)
                    if proc.returncode is None:
                        proc.kill()
                    break
        except asyncio.CancelledError:
            proc.kill()  # the worker itself is being stopped; the job resumes elsewhere from its checkpoint
            raise
        except L07Error as exc:
            if exc.code is not L07ErrorCode.CONTAINER_STARTUP_FAILURE:
                raise
            # Another worker took the job over (we were presumed dead): stop our copy of the training.
            proc.kill()
            await proc.wait()
            raise OwnershipLost(job.job_id) from exc
        finally:
            reader.cancel()
            if proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), 10.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    proc.kill()
            outcome.returncode = await proc.wait()
        await self._flush(job, buffer, live, beat=False)
        return outcome

    @staticmethod
    def _take(line: bytes, buffer: list, live: dict[str, Any], outcome: _Outcome) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        kind, payload = msg.get("kind"), msg.get("payload", {})
        if kind == "result":
            outcome.result = payload
        elif kind == "error":
            outcome.error = payload
        elif kind in ("step", "eval", "checkpoint"):
            buffer.append((kind, payload, payload.get("step")))
            live[{"step": "last_step", "eval": "last_eval", "checkpoint": "checkpoint"}[kind]] = payload

    async def _flush(self, job: TrainingJob, buffer: list, live: dict[str, Any], beat: bool) -> bool:
        """Store buffered events (and heartbeat); returns whether cancellation was requested."""
        cancel = False
        async with self.db.session() as session:
            repo = JobRepository(session)
            for kind, payload, step in buffer:
                repo.add_event(job.job_id, kind, payload, step)
            fields: dict[str, Any] = {}
            if live["checkpoint"] is not None and any(k == "checkpoint" for k, _, _ in buffer):
                fields["checkpoint_location"] = live["checkpoint"]["path"]
            if live["last_step"] is not None and buffer:
                fields["progress"] = {k: live["last_step"][k] for k in ("step", "total_steps", "epoch", "loss")}
            if fields:
                await repo.update(job.job_id, lock=False, **fields)
            if beat or buffer:
                cancel = await repo.heartbeat(job.job_id, self.worker_id)
        if live["last_step"] is not None and buffer:
            TRAINING_LOSS.labels(job_type=job.job_type.value, base_model=self._base_label(job)).set(live["last_step"]["loss"])
        buffer.clear()
        return cancel

    @staticmethod
    def _base_label(job: TrainingJob) -> str:
        return (job.base_model_id or "none")[:8]

    async def _progress(self, job: TrainingJob, config: JobConfig, spec: dict[str, Any], live: dict[str, Any]) -> None:
        """Publish ``learning.training_progress_updated`` (contract §2.1)."""
        step = live["last_step"] or {}
        total_steps = int(step.get("total_steps") or 0)
        done = int(step.get("step") or 0)
        overall = done / total_steps if total_steps else 0.0
        epoch = float(step.get("epoch") or 0.0)
        elapsed = time.monotonic() - live["t0"]
        remaining = elapsed * (1 - overall) / overall if overall > 0 else None
        n_train = len(spec.get("train_rows") or [])
        per_epoch = max(total_steps // max(config.epochs, 1), 1)
        ckpt = live["checkpoint"] or {}
        ckpt_size = _folder_size(ckpt["path"]) if ckpt.get("path") else 0
        data = {
            "job_id": job.job_id,
            "status": JobStatus.RUNNING.value,
            "progress": {
                "current_epoch": int(math.floor(epoch)) + (0 if epoch.is_integer() and epoch else 1),
                "total_epochs": config.epochs,
                "epoch_progress": round((done % per_epoch) / per_epoch, 4) if done else 0.0,
                "overall_progress": round(overall, 4),
                "batches_processed": done,
                "total_batches": total_steps,
                "examples_processed": done * config.batch_size * config.gradient_accumulation_steps,
                "total_examples": n_train * config.epochs,
            },
            "metrics": {
                "current_loss": step.get("loss"),
                "validation_accuracy": None,
                "gpu_utilization_percent": None,
                "gpu_memory_used_gb": None,
                "training_speed_examples_per_second": round(
                    done * config.batch_size * config.gradient_accumulation_steps / elapsed, 3) if elapsed else 0.0,
            },
            "timing": {
                "started_at": job.started_at.isoformat() if job.started_at else None,
                "elapsed_seconds": round(elapsed, 1),
                "estimated_remaining_seconds": round(remaining, 1) if remaining is not None else None,
                "estimated_completion_at": (utcnow() + timedelta(seconds=remaining)).isoformat() if remaining else None,
            },
            "checkpoints": {
                "latest_checkpoint_epoch": ckpt.get("step") and round(ckpt["step"] / per_epoch, 2),
                "checkpoint_location": ckpt.get("path"),
                "checkpoint_size_gb": round(ckpt_size / 1e9, 4),
            },
        }
        async with self.db.session() as session:
            await self.publisher.publish(session, "learning.training_progress_updated", data, subject=job.job_id)
            JobRepository(session).add_event(job.job_id, "progress", data, done)

    # --- state changes ------------------------------------------------------------------------------------------

    async def _read(self, fn: Callable[[JobRepository], Awaitable[Any]]) -> Any:
        async with self.db.session() as session:
            return await fn(JobRepository(session))

    async def _update(self, job_id: str, **fields: Any) -> TrainingJob:
        async with self.db.session() as session:
            return await JobRepository(session).update(job_id, **fields)

    async def _event(self, job_id: str, kind: str, payload: dict[str, Any], step: int | None = None) -> None:
        async with self.db.session() as session:
            JobRepository(session).add_event(job_id, kind, payload, step)

    async def _transition(self, job_id: str, status: JobStatus, event: tuple[str, dict[str, Any]] | None = None,
                          **fields: Any) -> TrainingJob:
        async with self.db.session() as session:
            repo = JobRepository(session)
            job = await repo.update(job_id, status, **fields)
            repo.add_event(job_id, "status", {"status": status.value})
            if event:
                repo.add_event(job_id, event[0], event[1])
            return job

    async def _start(self, job: TrainingJob, config: JobConfig) -> TrainingJob:
        """PENDING -> INITIALIZING and ``learning.training_job_started``."""
        import importlib.util

        device = "cpu"
        if importlib.util.find_spec("torch") is not None:
            import torch

            if torch.cuda.is_available():
                device = "cuda:0"
        now = utcnow()
        async with self.db.session() as session:
            repo = JobRepository(session)
            job = await repo.update(job.job_id, JobStatus.INITIALIZING, started_at=now, device=device)
            repo.add_event(job.job_id, "status", {"status": JobStatus.INITIALIZING.value, "worker_id": self.worker_id})
            await self.publisher.publish(session, "learning.training_job_started", {
                "job_id": job.job_id,
                "job_type": job.job_type.value.lower(),
                "base_model_id": job.base_model_id,
                "dataset_id": job.dataset_id,
                "dataset_version": job.dataset_version,
                "dataset_size": job.dataset_size,
                "config": config.model_dump(mode="json"),
                "estimated_duration_seconds": int(job.metrics.get("estimated_duration_seconds", 0) or 0),
                "device": device,
                "started_at": now.isoformat(),
            }, subject=job.job_id)
        return job

    async def _completed_event(self, session: Any, job: TrainingJob, model: ModelArtifact | None,
                               duration: float) -> None:
        m = job.metrics or {}
        await self.publisher.publish(session, "learning.training_job_completed", {
            "job_id": job.job_id,
            "status": job.status.value,
            "model_id": job.output_model_id,
            "model_name": model.name if model else None,
            "training_duration_seconds": round(duration, 3),
            "final_metrics": {"training_loss": m.get("train_loss"), "validation_accuracy": m.get("eval_accuracy"),
                              "improvement_vs_baseline": m.get("improvement_vs_baseline")},
            "artifact_info": {"location": model.artifact_path if model else None,
                              "size_bytes": model.artifact_size_bytes if model else None,
                              "checksum": model.checksum if model else None,
                              "format": model.artifact_format if model else None},
            "dataset_info": {"dataset_id": job.dataset_id, "dataset_size": job.dataset_size},
            "validation_status": "PASSED" if job.status == JobStatus.COMPLETED else "FAILED",
            **({"error_code": job.error_code, "error_message": job.error_message}
               if job.status == JobStatus.FAILED else {}),
        }, subject=job.job_id)

    def _observe(self, job: TrainingJob, duration: float) -> None:
        TRAINING_JOBS.labels(job_type=job.job_type.value, status=job.status.value).inc()
        TRAINING_JOB_DURATION.labels(job_type=job.job_type.value, status=job.status.value).observe(duration)

    async def _terminal(self, job: TrainingJob, status: JobStatus, started: float, model: ModelArtifact | None = None,
                        **fields: Any) -> TrainingJob:
        duration = time.monotonic() - started
        async with self.db.session() as session:
            repo = JobRepository(session)
            job = await repo.update(job.job_id, status, completed_at=utcnow(), **fields)
            repo.add_event(job.job_id, "status", {"status": status.value, **{
                k: v for k, v in fields.items() if k in ("error_code", "error_message", "output_model_id")}})
            await self._completed_event(session, job, model, duration)
            await repo.release(job.job_id, self.worker_id)
            await audit(session, f"training_job.{status.value.lower()}", "training_job", job.job_id,
                        result="success" if status == JobStatus.COMPLETED else status.value.lower(),
                        actor=self.worker_id, error_code=fields.get("error_code"),
                        details={"output_model_id": fields.get("output_model_id")})
        self._observe(job, duration)
        return job

    async def _fail(self, job: TrainingJob, code: L07ErrorCode, message: str, started: float) -> TrainingJob:
        log.error("job %s failed: %s %s", job.job_id, code.value, message)
        return await self._terminal(job, JobStatus.FAILED, started, error_code=code.value, error_message=message[:4000])

    async def _finish_cancelled(self, job: TrainingJob, started: float) -> TrainingJob:
        current = await self._read(lambda r: r.get(job.job_id))
        if current.status.terminal:
            return current
        return await self._terminal(current, JobStatus.CANCELLED, started)

    async def _complete(self, job: TrainingJob, kind: JobKind, ctx: RunnerContext, result: dict[str, Any],
                        started: float) -> TrainingJob:
        """RUNNING -> VALIDATING (finite held-out loss, artifact present) -> register -> COMPLETED."""
        metrics = dict(result.get("metrics") or {})
        (ctx.workdir / RESULT_FILE).write_text(json.dumps(result, default=str))
        job = await self._transition(job.job_id, JobStatus.VALIDATING, metrics=metrics)
        check = metrics.get("test_loss", metrics.get("eval_loss", metrics.get("train_loss")))
        if check is None or not math.isfinite(float(check)):
            return await self._fail(job, L07ErrorCode.TRAINING_DIVERGENCE, f"held-out loss is {check}", started)
        return await self._register(job, kind, ctx, result, started)

    async def _register(self, job: TrainingJob, kind: JobKind, ctx: RunnerContext, result: dict[str, Any],
                        started: float) -> TrainingJob:
        """VALIDATING -> register the output -> COMPLETED."""
        metrics = dict(result.get("metrics") or {})
        try:
            model_id = await kind.register(job, result, ctx)
        except L07Error as exc:
            return await self._fail(job, exc.code, exc.message, started)
        model = await self.registry.get_model(model_id) if model_id else None
        job_type, base = job.job_type.value, self._base_label(job)
        if metrics.get("eval_loss") is not None:
            VALIDATION_LOSS.labels(job_type=job_type, base_model=base).set(metrics["eval_loss"])
        if metrics.get("eval_accuracy") is not None:
            VALIDATION_ACCURACY.labels(job_type=job_type, base_model=base).set(100 * metrics["eval_accuracy"])
        TRAINING_TOKENS.labels(job_type=job_type).inc(int(metrics.get("tokens_seen", 0)))
        THROUGHPUT.labels(job_type=job_type).set(float(metrics.get("examples_per_second", 0.0)))
        metrics["duration_seconds"] = time.monotonic() - started
        return await self._terminal(job, JobStatus.COMPLETED, started, model=model, output_model_id=model_id,
                                    metrics=metrics, error_code=None, error_message=None,
                                    training_metrics={k: metrics.get(k) for k in (
                                        "train_loss", "tokens_seen", "tokens_per_second", "examples_per_second",
                                        "global_step", "train_seconds")},
                                    validation_metrics={k: metrics.get(k) for k in (
                                        "eval_loss", "initial_eval_loss", "test_loss", "eval_accuracy",
                                        "base_accuracy", "improvement_vs_baseline")})


def _folder_size(path: str) -> int:
    p = Path(path)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# --- child side -----------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphaned training)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def child_main(spec_path: str) -> int:
    """Run one job's pipeline entry point; protocol: JSON lines on the original stdout.

    Library output (TRL logs, progress bars) is moved to stderr, which the worker sends to ``child.log``.
    """
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # parent died before prctl took effect
        return 3
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    rank = int(os.environ.get("RANK", "0"))
    spec = json.loads(Path(spec_path).read_text())
    cancel_flag = Path(spec_path).parent / CANCEL_FILE

    def emit(kind: str, payload: dict[str, Any]) -> None:
        if rank == 0:
            channel.write(json.dumps({"kind": kind, "payload": payload}, default=str) + "\n")

    def should_cancel() -> bool:
        return cancel_flag.exists()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        kind = _load_job_kind(JobType(spec["job_type"]))
        module_name, fn_name = kind.entry_point.split(":")
        fn = getattr(importlib.import_module(module_name), fn_name)
        result = fn(spec, emit, should_cancel)
        emit("result", result)
        return 0
    except L07Error as exc:
        log.exception("job failed with %s", exc.code.value)
        emit("error", {"code": exc.code.value, "message": exc.message, "details": exc.details})
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the worker as E7910 with the trace in child.log
        log.exception("unhandled error in training process")
        emit("error", {"code": L07ErrorCode.UNHANDLED_EXCEPTION.value, "message": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        sys.exit(child_main(sys.argv[2]))
    sys.stderr.write("usage: python -m L07_learning.services.jobs.runner child SPEC_JSON\n")
    sys.exit(2)

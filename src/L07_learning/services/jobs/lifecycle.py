"""The one owner of a training job's state: every transition writes the job row, its event rows, its audit record and
(where §2.1 names an event: started, progress, completed) the outbox message together, in one database transaction
(contract §4.1 state machine, §2.1 events, §7.4 audit). Prometheus moves only after the commit.

The engines (submit, cancel) and the runner (claim, start, progress, retry, complete, fail, cancel) change a job only
through :class:`JobLifecycle`; ``store/repositories/jobs.py`` checks each status change against the state machine.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ...events.publisher import EventPublisher
from ...models._base import utcnow
from ...models.error_codes import L07ErrorCode
from ...models.model_artifact import ModelArtifact
from ...models.training_job import JobConfig, JobStatus, TrainingJob
from ...observability.metrics import (
    THROUGHPUT,
    TRAINING_JOB_DURATION,
    TRAINING_JOBS,
    TRAINING_LOSS,
    TRAINING_TOKENS,
    VALIDATION_ACCURACY,
    VALIDATION_LOSS,
)
from ...store.db import Database
from ...store.repositories.audit import audit
from ...store.repositories.jobs import ACTIVE_STATES, JobRepository

# The job fields the completed job keeps apart from its flat metrics (contract §3.3).
TRAINING_METRIC_KEYS = ("train_loss", "tokens_seen", "tokens_per_second", "examples_per_second", "global_step",
                        "train_seconds")
VALIDATION_METRIC_KEYS = ("eval_loss", "initial_eval_loss", "test_loss", "eval_accuracy", "base_accuracy",
                          "improvement_vs_baseline")


def base_label(job: TrainingJob) -> str:
    """The ``base_model`` label of the per-job metrics (short, bounded cardinality)."""
    return (job.base_model_id or "none")[:8]


class JobLifecycle:
    """Changes a job's state.

    Args:
        db: Database.
        publisher: Outbox writer (default ``EventPublisher()``).
        actor: Who makes the worker-side changes (the runner's worker id); it also owns the job's claim.
    """

    def __init__(self, db: Database, publisher: EventPublisher | None = None, actor: str = "l07") -> None:
        self.db = db
        self.publisher = publisher or EventPublisher()
        self.actor = actor

    # --- reads --------------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> TrainingJob:
        async with self.db.session() as session:
            return await JobRepository(session).get(job_id)

    async def cancel_requested(self, job_id: str) -> bool:
        async with self.db.session() as session:
            return (await JobRepository(session).worker_of(job_id))[2]

    # --- engine side --------------------------------------------------------------------------------------------

    async def submit(self, job: TrainingJob, actor: str, details: dict[str, Any]) -> TrainingJob:
        """Store a new PENDING job with its first status event and the ``training_job.submit`` audit record."""
        async with self.db.session() as session:
            repo = JobRepository(session)
            await repo.add(job)
            repo.add_event(job.job_id, "status", {"status": JobStatus.PENDING.value})
            await audit(session, "training_job.submit", "training_job", job.job_id, actor=actor, details=details)
        return job

    async def request_cancel(self, job_id: str, actor: str) -> None:
        """Flag a job for cancellation (its worker stops it); an unclaimed PENDING job is CANCELLED at once.

        A terminal job is left as it is. Raises E7410 for an unknown id.
        """
        async with self.db.session() as session:
            repo = JobRepository(session)
            before = await repo.get(job_id)
            if before.status.terminal:
                return
            after = await repo.request_cancel(job_id)
            repo.add_event(job_id, "status", {"cancel_requested": True, "by": actor})
            await audit(session, "training_job.cancel", "training_job", job_id, actor=actor,
                        details={"status_before": before.status.value, "status_after": after.status.value})
            if after.status == JobStatus.CANCELLED:
                await self._publish_completed(session, after, None, 0.0)
        if after.status == JobStatus.CANCELLED:
            _observe(after, 0.0)

    # --- worker side --------------------------------------------------------------------------------------------

    async def claim(self, worker_pid: int, stale_before: datetime,
                    max_concurrent: int) -> tuple[TrainingJob, JobStatus] | None:
        """Claim the oldest PENDING job or a job whose worker died; ``(job, previous status)`` or None.

        A PENDING job is handed back when ``max_concurrent`` jobs are live elsewhere (contract §4.1).
        """
        async with self.db.session() as session:
            repo = JobRepository(session)
            running = [j for j in await repo.list(limit=1000) if j.status in ACTIVE_STATES]
            claimed = await repo.claim(self.actor, worker_pid, stale_before)
            if claimed is None:
                return None
            job, previous = claimed
            live_elsewhere = [j for j in running if j.job_id != job.job_id]
            if previous == JobStatus.PENDING and len(live_elsewhere) >= max_concurrent:
                await repo.release(job.job_id, self.actor)
                await repo.update(job.job_id, heartbeat_at=None)
                return None
        return claimed

    async def start(self, job: TrainingJob, config: JobConfig, device: str) -> TrainingJob:
        """PENDING -> INITIALIZING and ``learning.training_job_started``."""
        now = utcnow()
        async with self.db.session() as session:
            repo = JobRepository(session)
            job = await repo.update(job.job_id, JobStatus.INITIALIZING, owner=self.actor, started_at=now, device=device)
            repo.add_event(job.job_id, "status", {"status": JobStatus.INITIALIZING.value, "worker_id": self.actor})
            await audit(session, "training_job.initializing", "training_job", job.job_id, actor=self.actor,
                        details={"device": device})
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

    async def advance(self, job_id: str, status: JobStatus, **fields: Any) -> TrainingJob:
        """A non-terminal step forward (PREPARING_DATA, RUNNING, VALIDATING) with its status event."""
        return await self._transition(job_id, status, None, **fields)

    async def resume(self, job_id: str, previous: JobStatus, retry_count: int) -> TrainingJob:
        """A job whose worker died -> RETRYING, counted as a retry; it resumes from its last checkpoint."""
        return await self._transition(job_id, JobStatus.RETRYING, self._resumed(previous), retry_count=retry_count)

    async def note_resumed(self, job_id: str, previous: JobStatus) -> None:
        """A job taken over after training, while it was registering: only the ``resumed`` event, no new state."""
        async with self.db.session() as session:
            JobRepository(session).add_event(job_id, *self._resumed(previous))

    async def retry(self, job_id: str, retry_count: int, config: JobConfig, code: L07ErrorCode, message: str,
                    delay: float) -> TrainingJob:
        """-> RETRYING with the adjusted config and the failure that caused it (contract §4.1)."""
        return await self._transition(
            job_id, JobStatus.RETRYING,
            ("retry", {"error_code": code.value, "error_message": message, "delay_s": delay,
                       "config": {"batch_size": config.batch_size, "learning_rate": config.learning_rate,
                                  "gradient_accumulation_steps": config.gradient_accumulation_steps}}),
            retry_count=retry_count, config=config.model_dump(mode="json"), error_code=code.value,
            error_message=message)

    async def attach_process(self, job_id: str, pid: int) -> None:
        """Record the pid of the job's training process."""
        async with self.db.session() as session:
            await JobRepository(session).update(job_id, owner=self.actor, worker_pid=pid)

    async def heartbeat(self, job_id: str) -> bool:
        """Refresh this worker's heartbeat on its claim; returns whether cancellation was requested.

        Raises:
            L07Error: E7901 when another worker has taken the job over.
        """
        async with self.db.session() as session:
            return await JobRepository(session).heartbeat(job_id, self.actor)

    async def note_cancel_requested(self, job_id: str) -> None:
        """The worker saw the cancel request and is stopping the training process."""
        async with self.db.session() as session:
            JobRepository(session).add_event(job_id, "status", {"cancel_requested": True})

    async def record(self, job: TrainingJob, events: list[tuple[str, dict[str, Any], int | None]],
                     last_step: dict[str, Any] | None, checkpoint: dict[str, Any] | None, beat: bool) -> bool:
        """Store the child's step / eval / checkpoint events, the job's progress and latest checkpoint, and the
        worker's heartbeat; returns whether cancellation was requested.

        Raises:
            L07Error: E7901 when another worker has taken the job over.
        """
        cancel = False
        async with self.db.session() as session:
            repo = JobRepository(session)
            for kind, payload, step in events:
                repo.add_event(job.job_id, kind, payload, step)
            fields: dict[str, Any] = {}
            if checkpoint is not None and any(kind == "checkpoint" for kind, _, _ in events):
                fields["checkpoint_location"] = checkpoint["path"]
            if last_step is not None and events:
                fields["progress"] = {k: last_step[k] for k in ("step", "total_steps", "epoch", "loss")}
            if fields:
                await repo.update(job.job_id, lock=False, **fields)
            if beat or events:
                cancel = await repo.heartbeat(job.job_id, self.actor)
        if last_step is not None and events:
            TRAINING_LOSS.labels(job_type=job.job_type.value, base_model=base_label(job)).set(last_step["loss"])
        return cancel

    async def progress(self, job: TrainingJob, config: JobConfig, live: dict[str, Any], n_train: int) -> None:
        """Publish ``learning.training_progress_updated`` (contract §2.1) and keep it as a ``progress`` event."""
        data = _progress_data(job, config, live, n_train)
        async with self.db.session() as session:
            await self.publisher.publish(session, "learning.training_progress_updated", data, subject=job.job_id)
            JobRepository(session).add_event(job.job_id, "progress", data, data["progress"]["batches_processed"])

    async def complete(self, job: TrainingJob, model: ModelArtifact | None, metrics: dict[str, Any],
                       duration: float) -> TrainingJob:
        """VALIDATING -> COMPLETED with the registered output and the final metrics."""
        metrics = {**metrics, "duration_seconds": duration}
        job = await self._terminal(
            job, JobStatus.COMPLETED, duration, model=model, output_model_id=model.model_id if model else None,
            metrics=metrics, error_code=None, error_message=None,
            training_metrics={k: metrics.get(k) for k in TRAINING_METRIC_KEYS},
            validation_metrics={k: metrics.get(k) for k in VALIDATION_METRIC_KEYS})
        # Gauges move only once the terminal state is committed (a lost claim raises before this line).
        job_type, base = job.job_type.value, base_label(job)
        if metrics.get("eval_loss") is not None:
            VALIDATION_LOSS.labels(job_type=job_type, base_model=base).set(metrics["eval_loss"])
        if metrics.get("eval_accuracy") is not None:
            VALIDATION_ACCURACY.labels(job_type=job_type, base_model=base).set(100 * metrics["eval_accuracy"])
        TRAINING_TOKENS.labels(job_type=job_type).inc(int(metrics.get("tokens_seen", 0)))
        THROUGHPUT.labels(job_type=job_type).set(float(metrics.get("examples_per_second", 0.0)))
        return job

    async def fail(self, job: TrainingJob, code: L07ErrorCode, message: str, duration: float) -> TrainingJob:
        """-> FAILED with the error code and message."""
        return await self._terminal(job, JobStatus.FAILED, duration, error_code=code.value,
                                    error_message=message[:4000])

    async def cancelled(self, job_id: str, duration: float) -> TrainingJob:
        """-> CANCELLED after the worker stopped the training; a job already terminal stays as it is."""
        current = await self.get(job_id)
        if current.status.terminal:
            return current
        return await self._terminal(current, JobStatus.CANCELLED, duration)

    # --- parts --------------------------------------------------------------------------------------------------

    def _resumed(self, previous: JobStatus) -> tuple[str, dict[str, Any]]:
        return "resumed", {"previous_status": previous.value, "worker_id": self.actor}

    async def _transition(self, job_id: str, status: JobStatus, event: tuple[str, dict[str, Any]] | None,
                          **fields: Any) -> TrainingJob:
        async with self.db.session() as session:
            repo = JobRepository(session)
            job = await repo.update(job_id, status, owner=self.actor, **fields)
            repo.add_event(job_id, "status", {"status": status.value})
            if event:
                repo.add_event(job_id, *event)
            await audit(session, f"training_job.{status.value.lower()}", "training_job", job_id, actor=self.actor,
                        error_code=fields.get("error_code"), details=event[1] if event else None)
            return job

    async def _terminal(self, job: TrainingJob, status: JobStatus, duration: float,
                        model: ModelArtifact | None = None, **fields: Any) -> TrainingJob:
        async with self.db.session() as session:
            repo = JobRepository(session)
            # Conditional on the claim: a worker presumed dead must not finish a job another worker now runs.
            job = await repo.update(job.job_id, status, owner=self.actor, completed_at=utcnow(), **fields)
            repo.add_event(job.job_id, "status", {"status": status.value, **{
                k: v for k, v in fields.items() if k in ("error_code", "error_message", "output_model_id")}})
            await self._publish_completed(session, job, model, duration)
            await repo.release(job.job_id, self.actor)
            await audit(session, f"training_job.{status.value.lower()}", "training_job", job.job_id,
                        result="success" if status == JobStatus.COMPLETED else status.value.lower(),
                        actor=self.actor, error_code=fields.get("error_code"),
                        details={"output_model_id": fields.get("output_model_id")})
        _observe(job, duration)
        return job

    async def _publish_completed(self, session: AsyncSession, job: TrainingJob, model: ModelArtifact | None,
                                 duration: float) -> None:
        """``learning.training_job_completed`` for every terminal state (contract §2.1)."""
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


def _observe(job: TrainingJob, duration: float) -> None:
    TRAINING_JOBS.labels(job_type=job.job_type.value, status=job.status.value).inc()
    TRAINING_JOB_DURATION.labels(job_type=job.job_type.value, status=job.status.value).observe(duration)


def _folder_size(path: str) -> int:
    p = Path(path)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _progress_data(job: TrainingJob, config: JobConfig, live: dict[str, Any], n_train: int) -> dict[str, Any]:
    """The ``learning.training_progress_updated`` payload from the child's latest step and checkpoint."""
    step = live["last_step"] or {}
    total_steps = int(step.get("total_steps") or 0)
    done = int(step.get("step") or 0)
    overall = done / total_steps if total_steps else 0.0
    epoch = float(step.get("epoch") or 0.0)
    elapsed = time.monotonic() - live["t0"]
    remaining = elapsed * (1 - overall) / overall if overall > 0 else None
    per_epoch = max(total_steps // max(config.epochs, 1), 1)
    ckpt = live["checkpoint"] or {}
    ckpt_size = _folder_size(ckpt["path"]) if ckpt.get("path") else 0
    return {
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

"""The training worker: claims jobs and supervises each one's training process (heartbeat, progress, cancel, retry).

A worker (``l07 worker``, or the embedded background task) loops over :meth:`JobRunner.run_once`:

1. Claim the oldest PENDING job, or a job whose worker stopped heart-beating (it died; the job resumes from its last
   checkpoint) through :class:`~.lifecycle.JobLifecycle`, which makes every state change of the job.
2. Prepare its input in this process with the job kind's ``prepare`` hook (table ``kinds.JOB_KINDS``) and write a
   spec file into the job's work folder.
3. Start ``python -m L07_learning.services.jobs.child SPEC`` (``child.py``; under ``torchrun`` for several processes)
   and read the JSON lines it writes (steps, evals, checkpoints, the result or an error code).
4. While it runs: store step/eval events, heartbeat, publish progress at the configured cadence, and watch for
   cancellation (a flag file stops the child within one optimizer step; after a grace period it is terminated).
5. Finish: retry per contract §4.1 (``retry.py``), or register the output through the job kind's ``register`` hook
   and complete.

The child dies with its worker (``PR_SET_PDEATHSIG``), so a killed worker never leaves training running unowned.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from ...events.publisher import EventPublisher
from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.training_job import JobConfig, JobStatus, TrainingJob
from ...observability.metrics import ERRORS
from ...settings import Settings, get_settings
from ...store.db import Database, get_database
from ..dataset_curator import DatasetCurator
from ..model_registry import ModelRegistry
from .child import CANCEL_FILE, command
from .context import RunnerContext, job_config
from .kinds import JOB_KINDS, JobKind
from .lifecycle import JobLifecycle
from .retry import MAX_RETRIES, backoff, retry_config

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
# The longest a worker waits between rounds after consecutive failures (database down).
MAX_ERROR_BACKOFF_S = 60.0


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
        self.registry = registry if registry is not None else ModelRegistry(db=self.db, settings=self.settings)
        self.curator = curator if curator is not None else DatasetCurator(db=self.db, settings=self.settings)
        self.progress_interval_s = (progress_interval_s if progress_interval_s is not None
                                    else self.settings.progress_interval_s)
        self.cancel_grace_s = cancel_grace_s
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.lifecycle = JobLifecycle(self.db, publisher, actor=self.worker_id)

    def workdir(self, job_id: str) -> Path:
        """The job's folder: spec, child log, checkpoints, adapter (shared by every worker that runs the job)."""
        return Path(self.settings.home) / "jobs" / job_id

    # --- loop ---------------------------------------------------------------------------------------------------

    async def run_forever(self, poll_s: float = 2.0, stop: asyncio.Event | None = None,
                          max_backoff_s: float = MAX_ERROR_BACKOFF_S) -> None:
        """Claim and run jobs until ``stop`` is set.

        Any error of one round (database down, a job's bookkeeping failing, a bug) is logged and the worker polls
        again after a backoff that doubles per consecutive failure up to ``max_backoff_s``: a job left mid-way is
        resumed through the stale-claim path, and this worker, often the one embedded in ``l07 run``, keeps serving.
        """
        stop = stop or asyncio.Event()
        failures = 0
        while not stop.is_set():
            try:
                ran = await self.run_once()
                failures = 0
                wait = 0.0 if ran else poll_s
            except Exception as exc:  # noqa: BLE001 - the worker outlives any one round's failure
                failures += 1
                wait = min(poll_s * 2 ** failures, max_backoff_s)
                code = exc.code.value if isinstance(exc, L07Error) else exc.__class__.__name__
                log.error("worker: round failed (%s: %s); polling again in %.1fs", code, exc, wait,
                          exc_info=not isinstance(exc, (L07Error, SQLAlchemyError, OSError)))
                unavailable = L07ErrorCode.MODEL_REGISTRY_UNAVAILABLE.value  # database unreachable
                ERRORS.labels(error_code=code if isinstance(exc, L07Error) else (
                    unavailable if isinstance(exc, SQLAlchemyError) else L07ErrorCode.UNHANDLED_EXCEPTION.value),
                    error_type="worker").inc()
            if wait:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)

    async def run_once(self) -> TrainingJob | None:
        """Claim one job and run it to a terminal state (or until this worker loses it). None when idle.

        The claim is heart-beaten for the whole run, prepare and register included, not only while the training
        process reports; when the heartbeat finds the job taken over, this worker's run of it is cancelled.
        """
        stale_before = utcnow() - timedelta(seconds=self.settings.worker_stale_after_s)
        claimed = await self.lifecycle.claim(os.getpid(), stale_before, self.settings.max_concurrent_jobs)
        if claimed is None:
            return None
        job_id = claimed[0].job_id
        lost = asyncio.Event()
        main = asyncio.ensure_future(self._run(*claimed))
        beat = asyncio.ensure_future(self._hold_claim(job_id, main, lost))
        try:
            return await main
        except asyncio.CancelledError:
            if not lost.is_set():
                raise
        except (OwnershipLost, L07Error) as exc:
            if isinstance(exc, L07Error) and exc.code is not L07ErrorCode.CONTAINER_STARTUP_FAILURE:
                raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        log.warning("job %s was taken over by another worker; this worker stopped its run", job_id)
        return await self.lifecycle.get(job_id)

    async def _hold_claim(self, job_id: str, main: asyncio.Future, lost: asyncio.Event) -> None:
        """Heartbeat ``job_id`` until cancelled; cancel ``main`` when another worker owns the job now."""
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_s)
            try:
                await self.lifecycle.heartbeat(job_id)
            except L07Error as exc:
                if exc.code is L07ErrorCode.CONTAINER_STARTUP_FAILURE:
                    lost.set()
                    main.cancel()
                    return
                log.warning("heartbeat of job %s failed: %s", job_id, exc)
            except Exception as exc:  # noqa: BLE001 - a database blip; the next beat may work, staleness is 12 beats
                log.warning("heartbeat of job %s failed: %s", job_id, exc)

    # --- one job ------------------------------------------------------------------------------------------------

    async def _run(self, job: TrainingJob, previous: JobStatus) -> TrainingJob:
        job_id = job.job_id
        started = time.monotonic()
        if await self.lifecycle.cancel_requested(job_id):
            return await self.lifecycle.cancelled(job_id, time.monotonic() - started)
        workdir = self.workdir(job_id)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / CANCEL_FILE).unlink(missing_ok=True)
        try:
            config = job_config(job)
        except ValidationError as exc:
            # Stored before ``JobConfig`` checked it (e.g. an unknown or out-of-range ``extra`` key): fail the job with
            # the reason instead of failing the worker on every claim.
            if previous == JobStatus.PENDING:
                job = await self.lifecycle.start(job, JobConfig.model_construct(**dict(job.config)), "none")
            return await self.lifecycle.fail(job, L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                                             f"stored job config is invalid: {exc}", time.monotonic() - started)
        resumed = previous != JobStatus.PENDING
        kind = JOB_KINDS[job.job_type]
        ctx = RunnerContext(self.db, self.settings, self.registry, self.curator, workdir)
        if previous == JobStatus.VALIDATING and (workdir / RESULT_FILE).is_file():
            # The worker died after training, while registering: finish from the saved result, do not retrain.
            await self.lifecycle.note_resumed(job_id, previous)
            result = json.loads((workdir / RESULT_FILE).read_text())
            return await self._register(job, kind, ctx, result, started)
        if resumed:
            if job.retry_count >= MAX_RETRIES:
                return await self.lifecycle.fail(job, L07ErrorCode.CHECKPOINT_RECOVERY_FAILED,
                                                 "worker died and the retry limit is spent", time.monotonic() - started)
            job = await self.lifecycle.resume(job_id, previous, job.retry_count + 1)
        else:
            job = await self.lifecycle.start(job, config, await asyncio.to_thread(_device))
        attempts_by_cause: dict[str, int] = {}
        while True:
            try:
                spec = await kind.prepare(job, config, ctx)
            except L07Error as exc:
                return await self.lifecycle.fail(job, exc.code, exc.message, time.monotonic() - started)
            if not resumed and job.status == JobStatus.INITIALIZING:
                job = await self.lifecycle.advance(job_id, JobStatus.PREPARING_DATA)
            spec.update(job_id=job_id, job_type=job.job_type.value)
            (workdir / "spec.json").write_text(json.dumps(spec))
            job = await self.lifecycle.advance(job_id, JobStatus.RUNNING)
            try:
                outcome = await self._supervise(job, config, workdir, spec)
            except OwnershipLost:
                log.warning("job %s was taken over by another worker; this worker stops its copy", job_id)
                return await self.lifecycle.get(job_id)
            job = await self.lifecycle.get(job_id)
            if outcome.cancelled or (outcome.result is not None and outcome.result.get("cancelled")):
                return await self.lifecycle.cancelled(job_id, time.monotonic() - started)
            if outcome.result is not None:
                return await self._complete(job, kind, ctx, outcome.result, started)
            code, message = self._error_of(outcome, workdir)
            adjusted = retry_config(code, config, job, attempts_by_cause)
            if adjusted is None:
                return await self.lifecycle.fail(job, code, message, time.monotonic() - started)
            attempts_by_cause[code.value] = attempts_by_cause.get(code.value, 0) + 1
            delay = backoff(code, attempts_by_cause[code.value])
            log.warning("job %s: %s, retrying (%s) in %.1fs", job_id, code.value, message, delay)
            config = adjusted
            job = await self.lifecycle.retry(job_id, job.retry_count + 1, config, code, message, delay)
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

    async def _complete(self, job: TrainingJob, kind: JobKind, ctx: RunnerContext, result: dict[str, Any],
                        started: float) -> TrainingJob:
        """RUNNING -> VALIDATING (finite held-out loss, artifact present) -> register -> COMPLETED."""
        metrics = dict(result.get("metrics") or {})
        (ctx.workdir / RESULT_FILE).write_text(json.dumps(result, default=str))
        job = await self.lifecycle.advance(job.job_id, JobStatus.VALIDATING, metrics=metrics)
        check = metrics.get("test_loss", metrics.get("eval_loss", metrics.get("train_loss")))
        if check is None or not math.isfinite(float(check)):
            return await self.lifecycle.fail(job, L07ErrorCode.TRAINING_DIVERGENCE, f"held-out loss is {check}",
                                             time.monotonic() - started)
        return await self._register(job, kind, ctx, result, started)

    async def _register(self, job: TrainingJob, kind: JobKind, ctx: RunnerContext, result: dict[str, Any],
                        started: float) -> TrainingJob:
        """VALIDATING -> register the output through the kind's hook -> COMPLETED."""
        try:
            model_id = await kind.register(job, result, ctx)
        except L07Error as exc:
            return await self.lifecycle.fail(job, exc.code, exc.message, time.monotonic() - started)
        model = await self.registry.get_model(model_id) if model_id else None
        return await self.lifecycle.complete(job, model, dict(result.get("metrics") or {}),
                                             time.monotonic() - started)

    # --- child process ------------------------------------------------------------------------------------------

    async def _supervise(self, job: TrainingJob, config: JobConfig, workdir: Path, spec: dict[str, Any]) -> _Outcome:
        outcome = _Outcome()
        env = dict(os.environ)
        src_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = src_root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else src_root
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        with open(workdir / "child.log", "ab") as child_log:
            proc = await asyncio.create_subprocess_exec(
                *command(workdir / "spec.json", config.nproc_per_node),
                stdout=asyncio.subprocess.PIPE, stderr=child_log, env=env, limit=2**24)
        await self.lifecycle.attach_process(job.job_id, proc.pid)
        buffer: list[tuple[str, dict[str, Any], int | None]] = []
        live: dict[str, Any] = {"last_step": None, "last_eval": None, "checkpoint": None, "t0": time.monotonic()}
        cancel_at: float | None = None
        next_beat = next_progress = time.monotonic()
        next_progress += self.progress_interval_s
        n_train = len(spec.get("train_rows") or [])
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
                        await self.lifecycle.note_cancel_requested(job.job_id)
                if now >= next_progress:
                    next_progress = now + self.progress_interval_s
                    await self.lifecycle.progress(job, config, live, n_train)
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
        try:
            # A heartbeat, not only the last events: the job may have been taken over since the previous beat (this
            # worker stalled past the stale limit), and then the other worker finishes it, not this one.
            await self._flush(job, buffer, live, beat=True)
        except L07Error as exc:
            if exc.code is not L07ErrorCode.CONTAINER_STARTUP_FAILURE:
                raise
            raise OwnershipLost(job.job_id) from exc
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
        cancel = await self.lifecycle.record(job, buffer, live["last_step"], live["checkpoint"], beat)
        buffer.clear()
        return cancel


@functools.lru_cache(maxsize=1)
def _device() -> str:
    """Where the job will train, as reported in ``learning.training_job_started``.

    Asked once of a short-lived interpreter: importing torch here would keep ~300 MB of it in every worker, and the
    embedded worker lives in ``l07 run``, which loads torch only in job processes.
    """
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    probe = "import torch; print('cuda:0' if torch.cuda.is_available() else 'cpu')"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return out.stdout.strip() or "cpu"

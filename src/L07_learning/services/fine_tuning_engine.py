"""``FineTuningEngine``: submit, watch and cancel durable training jobs (contract §0, §3.3, §4.1).

``start_training`` validates everything that can be checked at submission (config ranges E7500, LoRA targets against
the base model's architecture E7036, sequence length against the model's positions, dataset existence E7028, a train
split of at least ``minimum_dataset_size`` E7020) and stores the job as PENDING. A submitter who names no complete
config for an SFT job gets the recipe measured for the device, the base model's size and the dataset's size
(``jobs/presets.select_recipe``), with any fields it did name on top. A worker (``l07 worker``, ``run_worker_once`` or
the embedded background worker) runs it in its own process through ``services/jobs/runner.py``. Every change of a
job's state goes through ``services/jobs/lifecycle.py``; the SFT kind's worker side is ``services/jobs/sft.py``, its
child side ``pipelines/sft_pipeline.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.training_job import JobConfig, JobStatus, JobType, TrainingJob
from ..pipelines.lora_targets import resolve_target_modules
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from ..store.repositories.jobs import JobRepository
from .dataset_curator import DatasetCurator
from .jobs.lifecycle import JobLifecycle
from .jobs.presets import (
    Recipe,
    coerce_config,
    count_parameters,
    list_presets,
    load_preset,
    recipe_config,
    select_recipe,
)
from .jobs.runner import JobRunner, _device
from .model_registry import ModelRegistry

# The presets are part of this engine's public surface (``l07 train --preset``, the demo).
__all__ = ["FineTuningEngine", "coerce_config", "list_presets", "load_preset", "select_recipe"]

log = logging.getLogger(__name__)


class FineTuningEngine:
    """Durable LoRA fine-tuning jobs.

    Args:
        db: Database (default: the configured one).
        registry: ``ModelRegistry`` (base models are loaded through ``local_path``; outputs registered there).
        curator: ``DatasetCurator`` (datasets and their splits).
        settings: Settings.
    """

    def __init__(self, db: Database | None = None, registry: Any = None, curator: Any = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self.registry = registry if registry is not None else ModelRegistry(db=self.db, settings=self.settings)
        self.curator = curator if curator is not None else DatasetCurator(db=self.db, settings=self.settings)
        self.lifecycle = JobLifecycle(self.db)
        self._worker_task: asyncio.Task | None = None
        self._worker_stop: asyncio.Event | None = None

    def runner(self, **kwargs: Any) -> JobRunner:
        """A worker bound to this engine's collaborators."""
        return JobRunner(db=self.db, registry=self.registry, curator=self.curator, settings=self.settings, **kwargs)

    async def start_training(self, dataset_id: str, base_model_id: str | None = None,
                             config: JobConfig | dict[str, Any] | None = None, job_type: JobType = JobType.SFT,
                             created_by: str = "l07", idempotency_key: str | None = None) -> TrainingJob:
        """Validate and queue a job; returns at once with status PENDING.

        Args:
            dataset_id: Dataset to train on (its latest version, recorded on the job).
            base_model_id: Registry id of the base model; default: the registered default base (registered on first use).
            config: Hyper-parameters. A ``JobConfig`` is used as it is; for an SFT job, None or a dict of fields
                gets the recipe for this device, base model and dataset size (``jobs/presets.select_recipe``) with
                the dict's fields on top, recorded in ``config.extra["recipe"]`` and ``metrics["recipe"]``.
            job_type: SFT, RLHF or DISTILLATION (table ``services/jobs/kinds.py``).
            created_by: Requester (audit).
            idempotency_key: Submitting the same key again returns the first job.

        Raises:
            L07Error: E7500 config out of range, E7036 LoRA targets that do not resolve, E7028 unknown dataset,
                E7020 a train split smaller than ``minimum_dataset_size``, E7250 unknown base model, E7201/E7207
                tampered base model.
        """
        if isinstance(config, JobConfig):
            cfg: JobConfig | None = config
        else:
            cfg = None
            coerce_config(config)  # out-of-range fields fail fast (E7500), before any model is looked at
        job_type = JobType(job_type)
        if idempotency_key:
            async with self.db.session() as session:
                existing = await JobRepository(session).find_by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing
        if base_model_id is None:
            base_model_id = (await self.registry.ensure_base_model()).model_id
        base_dir = await self.registry.local_path(base_model_id)
        dataset = await self.curator.get_dataset(dataset_id)
        train_n = len(dataset.split_examples("train"))
        if train_n == 0:
            raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, f"dataset {dataset_id} has no training examples")
        minimum = self.settings.minimum_dataset_size
        if train_n < minimum:
            raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES,
                           f"dataset {dataset_id} {dataset.version} has {train_n} training examples; training needs "
                           f"at least minimum_dataset_size={minimum} (L07_MINIMUM_DATASET_SIZE)",
                           dataset_id=dataset_id, train_examples=train_n, minimum_dataset_size=minimum)
        if cfg is None and job_type is JobType.SFT:
            recipe = await asyncio.to_thread(self._recipe, base_dir, train_n)
            cfg = recipe_config(recipe, config if isinstance(config, dict) else None, base_dir)
        elif cfg is None:  # the recipes were measured for SFT; RLHF and distillation keep the contract's defaults
            cfg = coerce_config(config)
        targets = await asyncio.to_thread(self._check_model_fit, cfg, base_dir)
        job = TrainingJob(
            job_type=job_type, status=JobStatus.PENDING, config=cfg.model_dump(mode="json"), dataset_id=dataset_id,
            dataset_version=dataset.version, dataset_size=len(dataset.examples), base_model_id=base_model_id,
            created_by=created_by, idempotency_key=idempotency_key,
            metrics={"resolved_target_modules": targets,
                     "recipe": cfg.extra.get("recipe") or {"preset": None, "reason": "a complete config was given"}},
        )
        await self.lifecycle.submit(job, created_by, {"job_type": job_type.value, "dataset_id": dataset_id,
                                                      "dataset_version": dataset.version,
                                                      "base_model_id": base_model_id})
        log.info("training job queued", extra={"job_id": job.job_id, "job_type": job_type.value})
        return job

    @staticmethod
    def _recipe(base_dir: str, train_examples: int) -> Recipe:
        """The measured recipe for where this process's worker trains, the base model's size and the train split.

        The device is the one this machine's workers train on (``l07 train`` and the embedded worker run here); a
        queue served by workers elsewhere gets its recipe by naming a preset.
        """
        return select_recipe(_device(), count_parameters(base_dir), train_examples)

    @staticmethod
    def _check_model_fit(cfg: JobConfig, base_dir: str) -> list[str]:
        targets = resolve_target_modules(cfg.target_modules, base_dir)
        model_config = json.loads((Path(base_dir) / "config.json").read_text())
        max_pos = model_config.get("max_position_embeddings") or model_config.get("n_positions")
        if max_pos and cfg.max_seq_length > int(max_pos):
            raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                           f"max_seq_length {cfg.max_seq_length} exceeds the base model's {max_pos} positions",
                           field="max_seq_length", limit=int(max_pos))
        return targets

    async def get_job_status(self, job_id: str) -> TrainingJob:
        """Live status, progress and metrics. Unknown id: E7410."""
        async with self.db.session() as session:
            return await JobRepository(session).get(job_id)

    async def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100) -> list[TrainingJob]:
        """Jobs, newest first."""
        async with self.db.session() as session:
            return await JobRepository(session).list(JobStatus(status) if status else None, limit=limit)

    async def job_events(self, job_id: str, kinds: list[str] | None = None, after_id: int = 0) -> list[dict[str, Any]]:
        """Stored per-step losses, evals, checkpoints and state changes of a job."""
        async with self.db.session() as session:
            repo = JobRepository(session)
            await repo.get(job_id)
            return await repo.events(job_id, kinds, after_id)

    async def cancel_job(self, job_id: str, actor: str = "l07") -> None:
        """Cancel a job. Idempotent; a terminal job is left as it is. Unknown id: E7410.

        A PENDING job is cancelled at once; a running one is stopped by its worker within seconds.
        """
        await self.lifecycle.request_cancel(job_id, actor)

    async def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> TrainingJob:
        """Block until the job is terminal.

        Raises:
            L07Error: E7400 when ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            job = await self.get_job_status(job_id)
            if job.status.terminal:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise L07Error(L07ErrorCode.TRAINING_JOB_TIMEOUT, f"job {job_id} still {job.status.value} after "
                               f"{timeout} s", job_id=job_id, status=job.status.value)
            await asyncio.sleep(poll_s)

    async def run_worker_once(self, **runner_kwargs: Any) -> TrainingJob | None:
        """Claim and run one job (in a subprocess) to its end; None when no job is waiting."""
        return await self.runner(**runner_kwargs).run_once()

    def start_background_worker(self, poll_s: float = 2.0) -> asyncio.Task:
        """Run a worker inside this event loop (the embedded default). Stop it with ``stop_background_worker``."""
        if self._worker_task is None or self._worker_task.done():
            self._worker_stop = asyncio.Event()
            self._worker_task = asyncio.create_task(self.runner().run_forever(poll_s, self._worker_stop))
        return self._worker_task

    async def stop_background_worker(self, timeout: float = 1.5) -> None:
        """Stop the embedded worker; a job it was running is resumed by the next worker from its checkpoint."""
        if self._worker_task is None:
            return
        assert self._worker_stop is not None
        self._worker_stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._worker_task), timeout)
        except asyncio.TimeoutError:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
        self._worker_task = None

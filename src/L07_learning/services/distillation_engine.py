"""``DistillationEngine``: durable teacher -> student distillation jobs (contract §3.3, §5.7, E76xx).

A distillation job is a ``TrainingJob`` with ``job_type=DISTILLATION`` run by the same worker as SFT
(``services/jobs/runner.py``); its worker-side ``prepare`` and ``register`` hooks are in
``services/jobs/distillation.py``, its child side is ``pipelines/distillation_pipeline.py:entry``.

* Teacher: any registered model. A ``LORA_ADAPTER`` is resolved to its parent's folder plus the adapter folder and
  merged in the child; every folder comes from ``ModelRegistry.local_path`` (hash and signature verified).
* Student: a registered smaller model (``student_model_id``) or a :class:`StudentSpec` derived from the teacher.
* Output: the student is registered as ``DISTILLED`` with lineage to the teacher (``parent_model_id``), the job and
  the dataset version; its training and held-out metrics (teacher vs student score, ratios) are stored with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.training_job import JobConfig, JobStatus, JobType, TrainingJob
from ..pipelines.distillation.student import StudentSpec, student_config
from ..pipelines.distillation_pipeline import DistillationConfig, check_temperature
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from ..store.repositories.jobs import JobRepository
from .fine_tuning_engine import FineTuningEngine
from .jobs.distillation import EXTRA_KEY
from .registry.loading import resolve_model_dirs

log = logging.getLogger(__name__)


def _validated(model: type, value: Any, what: str) -> Any:
    """A pydantic model from a model, dict or None; E7601 for the temperature, E7500 for anything else."""
    if value is None:
        return model()
    if isinstance(value, model):
        return value
    if isinstance(value, dict) and "temperature" in value:
        check_temperature(value["temperature"])
    try:
        return model(**value)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in exc.errors()]
        raise L07Error(
            L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
            f"{what}: " + "; ".join(f"{p['field']}: {p['error']}" for p in problems),
            problems=problems,
        ) from exc


class DistillationEngine:
    """Submit, watch and cancel distillation jobs.

    Args:
        db: Database (default: the configured one).
        registry: ``ModelRegistry`` (teacher and student folders are loaded through ``local_path``).
        curator: ``DatasetCurator`` (training data and held-out split).
        settings: Settings.
    """

    def __init__(self, db: Database | None = None, registry: Any = None, curator: Any = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        # Status, cancel, wait and the worker are the fine-tuning engine's: one job table, one runner.
        self.jobs = FineTuningEngine(db=self.db, registry=registry, curator=curator, settings=self.settings)

    @property
    def registry(self) -> Any:
        return self.jobs.registry

    @property
    def curator(self) -> Any:
        return self.jobs.curator

    async def start_distillation(
        self,
        teacher_model_id: str,
        dataset_id: str,
        student: StudentSpec | dict[str, Any] | None = None,
        student_model_id: str | None = None,
        distillation: DistillationConfig | dict[str, Any] | None = None,
        model_name: str | None = None,
        created_by: str = "l07",
        idempotency_key: str | None = None,
    ) -> TrainingJob:
        """Validate and queue a distillation job; returns at once with status PENDING.

        Args:
            teacher_model_id: Registered teacher (BASE, FINE_TUNED, DISTILLED or LORA_ADAPTER).
            dataset_id: Dataset whose train split is distilled on (its latest version, recorded on the job) and
                whose test split scores teacher and student.
            student: Shape of a student derived from the teacher (default: :class:`StudentSpec` defaults).
            student_model_id: A registered smaller model to train instead of deriving one.
            distillation: Method, temperature (default 4.0), alpha, steps... (:class:`DistillationConfig`).
            model_name: Registry track of the student (default ``<teacher name>-distilled``).
            created_by: Requester (audit).
            idempotency_key: Submitting the same key again returns the first job.

        Raises:
            L07Error: E7601 invalid temperature; E7500 invalid settings or a student not smaller than its teacher;
                E7250 unknown teacher or student; E7201/E7207 tampered artifacts; E7028 unknown dataset;
                E7031 empty train split.
        """
        cfg = _validated(DistillationConfig, distillation, "distillation settings")
        spec = _validated(StudentSpec, student, "student spec")
        if idempotency_key:
            async with self.db.session() as session:
                existing = await JobRepository(session).find_by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing
        teacher_dir, _ = await resolve_model_dirs(self.registry, teacher_model_id)
        teacher_cfg = json.loads((Path(teacher_dir) / "config.json").read_text())
        if student_model_id is not None:
            student_dir = await self.registry.local_path(student_model_id)
            student_cfg = json.loads((Path(student_dir) / "config.json").read_text())
            _check_registered_student(teacher_cfg, student_cfg)
        else:
            await asyncio.to_thread(_check_spec, teacher_cfg, spec)
        dataset = await self.curator.get_dataset(dataset_id)
        if not dataset.split_examples("train"):
            raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, f"dataset {dataset_id} has no training examples")
        # The JobConfig carries learning rate and batch size in its own ranges so the runner's retry policy can
        # adjust them (NaN: halve the rate; OOM: halve the batch); jobs/distillation.py:prepare applies those changes.
        carrier_lr, carrier_batch = min(max(cfg.learning_rate, 1e-6), 1e-3), min(cfg.batch_size, 128)
        job_config = JobConfig(
            learning_rate=carrier_lr, batch_size=carrier_batch, epochs=1, max_steps=cfg.max_steps, seed=cfg.seed,
            model_name=model_name,
            extra={EXTRA_KEY: {"config": cfg.model_dump(mode="json"), "student": spec.model_dump(mode="json"),
                               "student_model_id": student_model_id,
                               "carrier": {"learning_rate": carrier_lr, "batch_size": carrier_batch}}},
        )
        job = TrainingJob(
            job_type=JobType.DISTILLATION, status=JobStatus.PENDING, config=job_config.model_dump(mode="json"),
            dataset_id=dataset_id, dataset_version=dataset.version, dataset_size=len(dataset.examples),
            base_model_id=teacher_model_id, created_by=created_by, idempotency_key=idempotency_key,
        )
        await self.jobs.lifecycle.submit(job, created_by, {
            "job_type": JobType.DISTILLATION.value, "teacher_model_id": teacher_model_id,
            "student_model_id": student_model_id, "dataset_id": dataset_id, "dataset_version": dataset.version,
            "temperature": cfg.temperature})
        log.info("distillation job queued", extra={"job_id": job.job_id})
        return job

    async def get_job_status(self, job_id: str) -> TrainingJob:
        """Live status and metrics. Unknown id: E7410."""
        return await self.jobs.get_job_status(job_id)

    async def cancel_job(self, job_id: str, actor: str = "l07") -> None:
        """Cancel a job (idempotent)."""
        await self.jobs.cancel_job(job_id, actor)

    async def wait(self, job_id: str, timeout: float | None = None) -> TrainingJob:
        """Block until the job is terminal (E7400 on timeout)."""
        return await self.jobs.wait(job_id, timeout)

    async def run_worker_once(self, **runner_kwargs: Any) -> TrainingJob | None:
        """Claim and run one waiting job (any type) in a subprocess."""
        return await self.jobs.run_worker_once(**runner_kwargs)


def _check_spec(teacher_cfg: dict[str, Any], spec: StudentSpec) -> None:
    """Reject at submission a student that is not smaller than its teacher (same rules as the pipeline)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(**teacher_cfg)
    student_config(config, spec)
    n_teacher = teacher_cfg.get("num_hidden_layers", 0)
    if spec.layer_indices is not None and (
        len(spec.layer_indices) != spec.num_layers or any(not 0 <= i < n_teacher for i in spec.layer_indices)
    ):
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                       f"layer_indices must name {spec.num_layers} teacher layers in [0, {n_teacher})")


def _check_registered_student(teacher_cfg: dict[str, Any], student_cfg: dict[str, Any]) -> None:
    if teacher_cfg.get("vocab_size") != student_cfg.get("vocab_size"):
        raise L07Error(L07ErrorCode.KNOWLEDGE_TRANSFER_FAILED,
                       "student and teacher must share a vocabulary for logit distillation"
                       f" ({student_cfg.get('vocab_size')} vs {teacher_cfg.get('vocab_size')})")

"""Fine-tuning jobs (``/v1/fine_tuning/jobs``) as L07 work: the training file goes through the importer (quality
filter, per-line report as job events), its accepted examples become a dataset version, and that version is trained
by an L07 training job whose registered model is the job's ``fine_tuned_model``: an SFT job for the ``supervised``
method, an RLHF job running DPO on the file's preference pairs for ``dpo`` (``dpo.py``)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelStage
from ...models.training_job import JobConfig, JobType, TrainingJob
from ...store.db import Database
from ...store.repositories.examples import ExampleRepository
from ...store.repositories.fine_tuning import FineTuningRepository
from ..dataset_curator import DatasetCurator
from ..fine_tuning_engine import FineTuningEngine, coerce_config
from ..importers.report import ImportReport
from ..importers.run import Importer
from ..model_registry import ModelRegistry
from ..registry.base_models import DEFAULT_BASE_MODEL, find_base
from . import shapes
from .dpo import dpo_job_config
from .files import FileStore

METHODS = {"supervised": ("openai-chat", JobType.SFT), "dpo": ("openai-preference", JobType.RLHF)}
"""OpenAI method -> the importer format its training file is read with, and the L07 job kind that trains it."""
HYPERPARAMETERS = {"n_epochs": "epochs", "batch_size": "batch_size"}
"""OpenAI hyperparameter -> JobConfig field; ``learning_rate_multiplier`` scales JobConfig's default rate."""


def invalid(message: str, param: str, code: L07ErrorCode = L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH) -> L07Error:
    return L07Error(code, message, param=param)


def job_config(hyperparameters: dict[str, Any], suffix: str | None, base_name: str) -> dict[str, Any]:
    """JobConfig fields from OpenAI hyperparameters (``"auto"`` leaves a field to L07's recipe). Other keys must be
    JobConfig fields (an L07 extension: ``lora_rank``, ``max_seq_length``...).

    Raises:
        L07Error: E7500 for an unknown key or a value out of range, naming it as ``param``.
    """
    config: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        if value == "auto" or value is None:
            continue
        if key == "learning_rate_multiplier":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise invalid("learning_rate_multiplier must be a positive number", f"hyperparameters.{key}",
                              L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID)
            config["learning_rate"] = JobConfig.model_fields["learning_rate"].default * value
        elif key in HYPERPARAMETERS:
            config[HYPERPARAMETERS[key]] = value
        elif key in JobConfig.model_fields:
            config[key] = value
        else:
            raise invalid(f"unknown hyperparameter {key!r}", f"hyperparameters.{key}",
                          L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID)
    if suffix:
        config["model_name"] = f"{base_name.split('/')[-1].lower()}-ft-{suffix}"
    try:
        coerce_config(config)
    except L07Error as exc:
        field = (exc.details.get("problems") or [{}])[0].get("field", "")
        name = {v: k for k, v in HYPERPARAMETERS.items()}.get(field, field)
        raise L07Error(exc.code, exc.message, param=f"hyperparameters.{name}") from exc
    return config


class FineTuningJobs:
    """OpenAI fine-tuning jobs over L07's importer, curator and training engine."""

    def __init__(self, db: Database, files: FileStore, importer: Importer, curator: DatasetCurator,
                 engine: FineTuningEngine, registry: ModelRegistry) -> None:
        self.db = db
        self.files = files
        self.importer = importer
        self.curator = curator
        self.engine = engine
        self.registry = registry

    async def create(self, body: dict[str, Any], created_by: str) -> dict[str, Any]:
        """Validate the request, import its files, build the dataset and queue the training job.

        A request that cannot be served is refused before anything is stored (400/404). Files that give nothing to
        train on make a job that is ``failed`` at once, its events saying why.
        """
        method = body.get("method") or {"type": "supervised"}
        kind = method.get("type", "supervised")
        if kind not in METHODS:
            raise invalid(f"method type {kind!r} is not supported; use 'supervised' or 'dpo'", "method.type")
        own = (method.get(kind) or {}).get("hyperparameters") or {}
        if not isinstance(own, dict):
            raise invalid("hyperparameters must be an object", f"method.{kind}.hyperparameters",
                          L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID)
        params = {**(body.get("hyperparameters") or {}), **own}
        seed = int(body["seed"]) if body.get("seed") is not None else 42
        training = await self.files.get(body["training_file"])
        validation = await self.files.get(body["validation_file"]) if body.get("validation_file") else None
        base = await self._base_model(body["model"])
        if kind == "dpo":
            config = dpo_job_config(params, body.get("suffix"), base.name, seed)
        else:
            config = job_config(params, body.get("suffix"), base.name)
            if body.get("seed") is not None:
                config["seed"] = seed
        ft_job_id = "ftjob-" + uuid.uuid4().hex
        async with self.db.session() as session:
            FineTuningRepository(session).add_job(
                ft_job_id=ft_job_id, created_by=created_by, model=body["model"], base_model_id=base.model_id,
                training_file=training["file_id"], validation_file=validation["file_id"] if validation else None,
                suffix=body.get("suffix"), method={"type": kind}, hyperparameters=params,
                seed=seed, status="validating_files")
            FineTuningRepository(session).add_event(ft_job_id, "info", "Validating training file: "
                                                    f"{training['file_id']}", {})
        await self._run(ft_job_id, kind, training, validation, base.model_id, config, created_by)
        return await self.retrieve(ft_job_id)

    async def _base_model(self, model: str) -> Any:
        """The registered model ``model`` names: an id, a base model's name, or the default base (registered on
        first use). Refused with 404 when none matches."""
        try:
            return await self.registry.get_model(model)
        except L07Error as exc:
            if exc.code is not L07ErrorCode.MODEL_NOT_FOUND:
                raise
        if model == DEFAULT_BASE_MODEL:
            return await self.registry.ensure_base_model()
        found = await find_base(self.registry, model)
        if found is None or found.stage in (ModelStage.ARCHIVED, ModelStage.REJECTED):
            raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"no base model {model!r} is registered "
                           "(l07 models register-base, or a registered model id)", param="model",
                           openai_code="model_not_found")
        return found

    async def _import(self, ft_job_id: str, file: dict[str, Any], role: str, source_format: str) -> ImportReport:
        """The file's import report as ``source_format``: made once per file and format (a second job reuses it, so
        no line enters twice)."""
        if file["import_report"] is not None and file["import_format"] == source_format:
            report = ImportReport.from_dict(file["import_report"])
        else:
            report = await self.importer.import_file(source_format, Path(file["path"]), file_name=file["filename"])
            await self.files.set_import(file["file_id"], source_format, report.to_dict())
        counts = report.counts()
        async with self.db.session() as session:
            repo = FineTuningRepository(session)
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.filtered_reasons().items())) or "none"
            repo.add_event(ft_job_id, "info" if counts["imported"] else "error",
                           f"{role.capitalize()} file {file['file_id']}: {counts['imported']} lines accepted, "
                           f"{counts['filtered']} filtered ({reasons}), {counts['refused']} refused",
                           {"file_id": file["file_id"], **counts, "filtered_reasons": report.filtered_reasons()})
            for r in report.refused:
                repo.add_event(ft_job_id, "warn", f"{role.capitalize()} file line {r['line']} refused: {r['code']} "
                               f"{r['message']}", {"file_id": file["file_id"], **r})
        return report

    async def _run(self, ft_job_id: str, kind: str, training: dict[str, Any], validation: dict[str, Any] | None,
                   base_model_id: str, config: dict[str, Any], created_by: str) -> None:
        source_format, job_type = METHODS[kind]
        report = await self._import(ft_job_id, training, "training", source_format)
        val_ids = ((await self._import(ft_job_id, validation, "validation", source_format)).example_ids
                   if validation else [])
        if not report.example_ids:
            await self._fail(ft_job_id, "invalid_training_file", "no line of the training file was accepted; the "
                             "job's events list each line's reason", "training_file")
            return
        async with self.db.session() as session:
            examples = await ExampleRepository(session).get_many(report.example_ids + val_ids)
        try:
            dataset = await self.curator.create_dataset(
                f"openai-{ft_job_id}", examples, min_examples=1, reason=f"fine-tuning job {ft_job_id}",
                created_by=created_by, splits=({e: "train" for e in report.example_ids} | {e: "val" for e in val_ids})
                if val_ids else None)
            job = await self.engine.start_training(dataset.dataset_id, base_model_id, config, job_type,
                                                   created_by=created_by, idempotency_key=f"openai:{ft_job_id}")
        except L07Error as exc:
            await self._fail(ft_job_id, exc.code.value, exc.message, None)
            return
        async with self.db.session() as session:
            repo = FineTuningRepository(session)
            await repo.update_job(ft_job_id, dataset_id=dataset.dataset_id, job_id=job.job_id, status=None)
            pairs = ", each with its preference pair" if job_type is JobType.RLHF else ""
            repo.add_event(ft_job_id, "info", f"Dataset {dataset.dataset_id} {dataset.version} built "
                           f"({len(dataset.examples)} examples{pairs}); queued as L07 training job {job.job_id} "
                           f"({job_type.value})",
                           {"dataset_id": dataset.dataset_id, "dataset_version": dataset.version,
                            "job_id": job.job_id})

    async def _fail(self, ft_job_id: str, code: str, message: str, param: str | None) -> None:
        async with self.db.session() as session:
            repo = FineTuningRepository(session)
            await repo.update_job(ft_job_id, status="failed", error={"code": code, "message": message, "param": param})
            repo.add_event(ft_job_id, "error", f"Job failed: {message}", {"code": code})

    async def _row(self, ft_job_id: str) -> tuple[dict[str, Any], TrainingJob | None]:
        async with self.db.session() as session:
            row = await FineTuningRepository(session).job(ft_job_id)
        if row is None:
            raise L07Error(L07ErrorCode.TRAINING_JOB_NOT_FOUND, f"no fine-tuning job {ft_job_id!r}",
                           param="fine_tuning_job_id", openai_code="fine_tuning_job_not_found")
        job = await self.engine.get_job_status(row["job_id"]) if row["job_id"] else None
        return row, job

    async def retrieve(self, ft_job_id: str) -> dict[str, Any]:
        row, job = await self._row(ft_job_id)
        return shapes.job_object(row, job)

    async def owner(self, ft_job_id: str) -> str:
        row, _ = await self._row(ft_job_id)
        return row["created_by"]

    async def list(self, after: str | None, limit: int) -> dict[str, Any]:
        async with self.db.session() as session:
            rows = await FineTuningRepository(session).jobs()
        listed = []
        for row in rows:
            job = await self.engine.get_job_status(row["job_id"]) if row["job_id"] else None
            listed.append(shapes.job_object(row, job))
        return shapes.page(listed, after, limit)

    async def cancel(self, ft_job_id: str, actor: str) -> dict[str, Any]:
        row, job = await self._row(ft_job_id)
        if job is not None:
            await self.engine.cancel_job(job.job_id, actor=actor)
        return await self.retrieve(ft_job_id)

    async def events(self, ft_job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """The import's events and the training job's, newest first (as OpenAI lists them)."""
        row, job = await self._row(ft_job_id)
        async with self.db.session() as session:
            own = await FineTuningRepository(session).events(ft_job_id)
        listed = [shapes.event_object(f"ftevent-{ft_job_id[6:]}-{e['id']}", e["created_at"], e["level"], e["message"],
                                      e["data"]) for e in own]
        if job is not None:
            listed += shapes.job_events(ft_job_id, job, await self.engine.job_events(job.job_id))
        listed.sort(key=lambda e: e["created_at"])  # stable: the import's events stay before the job's
        return shapes.page(list(reversed(listed)), after, limit)

    async def checkpoints(self, ft_job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        _, job = await self._row(ft_job_id)
        events = await self.engine.job_events(job.job_id, ["step", "checkpoint"]) if job is not None else []
        return shapes.page(shapes.checkpoint_objects(ft_job_id, job, events), after, limit)

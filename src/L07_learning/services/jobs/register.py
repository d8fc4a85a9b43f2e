"""The model record built from a job's output: one definition for every kind (SFT, RLHF, distillation).

Each kind decides the name, type, metrics and config of what it trained; the lineage fields (parent, base model, job,
dataset version) are filled here the same way for all of them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ...models.model_artifact import ModelArtifact, ModelType
from ...models.training_job import TrainingJob


@dataclass(frozen=True)
class Provenance:
    """The job and dataset version a model was trained by and on (all None for a direct, job-less call)."""

    training_job_id: str | None = None
    dataset_id: str | None = None
    dataset_version: str | None = None

    @classmethod
    def of(cls, job: TrainingJob) -> Provenance:
        return cls(job.job_id, job.dataset_id, job.dataset_version)


def default_name(trained_from: ModelArtifact, suffix: str) -> str:
    """``<last part of the model's name, lower case>-<suffix>``, e.g. ``smollm2-135m-sft``."""
    return f"{trained_from.name.split('/')[-1].lower()}-{suffix}"


def job_output_id(job_id: str, model_type: ModelType, name: str) -> str:
    """The model id of a job's output, the same on every attempt: a worker that registers a job's output again (it
    took over a job whose first worker died mid-registration) gets the registered model back, not a second one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"l07:job-output:{job_id}:{model_type.value}:{name}"))


def model_record(name: str, model_type: ModelType, trained_from: ModelArtifact, provenance: Provenance, *,
                 metrics: dict[str, Any], config: dict[str, Any], tags: list[str], **fields: Any) -> ModelArtifact:
    """A ``ModelArtifact`` for a trained output, ready for ``ModelRegistry.register_model``.

    Args:
        trained_from: The model the output was trained from; it is the parent and its name and version are
            recorded as the base model unless ``fields`` say otherwise.
        provenance: Job and dataset version of the training.
        fields: Any other ``ModelArtifact`` field; these override the defaults drawn from ``trained_from``.
    """
    return ModelArtifact(**{
        **({"model_id": job_output_id(provenance.training_job_id, model_type, name)}
           if provenance.training_job_id else {}),
        "name": name,
        "model_type": model_type,
        "parent_model_id": trained_from.model_id,
        "training_job_id": provenance.training_job_id,
        "dataset_id": provenance.dataset_id,
        "dataset_version": provenance.dataset_version,
        "base_model_name": trained_from.name,
        "base_model_version": trained_from.version,
        "metrics": metrics,
        "config": config,
        "tags": tags,
        **fields,
    })

"""Registered models, their versions, stages and lineage (contract §3.5, §4.2)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field, field_validator

from ._base import L07Model, check_semver, new_id, utcnow


class ModelType(str, Enum):
    BASE = "BASE"
    FINE_TUNED = "FINE_TUNED"
    LORA_ADAPTER = "LORA_ADAPTER"
    DISTILLED = "DISTILLED"
    REWARD_MODEL = "REWARD_MODEL"


class ModelStage(str, Enum):
    """Lifecycle stage. Input is case-insensitive (``"staging"`` works)."""

    DEVELOPMENT = "DEVELOPMENT"
    STAGING = "STAGING"
    PRODUCTION = "PRODUCTION"
    ARCHIVED = "ARCHIVED"
    REJECTED = "REJECTED"

    @classmethod
    def _missing_(cls, value: object) -> "ModelStage | None":
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


class ServingState(str, Enum):
    """Serving state inside PRODUCTION: one ACTIVE per model name, superseded ones STANDBY."""

    NONE = "NONE"
    CANARY = "CANARY"
    ACTIVE = "ACTIVE"
    STANDBY = "STANDBY"


class StageTransition(L07Model):
    """One row of a model's stage history."""

    stage: ModelStage
    from_stage: ModelStage | None = None
    transitioned_at: datetime = Field(default_factory=utcnow)
    transitioned_by: str = "l07"
    notes: str | None = None
    approval_required: bool = False
    approver: str | None = None
    approvals: list[dict[str, Any]] = Field(default_factory=list)
    canary_config: dict[str, Any] | None = None
    serving_state: ServingState | None = None


class ModelArtifact(L07Model):
    """A model in the registry: where its files are, what they hash to, who signed them, where it came from."""

    model_id: str = Field(default_factory=new_id)
    name: str = Field(min_length=1)
    version: str = "1.0.0"
    model_type: ModelType
    stage: ModelStage = ModelStage.DEVELOPMENT
    serving_state: ServingState = ServingState.NONE
    artifact_path: str = ""
    artifact_format: str = "safetensors"
    artifact_size_bytes: int = 0
    checksum: str = ""
    signature: str = ""
    signed: bool = False
    signing_key_version: str | None = None
    parent_model_id: str | None = None
    training_job_id: str | None = None
    dataset_id: str | None = None
    dataset_version: str | None = None
    base_model_name: str | None = None
    base_model_version: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    validation_status: str = "PENDING"
    validation_report_url: str | None = None
    stage_history: list[StageTransition] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = "l07"
    deployed_at: datetime | None = None
    tags: list[str] = Field(default_factory=list)
    experimental: bool = False
    notes: str | None = None

    _v = field_validator("version")(lambda cls, v: check_semver(v))

    @field_validator("validation_status")
    @classmethod
    def _vs(cls, v: str) -> str:
        if v not in {"PENDING", "PASSED", "CONDITIONAL", "FAILED"}:
            raise ValueError("validation_status must be PENDING, PASSED, CONDITIONAL or FAILED")
        return v


class ModelVersion(L07Model):
    model_id: str
    version: str
    created_at: datetime = Field(default_factory=utcnow)
    change_note: str | None = None

    _v = field_validator("version")(lambda cls, v: check_semver(v))


class ModelLineage(L07Model):
    """A model's ancestry: parent model, the job that made it, the exact dataset version."""

    model_id: str
    parent_model_id: str | None = None
    base_model_name: str | None = None
    base_model_version: str | None = None
    training_job_id: str | None = None
    dataset_id: str | None = None
    dataset_version: str | None = None
    dataset_checksum: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    source_event_count: int = 0
    source_event_ids: list[str] = Field(default_factory=list)
    parents: list["ModelLineage"] = Field(default_factory=list)

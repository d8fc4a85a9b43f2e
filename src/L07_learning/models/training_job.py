"""Training jobs, their states and configuration (contract §3.3, §3.4, §4.1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ._base import L07Model, new_id, utcnow


class JobType(str, Enum):
    """Kinds of training job (wire form is lower-case: ``sft``, ``rlhf``, ``distillation``)."""

    SFT = "SFT"
    RLHF = "RLHF"
    DISTILLATION = "DISTILLATION"

    @classmethod
    def _missing_(cls, value: object) -> "JobType | None":
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


class JobStatus(str, Enum):
    """Job states (contract §4.1). Spec aliases TRAINING and SUCCESS are accepted on input."""

    PENDING = "PENDING"
    INITIALIZING = "INITIALIZING"
    PREPARING_DATA = "PREPARING_DATA"
    RUNNING = "RUNNING"
    VALIDATING = "VALIDATING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @classmethod
    def _missing_(cls, value: object) -> "JobStatus | None":
        if isinstance(value, str):
            aliases = {"TRAINING": "RUNNING", "SUCCESS": "COMPLETED"}
            key = value.upper()
            return cls.__members__.get(aliases.get(key, key))
        return None

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

# Legal job transitions (contract §4.1); every non-terminal state may also go to CANCELLED.
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.INITIALIZING}),
    JobStatus.INITIALIZING: frozenset({JobStatus.PREPARING_DATA, JobStatus.FAILED, JobStatus.RETRYING}),
    JobStatus.PREPARING_DATA: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.RETRYING}),
    JobStatus.RUNNING: frozenset({JobStatus.RETRYING, JobStatus.VALIDATING, JobStatus.FAILED}),
    JobStatus.RETRYING: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.PENDING}),
    JobStatus.VALIDATING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
for _state in JOB_TRANSITIONS:
    if not _state.terminal:
        JOB_TRANSITIONS[_state] = JOB_TRANSITIONS[_state] | {JobStatus.CANCELLED}


def _nproc(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NPROC_PER_NODE:
        raise ValueError(f"extra.nproc_per_node must be an integer from 1 to {MAX_NPROC_PER_NODE}, not {value!r}")


def _flag(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"extra.{name} must be true or false, not {value!r}")
    return check


def _model_id(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 64):
            raise ValueError(f"extra.{name} must be a model id (a string of 1 to 64 characters) or null")
    return check


def _settings(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"extra.{name} must be an object")
    return check


def _pair_source(value: Any) -> None:
    if value not in PAIR_SOURCES:
        raise ValueError(f"extra.preference_pairs must be one of {', '.join(PAIR_SOURCES)}, not {value!r}")


PAIR_SOURCES = ("built", "stored")
"""Where an RLHF job's preference pairs come from: ``built`` from the dataset's examples by the §5.5 rules (default),
or ``stored``: the pairs stored with the dataset's examples when they were imported (``openai-preference`` files),
so the job trains on exactly the pairs its file held."""
# One training process per GPU of a node; more than 8 is a typo, not a node (and each loads the whole base model).
MAX_NPROC_PER_NODE = 8
MAX_EXTRA_BYTES = 65_536
# The keys ``JobConfig.extra`` may hold and how each is checked; the RLHF and distillation settings are dicts their
# kind validates in full with its own model (``RLHFConfig``, ``DistillationConfig``) when the job is prepared.
EXTRA_KEYS: dict[str, Callable[[Any], None]] = {
    "nproc_per_node": _nproc,
    "generation_eval": _flag("generation_eval"),
    "rlhf": _settings("rlhf"),
    "reward_model_id": _model_id("reward_model_id"),
    "sft_model_id": _model_id("sft_model_id"),
    "preference_pairs": _pair_source,
    "distillation": _settings("distillation"),
    # The recipe a job ran (preset and why, services/jobs/presets.py), and whether a model no better than its base
    # may still be registered (default: no, E7035).
    "recipe": _settings("recipe"),
    "require_improvement": _flag("require_improvement"),
}


class JobConfig(L07Model):
    """Hyper-parameters of a fine-tuning job. Defaults and ranges are those of contract §3.4."""

    learning_rate: float = Field(default=2e-5, ge=1e-6, le=1e-3)
    learning_rate_schedule: Literal["linear", "cosine", "constant"] = "linear"
    batch_size: int = Field(default=16, ge=1, le=128)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=8)
    epochs: int = Field(default=3, ge=1, le=10)
    max_steps: int | None = Field(default=None, gt=0)
    max_seq_length: int = Field(default=2048, ge=256, le=4096)
    lora_rank: int = Field(default=16, ge=8, le=64)
    lora_alpha: float = Field(default=32.0, ge=8, le=64)
    lora_dropout: float = Field(default=0.05, ge=0, le=0.5)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    # Not in contract §3.4 (an L07 extension, peft's ``layers_to_transform``): adapt only the N transformer blocks
    # nearest the output. Backpropagation then stops below them, which cuts a CPU step by about a sixth with 20 of 30.
    lora_top_layers: int | None = Field(default=None, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, le=0.5)
    warmup_steps: int | None = Field(default=None, ge=0)
    weight_decay: float = Field(default=0.01, ge=0, le=0.1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    early_stopping_patience: int = Field(default=2, ge=0)
    early_stopping_threshold: float = Field(default=0.001, ge=0)
    eval_strategy: Literal["epoch", "steps", "no"] = "epoch"
    save_strategy: Literal["epoch", "steps", "no"] = "epoch"
    save_total_limit: int = Field(default=3, ge=1)
    save_checkpoint_every_n_steps: int = Field(default=1000, ge=1)
    compute_on_val_set_every_n_steps: int = Field(default=500, ge=1)
    validation_batch_size: int = Field(default=32, ge=1)
    metric_for_best_model: str = "eval_loss"
    gradient_checkpointing: bool = True
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # On: an SFT job trains in the curriculum planner's order (staged easy -> all by default), read sequentially by
    # the Trainer (pipelines/planned_epochs.py); off: the Trainer's own seeded shuffle every epoch.
    use_curriculum: bool = True
    difficulty_progression: list[float] = Field(default_factory=lambda: [0.2, 0.4, 0.6])
    curriculum: Literal["none", "ordered", "staged"] | None = None
    shuffle: bool = True
    seed: int = 42
    output_format: Literal["safetensors", "pytorch"] = "safetensors"
    include_adapters: bool = True
    include_training_state: bool = False
    merge_adapter: bool = False
    max_training_duration_s: int = Field(default=12 * 3600, gt=0)
    system_prompt: str | None = None
    model_name: str | None = None
    # The open slot for kind-specific settings; only the keys of ``EXTRA_KEYS`` are accepted (contract §3.4 has no
    # such field), each checked by ``_check_extra`` here or by its kind's own model when the job is prepared.
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def nproc_per_node(self) -> int:
        """Training processes for the job (``extra.nproc_per_node``, default 1; > 1 runs under torchrun)."""
        return int(self.extra.get("nproc_per_node", 1))

    @field_validator("extra")
    @classmethod
    def _check_extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError(f"unknown extra key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(EXTRA_KEYS))}")
        for key, value in v.items():
            EXTRA_KEYS[key](value)
        if len(json.dumps(v, default=str)) > MAX_EXTRA_BYTES:
            raise ValueError(f"extra is larger than {MAX_EXTRA_BYTES} bytes of JSON")
        return v

    @field_validator("lora_alpha")
    @classmethod
    def _integral_alpha(cls, v: float) -> float:
        if float(v) != int(v):
            raise ValueError("lora_alpha must be an integral value (stored as float)")
        return float(v)

    @field_validator("difficulty_progression")
    @classmethod
    def _progression(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 1 for x in v) or v != sorted(v):
            raise ValueError("difficulty_progression must be non-decreasing values in [0, 1]")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "JobConfig":
        if self.eval_strategy == "no" and self.early_stopping_patience > 0 and self.metric_for_best_model.startswith("eval"):
            # Early stopping on eval metrics needs evaluation; turn it off instead of failing at run time.
            object.__setattr__(self, "early_stopping_patience", 0)
        return self


class TrainingJob(L07Model):
    """A durable training job (SFT, RLHF or distillation) and its live state."""

    job_id: str = Field(default_factory=new_id)
    job_type: JobType = JobType.SFT
    status: JobStatus = JobStatus.PENDING
    config: dict[str, Any] | JobConfig = Field(default_factory=JobConfig)
    dataset_id: str | None = None
    dataset_version: str | None = None
    dataset_size: int = 0
    base_model_id: str | None = None
    output_model_id: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training_metrics: dict[str, Any] | None = None
    validation_metrics: dict[str, Any] | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    device: str | None = None
    gpu_type: str | None = None
    gpu_count: int = 0
    gpu_hours_used: float = 0.0
    estimated_cost_usd: float = 0.0
    checkpoint_location: str | None = None
    checkpoint_size_bytes: int | None = None
    retry_count: int = Field(default=0, ge=0, le=3)
    error_code: str | None = None
    error_message: str | None = None
    created_by: str = "l07"
    idempotency_key: str | None = None
    notes: str | None = None
    progress: dict[str, Any] = Field(default_factory=dict)

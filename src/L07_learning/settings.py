"""Runtime configuration (pydantic-settings, environment prefix ``L07_``).

``get_settings()`` builds the settings on first call instead of at import time, so tests and the CLI can override
them with ``L07_*`` variables or ``configure(...)``.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def private_dir(path: Path | str) -> Path:
    """Create ``path`` and its missing parents readable by the owner only (0700): the L07 home holds the database,
    signing keys and models, which no other local user may read. Existing folders keep their mode."""
    path = Path(path).expanduser()
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
    return path


def private_file(path: Path | str) -> None:
    """Create ``path`` empty if missing, and make it owner-only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def parse_duration(value: Any) -> Any:
    """``"90s"``, ``"30m"``, ``"24h"`` or ``"7d"`` as a ``timedelta``; anything else is left to pydantic (seconds as a
    number, ISO 8601 ``PT24H``, ``HH:MM:SS``)."""
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    return value


class Settings(BaseSettings):
    """All L07 settings. Every field can be set as ``L07_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="L07_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".l07", description="Home folder: DB, keys, artifacts")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite file in home")
    auto_migrate: bool | None = Field(
        default=None, description="Upgrade the schema on first use; default true for SQLite, false otherwise"
    )
    artifact_root: str | None = Field(default=None, description="fsspec URL for artifacts; default <home>/artifacts")
    model_cache_dir: Path | None = Field(default=None, description="Local cache of converted base models")
    signing_key_path: Path | None = Field(default=None, description="PEM private key; default <home>/keys/")
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    # Ingestion (contract §1.7, §1.8, §1.9)
    join_window_s: float = 300.0
    late_join_ttl_s: float = 24 * 3600.0
    source_allow_list: list[str] = Field(
        default_factory=lambda: [r"^https://agentic\.local/layers/l0\d$", r"^l0\d(\.[\w.-]+)?$"]
    )
    max_event_bytes: int = 1_000_000
    verify_event_signatures: bool = Field(
        default=False, description="Require every consumed event to carry a valid ECDSA P-256 signature of a producer "
                                   "key registered with `l07 keys producers add` (contract §1.9, §7.4; E7115 otherwise)")
    max_event_depth: int = 64  # nesting levels per event, envelope included (E7015 beyond)
    max_trace_steps: int = 1000
    dead_letter_after_attempts: int = 5

    # Filter (contract §5.2)
    min_quality_score: float = 70.0
    min_confidence: float = 0.8
    near_duplicate_jaccard: float = 0.8
    pii_action: Literal["redact", "drop"] = "redact"
    max_source_share: float = 0.5

    # Training (contract §4.3, §4.1)
    minimum_dataset_size: int = Field(default=5000, ge=1, le=10000)
    max_concurrent_jobs: int = 3
    progress_interval_s: float = Field(default=60.0, gt=0, description="Cadence of training_progress_updated")
    worker_heartbeat_s: float = 5.0
    worker_stale_after_s: float = 60.0

    # Validation (contract §5.6): generation cap; None sizes it to the longest reference answer + 8 tokens.
    validation_max_new_tokens: int | None = Field(default=None, ge=1, le=1024)
    # Validations running at once in one process; each loads a candidate and a baseline model. Further ones queue
    # (an operation reads QUEUED until it starts). 1 suits a CPU host; raise it where memory holds more models.
    max_concurrent_validations: int = Field(default=1, ge=1, le=16)
    # Measurement budgets per model (defaults: ValidationConfig's). The contract's latency profile is 100 warm-up +
    # 1000 requests, which takes many minutes on CPU; a small model or a quick check can ask for fewer.
    validation_latency_requests: int = Field(default=20, ge=1, description="Measured single requests per model")
    validation_safety_prompts: int = Field(default=8, ge=0, description="Backdoor and injection probes per model")
    validation_latency_rounds: int = Field(
        default=2, ge=1, description="Timing rounds per model, alternating order; each model keeps its fastest")

    # The loop (contract §9): the default policy's trigger, budgets and leader lease
    loop_min_new_examples: int = Field(default=500, ge=1, description="New ACCEPTED examples that trigger a run")
    loop_max_interval: timedelta = Field(
        default=timedelta(hours=24), description="Run at least this often (24h, 30m, seconds) once minimum_dataset_size is met"
    )
    loop_daily_cpu_budget_s: float = Field(default=12 * 3600.0, ge=0, description="Job wall seconds on CPU per UTC day")
    loop_daily_gpu_budget_s: float = Field(default=8 * 3600.0, ge=0, description="Job wall seconds on GPU per UTC day")
    loop_lease_ttl_s: float = Field(default=30.0, gt=0, le=30.0, description="Leader lease; a dead leader is replaced after it")

    # Production feedback (contract §4.2, services/feedback/): the released model's watch against its predecessor
    watch_min_samples: int = Field(default=1000, ge=30, description="Scored outcomes per evaluation window (§4.2: >= 1000)")
    watch_quality_drop: float = Field(default=0.05, gt=0, lt=1, description="Relative quality drop that rolls back")
    watch_error_rate_rise: float = Field(default=0.01, gt=0, lt=1, description="Absolute error-rate rise that rolls back")
    watch_false_alarm_rate: float = Field(default=0.01, gt=0, lt=0.5,
                                          description="Chance a release within the thresholds is ever rolled back")
    watch_baseline_samples: int = Field(default=5000, ge=30, description="Predecessor outcomes the baseline uses")
    watch_canary_min_samples: int = Field(default=100, ge=10,
                                          description="Scored outcomes each side needs for a canary verdict")

    # Release (contract §2.3)
    outbox_sinks: list[str] = Field(default_factory=lambda: ["jsonl"])
    outbox_jsonl_path: Path | None = None
    redis_url: str | None = None
    webhook_url: str | None = None

    @field_validator("loop_max_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    @model_validator(mode="after")
    def _defaults(self) -> "Settings":
        self.home = Path(self.home).expanduser()
        if self.database_url is None:
            self.database_url = f"sqlite+aiosqlite:///{self.home / 'l07.db'}"
        if self.artifact_root is None:
            self.artifact_root = str(self.home / "artifacts")
        if self.model_cache_dir is None:
            self.model_cache_dir = self.home / "cache" / "models"
        if self.signing_key_path is None:
            self.signing_key_path = self.home / "keys"
        if self.outbox_jsonl_path is None:
            self.outbox_jsonl_path = self.home / "outbox" / "releases.jsonl"
        if self.auto_migrate is None:
            self.auto_migrate = self.database_url.startswith("sqlite")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first call."""
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests, or after changing the environment)."""
    get_settings.cache_clear()

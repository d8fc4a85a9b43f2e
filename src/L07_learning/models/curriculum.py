"""Curriculum: difficulty bands, stages and learning paths (contract §3.7, §5.3)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import Field, field_validator

from ._base import L07Model, new_id, utcnow


class DifficultyLevel(str, Enum):
    """Difficulty bands: EASY < 0.33 <= MEDIUM < 0.66 <= HARD."""

    EASY = "EASY"
    MEDIUM = "MEDIUM"
    HARD = "HARD"

    @classmethod
    def from_score(cls, difficulty: float) -> "DifficultyLevel":
        """Band of a difficulty score in [0, 1]."""
        if difficulty < 0.33:
            return cls.EASY
        if difficulty < 0.66:
            return cls.MEDIUM
        return cls.HARD


class CurriculumStage(L07Model):
    """One stage of a curriculum: the cumulative levels it trains on and its example ids."""

    stage_index: int = Field(ge=0)
    levels: list[DifficultyLevel]
    epochs: int = Field(default=1, ge=1)
    target_mean_difficulty: float = Field(default=0.5, ge=0, le=1)
    example_ids: list[str] = Field(default_factory=list)


class LearningPath(L07Model):
    """An ordered list of stages over one dataset version."""

    path_id: str = Field(default_factory=new_id)
    dataset_id: str
    dataset_version: str
    stages: list[CurriculumStage] = Field(default_factory=list)
    difficulty_signals: list[str] = Field(default_factory=lambda: ["quality_score", "task_complexity"])
    total_epochs: int = Field(default=3, ge=1)
    pacing: str = "staged"
    created_at: datetime = Field(default_factory=utcnow)

    @field_validator("difficulty_signals")
    @classmethod
    def _signals(cls, v: list[str]) -> list[str]:
        allowed = {"quality_score", "task_complexity", "frequency", "learner_uncertainty", "trace_length",
                   "tool_steps", "failure_history", "model_loss"}
        bad = [s for s in v if s not in allowed]
        if bad:
            raise ValueError(f"unknown difficulty signals {bad}; allowed: {sorted(allowed)}")
        return v

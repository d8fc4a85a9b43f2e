"""Domain models and enums (no ORM, no torch)."""

from .curriculum import CurriculumStage, DifficultyLevel, LearningPath
from .dataset import (
    ChangeType,
    Dataset,
    DatasetLineage,
    DatasetSplit,
    DatasetStatistics,
    DatasetVersion,
    validate_split_ratios,
)
from .error_codes import ERROR_TABLE, ErrorSpec, L07Error, L07ErrorCode
from .model_artifact import ModelArtifact, ModelLineage, ModelStage, ModelType, ModelVersion, ServingState, StageTransition
from .pattern import BehavioralPattern, PatternConfidence, PlanningStrategy
from .reward_signal import PreferencePair, RewardModel, RewardSignal, RLHFConfig
from .training_example import ExampleLabel, ExampleSource, ExampleStatus, TrainingExample, compute_content_hash
from .training_job import JobConfig, JobStatus, JobType, TrainingJob
from .validation import Recommendation, StageOutcome, StageResult, TestResults, ValidationResult, Verdict

__all__ = [
    "BehavioralPattern", "ChangeType", "CurriculumStage", "Dataset", "DatasetLineage", "DatasetSplit",
    "DatasetStatistics", "DatasetVersion", "DifficultyLevel", "ERROR_TABLE", "ErrorSpec", "ExampleLabel",
    "ExampleSource", "ExampleStatus", "JobConfig", "JobStatus", "JobType", "L07Error", "L07ErrorCode",
    "LearningPath", "ModelArtifact", "ModelLineage", "ModelStage", "ModelType", "ModelVersion", "PatternConfidence",
    "PlanningStrategy", "PreferencePair", "Recommendation", "RewardModel", "RewardSignal", "RLHFConfig",
    "ServingState", "StageOutcome", "StageResult", "StageTransition", "TestResults", "TrainingExample",
    "TrainingJob", "ValidationResult", "Verdict", "compute_content_hash", "validate_split_ratios",
]

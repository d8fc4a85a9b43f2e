"""Domain models: contract fields, defaults and range validation that names the failing field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from L07_learning.models import (
    Dataset,
    DifficultyLevel,
    ExampleSource,
    JobConfig,
    JobStatus,
    JobType,
    ModelArtifact,
    ModelStage,
    ModelType,
    PatternConfidence,
    PreferencePair,
    RewardSignal,
    RLHFConfig,
    TrainingExample,
    compute_content_hash,
    validate_split_ratios,
)


def _example(**kw):
    base = dict(source_type=ExampleSource.EXECUTION_TRACE, input_text="in", output_text="out", quality_score=80,
                confidence=0.9, metadata={"agent_id": "a", "task_type": "qa"})
    base.update(kw)
    return TrainingExample(**base)


def test_seed_example_fields_and_mirrors(sample_example):
    assert sample_example.example_id == "test-1"
    assert sample_example.task_type == "summarization"
    assert sample_example.agent_id == "agent-1"
    assert sample_example.content_hash == compute_content_hash("Summarize this document", "The document discusses...")
    assert sample_example.chat_messages()[-1] == {"role": "assistant", "content": "The document discusses..."}


@pytest.mark.parametrize(
    "field,value",
    [("quality_score", 100.5), ("quality_score", -1), ("confidence", 1.2), ("confidence", float("nan")),
     ("input_text", ""), ("output_text", ""), ("example_type", "nonsense")],
)
def test_example_ranges_name_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        _example(**{field: value})
    assert field in str(info.value)


def test_content_hash_normalises_case_space_and_unicode():
    assert compute_content_hash("Hello   World", "ＡＢＣ") == compute_content_hash("hello world", "abc")
    assert compute_content_hash("a", "b") != compute_content_hash("a", "c")


@pytest.mark.parametrize(
    "ratios", [{"train": 0.8, "val": 0.1}, {"train": 0.8, "val": 0.1, "test": 0.2}, {"train": 1.0},
               {"train": 0.8, "val": 0.1, "holdout": 0.1}, {"train": 0.9, "val": -0.05, "test": 0.15}],
)
def test_split_ratios_rejected(ratios):
    with pytest.raises(ValueError):
        validate_split_ratios(ratios)


def test_split_ratios_accepted_and_dataset_semver():
    assert validate_split_ratios({"train": 0.7, "val": 0.15, "test": 0.15})["train"] == 0.7
    with pytest.raises(ValidationError) as info:
        Dataset(name="d", version="1.0")
    assert "version" in str(info.value)


def test_job_config_defaults_match_contract():
    cfg = JobConfig()
    assert (cfg.learning_rate, cfg.batch_size, cfg.epochs, cfg.max_seq_length) == (2e-5, 16, 3, 2048)
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == (16, 32.0, 0.05)
    assert cfg.target_modules == ["q_proj", "v_proj"]
    assert cfg.gradient_accumulation_steps == 1 and cfg.warmup_ratio == 0.1 and cfg.precision == "auto"


@pytest.mark.parametrize(
    "field,value", [("learning_rate", 1e-2), ("batch_size", 0), ("epochs", 11), ("lora_rank", 4),
                    ("lora_alpha", 31.5), ("max_seq_length", 100), ("lora_dropout", 0.9)],
)
def test_job_config_ranges(field, value):
    with pytest.raises(ValidationError) as info:
        JobConfig(**{field: value})
    assert field in str(info.value)


def test_enum_aliases_and_case():
    assert JobStatus("TRAINING") is JobStatus.RUNNING
    assert JobStatus("SUCCESS") is JobStatus.COMPLETED
    assert JobType("sft") is JobType.SFT
    assert ModelStage("production") is ModelStage.PRODUCTION
    assert DifficultyLevel.from_score(0.11) is DifficultyLevel.EASY
    assert DifficultyLevel.from_score(0.37) is DifficultyLevel.MEDIUM
    assert DifficultyLevel.from_score(0.74) is DifficultyLevel.HARD
    assert PatternConfidence.from_score(0.4) is None
    assert PatternConfidence.from_score(0.95) is PatternConfidence.HIGH


def test_model_artifact_semver_and_types(sample_artifact):
    assert sample_artifact.stage is ModelStage.DEVELOPMENT
    assert {t.value for t in ModelType} == {"BASE", "FINE_TUNED", "LORA_ADAPTER", "DISTILLED", "REWARD_MODEL"}
    with pytest.raises(ValidationError):
        ModelArtifact(name="m", version="v1", model_type=ModelType.BASE)


def test_reward_and_preference_ranges():
    with pytest.raises(ValidationError):
        RewardSignal(quality_score=120)
    with pytest.raises(ValidationError):
        PreferencePair(prompt="p", chosen="", rejected="r")
    assert RLHFConfig().algorithm == "dpo" and RLHFConfig().max_kl_divergence == 0.05

"""``RLHFConfig.reward_mode`` is read: it decides the score that ranks two answers to one goal, hence which answer
an RLHF job's preference pairs prefer (``pipeline``: L06's quality; ``multi_objective``: quality, latency and cost).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from L07_learning.models import ExampleSource, JobConfig, L07Error, TrainingExample, TrainingJob
from L07_learning.models.error_codes import L07ErrorCode
from L07_learning.models.training_job import JobType
from L07_learning.services.ingestion.rewards import answer_scores

CACHE = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))


def _answers(goals: int = 24) -> list[TrainingExample]:
    """Per goal: a thorough answer (q 90) that is slow and dear, and a quick cheap one (q 75)."""
    out = []
    for g in range(goals):
        for kind, q, latency, cost in (("thorough", 90.0, 3000.0, 0.9), ("quick", 75.0, 200.0, 0.1)):
            out.append(TrainingExample(
                example_id=f"g{g:02d}-{kind}", execution_id=f"exec-g{g:02d}-{kind}",
                source_type=ExampleSource.EXECUTION_TRACE, input_text=f"Plan the trip number {g} to the coast",
                output_text=f"{kind} plan {g}", quality_score=q, confidence=0.9,
                metadata={"agent_id": "a", "task_type": "travel", "latency_ms": latency, "token_cost": cost},
            ))
    return out


def test_reward_mode_changes_the_score_and_the_preferred_answer() -> None:
    from L07_learning.models import RLHFConfig
    from L07_learning.services.jobs.rlhf import preference_pairs

    examples = _answers(2)
    quality = answer_scores(examples, "pipeline")
    composite = answer_scores(examples, "multi_objective", latency_target_ms=1000, token_budget=1.0)
    assert quality["g00-thorough"] == 90.0 and quality["g00-quick"] == 75.0
    # 0.5*0.90 + 0.3*(1-3) + 0.2*(1-0.9) = -0.43 -> clipped to 0; 0.5*0.75 + 0.3*0.8 + 0.2*0.9 = 0.795
    assert composite["g00-thorough"] == 0.0 and composite["g00-quick"] == pytest.approx(79.5)

    by_quality = preference_pairs(examples, RLHFConfig(reward_mode="pipeline"))
    by_composite = preference_pairs(examples, RLHFConfig(reward_mode="multi_objective"))
    assert [p.chosen_example_id for p in by_quality] == ["g00-thorough", "g01-thorough"]
    assert [p.chosen_example_id for p in by_composite] == ["g00-quick", "g01-quick"]
    assert [p.margin for p in by_quality] == [15.0, 15.0]
    assert [p.margin for p in by_composite] == [pytest.approx(79.5)] * 2


def test_multi_objective_without_latency_or_cost_is_a_clear_error() -> None:
    bare = TrainingExample(example_id="bare", source_type=ExampleSource.EXECUTION_TRACE, input_text="x",
                           output_text="y", quality_score=80, metadata={"task_type": "t", "latency_ms": 10})
    with pytest.raises(L07Error) as err:
        answer_scores([bare], "multi_objective")
    assert err.value.code == L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH and "bare" in err.value.message
    with pytest.raises(L07Error) as err:
        answer_scores([bare], "bogus")
    assert err.value.code == L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, cache_dir=CACHE)


async def test_an_rlhf_job_builds_its_pairs_by_its_reward_mode(settings, sqlite_db, tiny_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.services.dataset_curator import DatasetCurator
    from L07_learning.services.jobs import rlhf
    from L07_learning.services.jobs.context import RunnerContext
    from L07_learning.services.model_registry import ModelRegistry

    registry = ModelRegistry(db=sqlite_db, settings=settings)
    curator = DatasetCurator(db=sqlite_db, settings=settings)
    base = await registry.register_base(str(tiny_model), name="tiny-llama")
    dataset = await curator.create_dataset("trips", _answers(), min_examples=1)
    ctx = RunnerContext(db=sqlite_db, settings=settings, registry=registry, curator=curator, workdir=tmp_path)
    chosen = {}
    for mode in ("pipeline", "multi_objective"):
        config = JobConfig(extra={"rlhf": {"reward_mode": mode}})
        job = TrainingJob(job_type=JobType.RLHF, config=config, dataset_id=dataset.dataset_id,
                          dataset_version=dataset.version, base_model_id=base.model_id)
        spec = await rlhf.prepare(job, config, ctx)
        assert spec["rlhf"]["reward_mode"] == mode
        chosen[mode] = {p["chosen_example_id"].split("-")[1] for p in spec["train_pairs"] + spec["val_pairs"]}
    assert chosen == {"pipeline": {"thorough"}, "multi_objective": {"quick"}}

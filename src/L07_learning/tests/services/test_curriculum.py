"""Curriculum planner: difficulty signals, cumulative stages, the SFT ordering, and the model-loss signal."""

from __future__ import annotations

import math
import random

import pytest

from L07_learning.models import DifficultyLevel, ExampleSource, JobConfig, L07ErrorCode, TrainingExample
from L07_learning.models.curriculum import NEUTRAL_DIFFICULTY, difficulty
from L07_learning.observability.metrics import ERRORS
from L07_learning.services.curriculum_planner import (
    CurriculumConfig,
    CurriculumPlanner,
    build_stages,
    order_examples,
    plan_epochs,
    score_examples,
)


def make_example(i: int, steps: int, tools: int, quality: float, outcome: str = "SUCCESS", task: str = "booking",
                 answer: str = "done") -> TrainingExample:
    return TrainingExample(
        example_id=f"ex-{i:03d}", source_type=ExampleSource.EXECUTION_TRACE, input_text=f"request {i}",
        output_text=answer, quality_score=quality, execution_length=steps, labels=[f"outcome:{outcome}"],
        expected_actions=[{"step": s + 1, "action": f"tool{s % max(tools, 1)}"} for s in range(steps)],
        metadata={"agent_id": "agent-1", "task_type": task},
    )


def mixed_examples(n: int = 60, seed: int = 0) -> list[TrainingExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        steps = rng.randint(0, 10)
        out.append(make_example(i, steps, min(steps, rng.randint(1, 5)), rng.uniform(50, 100),
                                "SUCCESS" if rng.random() < 0.75 else "FAILURE"))
    return out


def test_difficulty_follows_the_contract_signals() -> None:
    easy = make_example(1, 1, 1, 95)
    medium = make_example(2, 3, 3, 75)
    hard = make_example(3, 8, 5, 50)
    failed = make_example(4, 3, 3, 75, outcome="FAILURE")
    scores = score_examples([easy, medium, hard, failed])
    d = {k: v.difficulty for k, v in scores.items()}
    assert d["ex-001"] < d["ex-002"] < d["ex-003"]
    assert d["ex-004"] > d["ex-002"]  # same trace, but it failed
    assert scores["ex-001"].level == DifficultyLevel.EASY and scores["ex-003"].level == DifficultyLevel.HARD
    assert set(scores["ex-003"].signals) == {"trace_length", "tool_steps", "quality", "failure_history"}
    assert scores["ex-003"].signals["trace_length"] == pytest.approx(0.8)
    assert scores["ex-003"].signals["tool_steps"] == pytest.approx(1.0)
    # with no failure anywhere, the score is exactly the contract's formula (§5.3 check values)
    clean = score_examples([easy, medium, hard])
    assert [round(clean[i].difficulty, 2) for i in ("ex-001", "ex-002", "ex-003")] == [0.11, 0.37, 0.74]


def test_one_difficulty_formula_for_extraction_and_planning() -> None:
    examples = [make_example(i, steps, min(steps, 5), q) for i, (steps, q) in enumerate([(1, 95), (3, 75), (12, 0)])]
    planned = score_examples(examples)
    # The extractor stores models.curriculum.difficulty; the planner's base (no failure, no loss) is the same number.
    assert [planned[e.example_id].difficulty for e in examples] == [
        difficulty(e.execution_length, len({a["action"] for a in e.expected_actions}), e.quality_score) for e in examples]
    # Contract §5.3 edge handling: clamped to [0, 1], 0.5 when it cannot be computed.
    assert difficulty(50, 50, -100.0) == 1.0 and difficulty(0, 0, 200.0) == 0.0
    assert difficulty(3, 3, math.nan) == NEUTRAL_DIFFICULTY == difficulty(None, 3, 75.0)  # type: ignore[arg-type]


def test_model_loss_signal_reorders_by_rank() -> None:
    a, b = make_example(1, 2, 2, 80), make_example(2, 2, 2, 80)
    without = score_examples([a, b])
    assert without["ex-001"].difficulty == without["ex-002"].difficulty
    with_loss = score_examples([a, b], losses={"ex-001": 5.0, "ex-002": 1.0})
    assert with_loss["ex-001"].difficulty > with_loss["ex-002"].difficulty
    assert with_loss["ex-001"].signals["model_loss"] == 1.0 and with_loss["ex-002"].signals["model_loss"] == 0.0


def test_default_stages_are_cumulative_easy_to_all() -> None:
    examples = mixed_examples()
    stages = build_stages(examples, JobConfig(epochs=3))
    assert [s.levels for s in stages] == [[DifficultyLevel.EASY], [DifficultyLevel.EASY, DifficultyLevel.MEDIUM],
                                          [DifficultyLevel.EASY, DifficultyLevel.MEDIUM, DifficultyLevel.HARD]]
    assert [s.epochs for s in stages] == [1, 1, 1]
    assert [s.target_mean_difficulty for s in stages] == [0.2, 0.4, 0.6]
    assert set(stages[0].example_ids) < set(stages[1].example_ids) <= set(stages[2].example_ids)
    assert sorted(stages[2].example_ids) == sorted(e.example_id for e in examples)
    scores = {k: v.difficulty for k, v in score_examples(examples).items()}
    assert all(scores[i] < 0.33 for i in stages[0].example_ids)


def test_quantile_banding_hits_the_target_mix() -> None:
    examples = mixed_examples(100)
    stages = build_stages(examples, JobConfig(epochs=3), CurriculumConfig(banding="quantile"))
    assert [len(s.example_ids) for s in stages] == [30, 80, 100]


def test_invalid_schedule_falls_back_to_default_and_is_counted() -> None:
    before = ERRORS.labels(error_code=L07ErrorCode.CURRICULUM_SCHEDULE_INVALID.value, error_type="curriculum")._value.get()
    stages = build_stages(mixed_examples(), JobConfig(epochs=4), CurriculumConfig(stage_epochs=[1, 1]))
    assert [s.epochs for s in stages] == [1, 1, 2]
    after = ERRORS.labels(error_code=L07ErrorCode.CURRICULUM_SCHEDULE_INVALID.value, error_type="curriculum")._value.get()
    assert after == before + 1
    custom = build_stages(mixed_examples(), JobConfig(epochs=4), CurriculumConfig(stage_epochs=[2, 1, 1]))
    assert [s.epochs for s in custom] == [2, 1, 1]


def test_order_examples_modes() -> None:
    examples = mixed_examples()
    scores = {k: v.difficulty for k, v in score_examples(examples).items()}

    ordered = plan_epochs(examples, JobConfig(epochs=2, curriculum="ordered"))
    assert len(ordered) == 2
    assert [scores[e.example_id] for e in ordered[0]] == sorted(scores[e.example_id] for e in examples)

    staged = plan_epochs(examples, JobConfig(epochs=3, curriculum="staged", seed=7))
    assert len(staged[0]) < len(staged[1]) <= len(staged[2]) == len(examples)
    assert all(scores[e.example_id] < 0.33 for e in staged[0])
    assert plan_epochs(examples, JobConfig(epochs=3, curriculum="staged", seed=7)) == staged  # deterministic
    assert order_examples(examples, JobConfig(epochs=3, curriculum="staged", seed=7)) == [e for ep in staged for e in ep]

    plain = plan_epochs(examples, JobConfig(epochs=2, curriculum="none", seed=1))
    assert all(sorted(e.example_id for e in ep) == sorted(e.example_id for e in examples) for ep in plain)
    assert plain[0] != plain[1]  # reshuffled per epoch
    assert plan_epochs(examples, JobConfig(epochs=1, use_curriculum=False, shuffle=False))[0] == examples


def test_competence_pacing_starts_on_the_easy_end() -> None:
    examples = mixed_examples(100)
    scores = {k: v.difficulty for k, v in score_examples(examples).items()}
    ranked = sorted(scores.values())
    epochs = plan_epochs(examples, JobConfig(epochs=2), CurriculumConfig(pacing="root", initial_competence=0.2))
    assert [len(ep) for ep in epochs] == [100, 100]
    first = [scores[e.example_id] for e in epochs[0][:10]]
    assert max(first) <= ranked[int(0.35 * 100)]  # only the easiest third is eligible at the start
    late = {e.example_id for e in epochs[1][-50:]}
    assert max(scores[i] for i in late) > ranked[int(0.8 * 100)]  # the hard end is reached later


async def test_build_path_matches_job_epochs() -> None:
    planner = CurriculumPlanner()
    path = await planner.build_path(mixed_examples(), "ds-1", "1.0.0", JobConfig(epochs=5))
    assert path.total_epochs == 5 and sum(s.epochs for s in path.stages) == 5
    assert path.pacing == "staged" and "model_loss" not in path.difficulty_signals


@pytest.mark.slow
async def test_model_loss_from_a_real_forward_pass(tmp_path, settings) -> None:
    from L07_learning.pipelines.base_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny", seed=0)
    examples = [make_example(1, 1, 1, 90, answer="ok"),
                make_example(2, 1, 1, 90, answer="x7#Qz! 9kW@ pL0^ vV3& mN8* " * 4)]
    planner = CurriculumPlanner()
    losses = await planner.model_losses(model_dir, examples)
    assert set(losses) == {"ex-001", "ex-002"} and all(math.isfinite(v) and v > 0 for v in losses.values())
    path = await planner.build_path(examples, "ds", "1.0.0", JobConfig(epochs=3), losses=losses)
    assert "model_loss" in path.difficulty_signals
    breakdown = planner.difficulties(examples, losses)
    harder = max(losses, key=losses.__getitem__)
    assert breakdown[harder].signals["model_loss"] == 1.0


async def test_plan_for_a_stored_dataset(db, settings) -> None:
    from L07_learning.models import L07Error
    from L07_learning.services.dataset_curator import DatasetCurator

    curator = DatasetCurator(db=db)
    examples = [e.model_copy(update={"input_text": f"book trip number {i} to city {i * 7}",
                                     "output_text": f"booked itinerary {i} with {i % 4} stops"})
                for i, e in enumerate(mixed_examples(80))]
    dataset = await curator.create_dataset("curriculum-test", examples, min_examples=1)
    planner = CurriculumPlanner(curator=curator)
    path = await planner.plan(dataset.dataset_id, job_config=JobConfig(epochs=3))
    train_ids = set(dataset.splits["train"])
    assert path.dataset_id == dataset.dataset_id and path.dataset_version == dataset.version
    assert set(path.stages[-1].example_ids) == train_ids
    assert set(path.stages[0].example_ids) < train_ids
    with pytest.raises(L07Error) as exc:
        await planner.plan("no-such-dataset")
    assert exc.value.code == L07ErrorCode.DATASET_NOT_FOUND


async def test_cli_curriculum_plan(l07_home, settings) -> None:
    import json
    import os
    import subprocess
    import sys

    from L07_learning.services.dataset_curator import DatasetCurator
    from L07_learning.store.db import close_all

    curator = DatasetCurator()
    examples = [e.model_copy(update={"input_text": f"plan route {i} via hub {i * 3}", "output_text": f"route {i} ready"})
                for i, e in enumerate(mixed_examples(50))]
    dataset = await curator.create_dataset("cli-curriculum", examples, min_examples=1)
    await close_all()
    out = subprocess.run([sys.executable, "-m", "L07_learning.cli.main", "curriculum", "plan", dataset.dataset_id,
                          "--epochs", "4", "--banding", "quantile", "--json"],
                         capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert out.returncode == 0, out.stderr
    path = json.loads(out.stdout)
    assert path["total_epochs"] == 4 and [s["epochs"] for s in path["stages"]] == [1, 1, 2]
    assert len(path["stages"][-1]["example_ids"]) == len(dataset.splits["train"])
    bad = subprocess.run([sys.executable, "-m", "L07_learning.cli.main", "curriculum", "plan", "nope", "--json"],
                         capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "E7028"

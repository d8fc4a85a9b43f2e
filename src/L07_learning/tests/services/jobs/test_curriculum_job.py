"""``use_curriculum`` reaches the trainer: an SFT job's spec carries the planner's order, and the batches the Trainer
actually trains on follow it (staged: easy examples first, all of them only in the last epoch); with the setting off
the Trainer's own shuffled epochs run over every example.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from L07_learning.models import DifficultyLevel, ExampleSource, JobConfig, L07Error, TrainingExample, TrainingJob
from L07_learning.models.error_codes import L07ErrorCode

CACHE = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
TINY = dict(learning_rate=1e-3, batch_size=4, lora_rank=8, lora_alpha=16, max_seq_length=256, epochs=3,
            gradient_checkpointing=False, eval_strategy="epoch", save_strategy="no", early_stopping_patience=0,
            warmup_ratio=0.0)
CASE = re.compile(r"case (\d+) ")


def _examples(n: int = 40) -> list[TrainingExample]:
    """Examples whose difficulty spreads over all three bands: k tool steps, k distinct-ish tools, quality falling."""
    out = []
    for i in range(n):
        k = 1 + (i * 7) % 10
        tools = [f"tool_{j % 5}" for j in range(k)]
        out.append(TrainingExample(
            example_id=f"ex-{i:03d}", source_type=ExampleSource.EXECUTION_TRACE,
            input_text=f"case {i:03d} needs {k} steps", output_text=" ".join(tools),
            quality_score=100 - 4 * k, confidence=0.9, execution_length=k,
            expected_actions=[{"tool": t} for t in tools], labels=["outcome:SUCCESS"],
            metadata={"agent_id": "a", "task_type": "tools"},
        ))
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, cache_dir=CACHE)


@pytest.fixture
async def ctx(settings, sqlite_db, tiny_model: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from L07_learning.services.dataset_curator import DatasetCurator
    from L07_learning.services.jobs.context import RunnerContext
    from L07_learning.services.model_registry import ModelRegistry

    registry = ModelRegistry(db=sqlite_db, settings=settings)
    curator = DatasetCurator(db=sqlite_db, settings=settings)
    base = await registry.register_base(str(tiny_model), name="tiny-llama")
    dataset = await curator.create_dataset("curriculum", _examples(), min_examples=1)
    context = RunnerContext(db=sqlite_db, settings=settings, registry=registry, curator=curator, workdir=tmp_path / "job")
    return context, base, dataset


def _job(base, dataset, **config) -> tuple[TrainingJob, JobConfig]:  # type: ignore[no-untyped-def]
    cfg = JobConfig(**{**TINY, **config})
    return TrainingJob(config=cfg, dataset_id=dataset.dataset_id, dataset_version=dataset.version,
                       base_model_id=base.model_id), cfg


def _train_fed(spec: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], dict]:  # type: ignore[type-arg]
    """Run the job's pipeline entry in this process; return the case numbers of the examples in the order the Trainer
    trained on them (read from the token ids of each training batch), and the result."""
    from transformers import AutoTokenizer

    from L07_learning.pipelines import answer_loss, sft_pipeline

    tok = AutoTokenizer.from_pretrained(spec["base_model_dir"])
    fed: list[int] = []
    original = answer_loss.AnswerLossSFTTrainer.training_step

    def recording_step(self, model, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
            fed.append(int(CASE.search(tok.decode(ids[mask.bool()])).group(1)))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(answer_loss.AnswerLossSFTTrainer, "training_step", recording_step)
    result = sft_pipeline.entry(spec, lambda kind, payload: None, lambda: False)
    return fed, result


def _case(row: list[dict[str, str]]) -> int:
    return int(CASE.search(row[-2]["content"]).group(1))


async def test_curriculum_on_feeds_the_planners_order_to_the_trainer(ctx, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.services.curriculum_planner import score_examples
    from L07_learning.services.jobs import sft

    context, base, dataset = ctx
    job, cfg = _job(base, dataset)  # use_curriculum defaults to on
    assert cfg.use_curriculum
    spec = await sft.prepare(job, cfg, context)
    order = spec["train_order"]
    assert order is not None and len(order) == 3
    rows = spec["train_rows"]
    planned = [_case(rows[i]) for epoch in order for i in epoch]

    fed, result = _train_fed(spec, monkeypatch)
    assert fed == planned  # the trainer saw exactly the planner's stream, in order
    levels = {int(k[3:]): b.level for k, b in score_examples(dataset.split_examples("train")).items()}
    first_epoch = fed[: len(order[0])]
    assert {levels[c] for c in first_epoch} == {DifficultyLevel.EASY}  # stage 1: the easy band only
    assert sorted(fed[-len(order[-1]):]) == sorted(_case(r) for r in rows)  # the last stage trains on all
    metrics = result["metrics"]
    assert metrics["curriculum"]["epoch_sizes"] == [len(e) for e in order]
    # evaluation still at the end of each planned epoch (the step holding its last example), not once per pass
    ends = [-(-sum(len(e) for e in order[: i + 1]) // cfg.batch_size) for i in range(3)]
    assert [e["step"] for e in metrics["evals"] if e["step"] > 0] == ends


async def test_curriculum_off_leaves_the_trainers_shuffled_epochs(ctx, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.services.jobs import sft

    context, base, dataset = ctx
    job, cfg = _job(base, dataset, use_curriculum=False, epochs=2)
    spec = await sft.prepare(job, cfg, context)
    assert spec["train_order"] is None
    rows = spec["train_rows"]
    fed, result = _train_fed(spec, monkeypatch)
    n = len(rows)
    assert len(fed) == 2 * n
    everything = sorted(_case(r) for r in rows)
    assert sorted(fed[:n]) == everything and sorted(fed[n:]) == everything  # every example, every epoch
    assert fed[:n] != [_case(r) for r in rows] and fed[:n] != fed[n:]  # shuffled, differently per epoch
    assert result["metrics"]["curriculum"] is None


def test_a_plan_that_does_not_fit_its_rows_is_refused() -> None:
    from L07_learning.pipelines.planned_epochs import planned_stream

    with pytest.raises(L07Error) as err:
        planned_stream([["a"], ["b"]], [[0, 1], [2]])
    assert err.value.code == L07ErrorCode.DATASET_LOADING_FAILURE
    with pytest.raises(L07Error):
        planned_stream([["a"]], [[]])

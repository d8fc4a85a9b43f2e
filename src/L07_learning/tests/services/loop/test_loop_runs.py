"""The loop's trigger -> dataset -> job -> run path and its breaker, on real jobs: the policy names a tiny base model
registered in the same database, submission is the engine's own (config checks, idempotency key), and failing runs
fail for real reasons (a cancelled job; a recipe that the training process refuses for this base)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from L07_learning.models.training_job import JobStatus
from L07_learning.services.learning_service import LearningService
from L07_learning.services.loop import LearningLoop, PolicySet
from L07_learning.services.loop.datasets import version_group
from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.loop import LoopRepository
from L07_learning.tests.factories.curation import make_example

CACHE = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
# Small, quick jobs for the 2-layer tiny model.
TINY_CONFIG = {"batch_size": 4, "lora_rank": 8, "max_seq_length": 256, "epochs": 1, "eval_strategy": "no",
               "early_stopping_patience": 0, "gradient_checkpointing": False}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, cache_dir=CACHE)


async def _loop(settings, db: Database, tiny_model: Path, config: dict) -> LearningLoop:  # type: ignore[no-untyped-def]
    service = LearningService.build(settings, db)
    base = await service.registry.register_base(str(tiny_model), name="tiny-llama")
    policies = PolicySet.model_validate({"policies": [
        {"name": "qa", "group": {"task_type": "summarization"}, "trigger": {"min_new_examples": 8, "cooldown": 0},
         "training": {"kind": "sft", "base_model_id": base.model_id, "config": config}}]})
    return LearningLoop(service, policies, tasks=[], run_worker=False, holder="only")


@pytest.fixture
async def loop(settings, sqlite_db: Database, tiny_model: Path):  # type: ignore[no-untyped-def]
    the_loop = await _loop(settings, sqlite_db, tiny_model, TINY_CONFIG)
    yield the_loop
    await the_loop.close()


async def _accept(db: Database, start: int, n: int) -> None:
    # i % 4 == 0 is the summarization task type in tests/factories/curation.py.
    examples = [make_example(i, status="ACCEPTED") for i in range(start * 4, (start + n) * 4, 4)]
    async with db.session() as session:
        await ExampleRepository(session).add_many(examples)


async def _fail_open_run(loop: LearningLoop) -> None:
    async with loop.db.session() as session:
        (run,) = await LoopRepository(session).open_runs()
    await loop.service.sft_engine.cancel_job(run.job_id)


async def _jobs(loop: LearningLoop) -> list:  # type: ignore[type-arg]
    return list(reversed(await loop.service.sft_engine.list_jobs()))  # oldest first


async def test_trigger_creates_dataset_then_minor_versions_and_queues_jobs(loop: LearningLoop) -> None:
    await _accept(loop.db, 0, 5)
    report = await loop.tick()
    assert report["policies"] == {"qa": "5 new examples"}
    await _accept(loop.db, 5, 5)
    report = await loop.tick()
    assert report["policies"]["qa"].startswith("triggered")
    (job,) = await _jobs(loop)
    assert job.idempotency_key.endswith(":1.0.0") and job.status is JobStatus.PENDING
    assert job.config["model_name"] == "loop-qa" and job.base_model_id == loop.policies.policies[0].training.base_model_id
    assert (await loop.tick())["policies"]["qa"] == "run in progress"

    status = await loop.status()
    (qa,) = status["policies"]
    assert qa["new_examples"] == 0 and qa["group_size"] == 10 and qa["dataset_version"] == "1.0.0"
    assert qa["last_run"]["status"] == "TRAINING" and status["jobs"]["running"] == 1

    await _fail_open_run(loop)
    report = await loop.tick()
    assert list(report["runs"].values()) == ["failed"]
    await _accept(loop.db, 10, 8)
    report = await loop.tick()
    second = (await _jobs(loop))[1]
    assert second.idempotency_key.endswith(":1.1.0")  # MINOR: the new examples appended
    dataset = await loop.service.curator.get_dataset(second.dataset_id)
    assert len(dataset.examples) == 18
    first = await loop.service.curator.get_dataset(dataset.dataset_id, "1.0.0")
    for split, ids in first.splits.items():
        assert set(ids) <= set(dataset.splits[split])  # existing splits kept


async def test_three_failed_runs_open_the_breaker_and_stop_triggers(settings, sqlite_db: Database,
                                                                    tiny_model: Path) -> None:
    # The CPU recipe for SmolLM2 (LoRA on the top 20 blocks) passes submission but the training process refuses it
    # for a 2-layer base (E7036, not retried): every run fails in its job, after spending compute.
    loop = await _loop(settings, sqlite_db, tiny_model, {**TINY_CONFIG, "lora_top_layers": 20})
    try:
        for round_ in range(3):
            await _accept(loop.db, round_ * 8, 8)
            assert (await loop.tick())["policies"]["qa"].startswith("triggered")
            job = await loop.service.sft_engine.run_worker_once()
            assert job is not None and job.status is JobStatus.FAILED and job.error_code == "E7036", job
            assert list((await loop.tick())["runs"].values()) == ["failed"]
        async with loop.db.session() as session:
            repo = LoopRepository(session)
            state = await repo.get_policy("qa")
            runs = await repo.runs("qa")
            spent = await repo.spent(job.completed_at.strftime("%Y-%m-%d"))
        assert state is not None and state.breaker_state == "OPEN" and state.consecutive_failures == 3
        assert [r.status for r in runs] == ["FAILED"] * 3 and {r.error_code for r in runs} == {"E7036"}
        assert spent[0] > 0  # the failed jobs were charged

        await _accept(loop.db, 24, 8)
        assert (await loop.tick())["policies"]["qa"] == "breaker open"
        assert len(await _jobs(loop)) == 3 and await loop.service.sft_engine.run_worker_once() is None
        async with loop.db.session() as session:
            assert await LoopRepository(session).spent(job.completed_at.strftime("%Y-%m-%d")) == spent
        status = await loop.status()
        assert status["policies"][0]["breaker"]["state"] == "OPEN"
        assert "resume" in status["policies"][0]["next_trigger"]
        await loop.resume("qa", actor="ops")
        assert (await loop.tick())["policies"]["qa"].startswith("triggered")
    finally:
        await loop.close()


async def test_run_forever_ingests_a_dropped_file_and_gives_up_the_lease(settings, sqlite_db: Database,
                                                                        sample_cloud_event: dict, tmp_path) -> None:
    watch = tmp_path / "drop"
    the_loop = LearningLoop(LearningService.build(settings, sqlite_db), tasks=[], watch=[watch], tick_s=0.1,
                            settle_s=0.0, holder="runner")
    stop = asyncio.Event()
    task = asyncio.create_task(the_loop.run_forever(stop))
    (watch / "a.jsonl").write_text(json.dumps(sample_cloud_event) + "\n")
    for _ in range(100):
        if (watch / "done" / "a.jsonl.report.json").exists():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert json.loads((watch / "done" / "a.jsonl.report.json").read_text())["ingested"] == 1
    assert (await the_loop.lease.current())["alive"] is False


async def test_a_dataset_version_left_without_a_run_is_trained_within_the_budget(loop: LearningLoop) -> None:
    # A crash came between the dataset version and its run. The recovery path submits that version (no lock held
    # by the tick's own read session), and like a fresh trigger it waits while today's compute budget is spent.
    await _accept(loop.db, 0, 10)
    policy = loop.policies.policies[0]
    await version_group(loop.service.curator, loop.db, policy.dataset_name, policy.group, min_examples=1)
    settings = loop.settings
    loop.settings = settings.model_copy(update={"loop_daily_cpu_budget_s": 0.0})
    assert (await loop.tick())["policies"]["qa"].startswith("daily compute budget spent")
    loop.settings = settings
    report = await loop.tick()
    assert report["policies"]["qa"].startswith("triggered (dataset version without a run (resumed))")
    (job,) = await _jobs(loop)
    assert job.idempotency_key.endswith(":1.0.0")
    async with loop.db.session() as session:
        (run,) = await LoopRepository(session).runs("qa")
    assert run.dataset_version == "1.0.0" and run.job_id == job.job_id

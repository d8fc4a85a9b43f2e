"""The loop's trigger -> dataset -> job -> run path and its breaker, with job submission stubbed (no base model, no
training): what the loop decides and stores, not what the trainer does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from L07_learning.models.training_job import JobStatus, TrainingJob
from L07_learning.services.learning_service import LearningService
from L07_learning.services.loop import LearningLoop, PolicySet
from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.loop import LoopRepository
from L07_learning.tests.curation_data import make_example


@pytest.fixture
async def loop(settings, sqlite_db: Database):  # type: ignore[no-untyped-def]
    policies = PolicySet.model_validate({"policies": [
        {"name": "qa", "group": {"task_type": "summarization"}, "trigger": {"min_new_examples": 8, "cooldown": 0}}]})
    service = LearningService.build(settings, sqlite_db)
    the_loop = LearningLoop(service, policies, tasks=[], run_worker=False, holder="only")
    submitted: list[dict[str, Any]] = []

    async def start_training(dataset_id: str, base_model_id: Any = None, config: Any = None, **kw: Any) -> TrainingJob:
        job = TrainingJob(dataset_id=dataset_id, status=JobStatus.PENDING, config=config.model_dump(mode="json"),
                          idempotency_key=kw["idempotency_key"], job_type=kw["job_type"])
        submitted.append({"dataset_id": dataset_id, **kw, "model_name": config.model_name})
        return await service.sft_engine.lifecycle.submit(job, "test", {})

    service.sft_engine.start_training = start_training  # type: ignore[method-assign]
    the_loop.submitted = submitted  # type: ignore[attr-defined]
    yield the_loop
    await the_loop.close()


async def _accept(db: Database, start: int, n: int) -> None:
    # i % 4 == 0 is the summarization task type in curation_data.
    examples = [make_example(i, status="ACCEPTED") for i in range(start * 4, (start + n) * 4, 4)]
    async with db.session() as session:
        await ExampleRepository(session).add_many(examples)


async def _fail_open_run(loop: LearningLoop) -> None:
    async with loop.db.session() as session:
        (run,) = await LoopRepository(session).open_runs()
    await loop.service.sft_engine.cancel_job(run.job_id)


async def test_trigger_creates_dataset_then_minor_versions_and_queues_jobs(loop: LearningLoop) -> None:
    await _accept(loop.db, 0, 5)
    report = await loop.tick()
    assert report["policies"] == {"qa": "5 new examples"}
    await _accept(loop.db, 5, 5)
    report = await loop.tick()
    assert report["policies"]["qa"].startswith("triggered")
    assert loop.submitted[0]["idempotency_key"].endswith(":1.0.0")
    assert loop.submitted[0]["model_name"] == "loop-qa"
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
    assert loop.submitted[1]["idempotency_key"].endswith(":1.1.0")  # MINOR: the new examples appended
    dataset = await loop.service.curator.get_dataset(loop.submitted[1]["dataset_id"])
    assert len(dataset.examples) == 18
    first = await loop.service.curator.get_dataset(dataset.dataset_id, "1.0.0")
    for split, ids in first.splits.items():
        assert set(ids) <= set(dataset.splits[split])  # existing splits kept


async def test_three_failed_runs_open_the_breaker_and_stop_triggers(loop: LearningLoop) -> None:
    for round_ in range(3):
        await _accept(loop.db, round_ * 8, 8)
        assert (await loop.tick())["policies"]["qa"].startswith("triggered")
        await _fail_open_run(loop)
        await loop.tick()
    async with loop.db.session() as session:
        state = await LoopRepository(session).get_policy("qa")
    assert state is not None and state.breaker_state == "OPEN"
    await _accept(loop.db, 24, 8)
    assert (await loop.tick())["policies"]["qa"] == "breaker open"
    assert len(loop.submitted) == 3
    status = await loop.status()
    assert status["policies"][0]["breaker"]["state"] == "OPEN"
    assert "resume" in status["policies"][0]["next_trigger"]
    await loop.resume("qa", actor="ops")
    assert (await loop.tick())["policies"]["qa"].startswith("triggered")


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

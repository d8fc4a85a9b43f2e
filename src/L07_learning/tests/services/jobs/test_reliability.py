"""Job reliability (issue 22): the claim is heart-beaten through prepare and register, terminal writes need the claim,
a job's output is registered once however often registration runs, the worker outlives database errors, and
``JobConfig.extra`` is allow-listed and bounded. No training here: the job's output is a small model folder."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text

from L07_learning.models import JobConfig, JobStatus, L07Error, ModelArtifact, ModelType, TrainingJob
from L07_learning.models._base import utcnow
from L07_learning.models.error_codes import L07ErrorCode
from L07_learning.models.training_job import JobType
from L07_learning.services.jobs import sft
from L07_learning.services.jobs.context import RunnerContext
from L07_learning.services.jobs.kinds import JOB_KINDS, JobKind
from L07_learning.services.jobs.lifecycle import JobLifecycle
from L07_learning.services.jobs.runner import RESULT_FILE, JobRunner
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.db import Database
from L07_learning.store.repositories.jobs import JobRepository
from L07_learning.store.tables import SqlModel


def _model_dir(path: Path, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8, "seed": seed}))
    (path / "adapter_model.safetensors").write_bytes(bytes((seed + i) % 256 for i in range(2048)))
    return path


async def _base(registry: ModelRegistry, tmp_path: Path) -> ModelArtifact:
    mid = await registry.register_model(ModelArtifact(name="tiny-base", model_type=ModelType.BASE, version="1.0.0"),
                                        source_dir=str(_model_dir(tmp_path / "base", 1)))
    return await registry.get_model(mid)


async def _models_of(db: Database, job_id: str) -> list[str]:
    async with db.session() as s:
        return list((await s.scalars(select(SqlModel.model_id).where(SqlModel.training_job_id == job_id))).all())


async def _validating_job(db: Database, base_id: str, runner: JobRunner, adapter: Path) -> TrainingJob:
    """A job whose training finished (result saved) and whose worker died while it was registering."""
    job = TrainingJob(job_type=JobType.SFT, status=JobStatus.VALIDATING, base_model_id=base_id,
                      config=JobConfig().model_dump(mode="json"), started_at=utcnow())
    async with db.session() as s:
        await JobRepository(s).add(job)
    workdir = runner.workdir(job.job_id)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / RESULT_FILE).write_text(json.dumps({"adapter_dir": str(adapter), "metrics": {"eval_loss": 1.0}}))
    return job


# --- claim ownership ----------------------------------------------------------------------------------------------


async def test_worker_that_lost_its_claim_cannot_finish_the_job(db: Database) -> None:
    w1, w2 = JobLifecycle(db, actor="w1"), JobLifecycle(db, actor="w2")
    job = await w1.submit(TrainingJob(config=JobConfig().model_dump(mode="json")), "tester", {"job_type": "SFT"})
    claimed = await w1.claim(1, utcnow() - timedelta(seconds=60), max_concurrent=3)
    assert claimed is not None
    job = await w1.start(claimed[0], JobConfig(), "cpu")
    # w1 stalls past the stale limit; w2 takes the job over.
    assert (await w2.claim(2, utcnow() + timedelta(seconds=1), max_concurrent=3)) is not None
    for late_write in (w1.fail(job, L07ErrorCode.TRAINING_DIVERGENCE, "nan", 1.0),
                       w1.complete(job, None, {"eval_loss": 1.0}, 1.0),
                       w1.advance(job.job_id, JobStatus.PREPARING_DATA)):
        with pytest.raises(L07Error) as exc:
            await late_write
        assert exc.value.code is L07ErrorCode.CONTAINER_STARTUP_FAILURE
    current = await w2.get(job.job_id)
    assert current.status == JobStatus.INITIALIZING and current.error_code is None
    done = await w2.fail(current, L07ErrorCode.TRAINING_DIVERGENCE, "nan", 1.0)
    assert done.status == JobStatus.FAILED


async def test_claim_is_heartbeaten_through_a_slow_registration(db: Database, settings, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fast = settings.model_copy(update={"worker_heartbeat_s": 0.2, "worker_stale_after_s": 2.0})
    registry = ModelRegistry(db=db, settings=fast)
    base = await _base(registry, tmp_path)
    first = JobRunner(db=db, registry=registry, settings=fast, worker_id="w1")
    second = JobRunner(db=db, registry=registry, settings=fast, worker_id="w2")
    job = await _validating_job(db, base.model_id, first, _model_dir(tmp_path / "adapter", 2))
    registering = asyncio.Event()

    async def slow_register(job: TrainingJob, result: dict, ctx: RunnerContext) -> str | None:
        registering.set()
        await asyncio.sleep(4.0)  # a large artifact being hashed, copied and signed: longer than the stale limit
        return await sft.register(job, result, ctx)

    kind = JOB_KINDS[JobType.SFT]
    monkeypatch.setitem(JOB_KINDS, JobType.SFT, JobKind(kind.entry, kind.prepare, slow_register))
    running = asyncio.create_task(first.run_once())
    await registering.wait()
    polls = []
    for _ in range(6):  # well past the 2 s stale limit while the first worker is still registering
        await asyncio.sleep(0.5)
        polls.append(await second.run_once())
    done = await running
    assert polls == [None] * 6, "a second worker claimed a job whose worker was alive and registering"
    assert done.status == JobStatus.COMPLETED and done.output_model_id
    assert await _models_of(db, job.job_id) == [done.output_model_id]


async def test_registration_is_idempotent_per_job(db: Database, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry = ModelRegistry(db=db, settings=settings)
    base = await _base(registry, tmp_path)
    job = TrainingJob(job_type=JobType.SFT, base_model_id=base.model_id, config=JobConfig().model_dump(mode="json"))
    ctx = RunnerContext(db, settings, registry, None, tmp_path / "work")
    result = {"adapter_dir": str(_model_dir(tmp_path / "adapter", 3)), "metrics": {"eval_loss": 1.0}}
    first = await sft.register(job, result, ctx)
    # The job's first worker died after registering; the worker that takes it over registers again.
    again = await sft.register(job, result, ctx)
    both = await asyncio.gather(sft.register(job, result, ctx), sft.register(job, result, ctx))
    assert again == first and set(both) == {first}
    assert await _models_of(db, job.job_id) == [first]
    assert (await registry.get_model(first)).version == "1.0.0"
    # Another job's output is another model.
    other = job.model_copy(update={"job_id": "job-other"})
    assert await sft.register(other, result, ctx) != first


# --- worker loop --------------------------------------------------------------------------------------------------


async def test_worker_loop_survives_database_errors_with_backoff(sqlite_db: Database, settings) -> None:  # type: ignore[no-untyped-def]
    runner = JobRunner(db=sqlite_db, registry=object(), curator=object(), settings=settings, worker_id="w-1")
    assert await runner.run_once() is None  # connected and idle
    async with sqlite_db.engine.begin() as conn:  # the database fails under the running worker
        await conn.execute(text("DROP TABLE l07_job_events"))
        await conn.execute(text("DROP TABLE l07_training_jobs"))
    stop = asyncio.Event()
    # A handler on the runner's own logger: another test may have configured JSON logging that stops propagation
    # to the root logger caplog listens on.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    runner_log = logging.getLogger("L07_learning.services.jobs.runner")
    runner_log.addHandler(handler)
    loop = asyncio.create_task(runner.run_forever(poll_s=0.05, stop=stop))

    def waits() -> list[float]:
        return [float(m.group(1)) for r in records
                if (m := re.search(r"polling again in ([0-9.]+)s", r.getMessage()))]

    for _ in range(600):  # until four failed rounds, or the worker is gone
        if loop.done() or len(waits()) >= 4:
            break
        await asyncio.sleep(0.05)
    assert not loop.done(), f"the worker died on a database error: {loop.exception() if loop.done() else ''}"
    stop.set()
    await asyncio.wait_for(loop, 10.0)
    runner_log.removeHandler(handler)
    # It kept polling, backing off: the wait doubles per consecutive failure (capped at MAX_ERROR_BACKOFF_S).
    assert waits()[:4] == [0.1, 0.2, 0.4, 0.8]


async def test_stored_job_with_invalid_extra_fails_instead_of_the_worker(db: Database, settings) -> None:  # type: ignore[no-untyped-def]
    config = {**JobConfig().model_dump(mode="json"), "extra": {"nproc_per_node": 64}}
    job = TrainingJob(job_type=JobType.SFT, config=config)  # stored by a release that did not check ``extra``
    async with db.session() as s:
        await JobRepository(s).add(job)
    runner = JobRunner(db=db, registry=object(), curator=object(), settings=settings, worker_id="w1")
    done = await runner.run_once()
    assert done is not None and done.status == JobStatus.FAILED
    assert done.error_code == "E7500" and "nproc_per_node" in (done.error_message or "")


# --- extra ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, words", [
    ({"nproc_per_node": 64}, "from 1 to 8"),
    ({"nproc_per_node": "x"}, "from 1 to 8"),
    ({"nproc_per_node": True}, "from 1 to 8"),
    ({"nproc_per_node": 0}, "from 1 to 8"),
    ({"shell": "rm -rf /"}, "unknown extra key"),
    ({"generation_eval": "no"}, "true or false"),
    ({"rlhf": [1, 2]}, "must be an object"),
    ({"reward_model_id": "x" * 65}, "model id"),
    ({"preference_pairs": "uploaded"}, "built, stored"),
    ({"distillation": {"blob": "x" * 70_000}}, "larger than"),
])
def test_extra_is_allow_listed_and_bounded(extra: dict, words: str) -> None:
    with pytest.raises(ValidationError) as exc:
        JobConfig(extra=extra)
    assert words in str(exc.value)


def test_extra_accepts_what_the_job_kinds_use() -> None:
    cfg = JobConfig(extra={"nproc_per_node": 2, "generation_eval": False, "rlhf": {"beta": 0.1},
                           "reward_model_id": None, "sft_model_id": "m-1", "distillation": {"config": {}},
                           "preference_pairs": "stored"})
    assert cfg.nproc_per_node == 2 and JobConfig().nproc_per_node == 1


def test_submission_rejects_bad_extra_with_e7500() -> None:
    from L07_learning.services.fine_tuning_engine import coerce_config

    with pytest.raises(L07Error) as exc:
        coerce_config({"extra": {"nproc_per_node": 64}})
    assert exc.value.code.value == "E7500" and "nproc_per_node" in exc.value.message


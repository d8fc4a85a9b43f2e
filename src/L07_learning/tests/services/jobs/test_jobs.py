"""Durable training jobs: submission checks, exclusive claims, a full run to a registered adapter, cancellation of a
running job, and a worker killed mid-job whose job the next worker resumes from its checkpoint.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from L07_learning.models import JobConfig, JobStatus, L07Error, ModelType, TrainingJob
from L07_learning.models._base import utcnow
from L07_learning.models.error_codes import L07ErrorCode
from L07_learning.store.db import Database
from L07_learning.store.repositories.jobs import JobRepository
from L07_learning.tests import paths
from L07_learning.tests.factories.sft import tool_examples

CACHE = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
SRC = str(paths.SRC)
# Fast settings for the tiny model: checkpoints every 2 steps so kill/resume has something to resume from. The tiny
# random model does not learn the task in one epoch, so these jobs register their adapter despite the
# no-improvement verdict (tests/services/jobs/test_recipes.py tests the verdict itself).
TINY = dict(learning_rate=1e-3, batch_size=4, lora_rank=8, lora_alpha=16, max_seq_length=256, epochs=1,
            gradient_checkpointing=False, eval_strategy="no", save_strategy="steps", save_checkpoint_every_n_steps=2,
            early_stopping_patience=0, extra={"require_improvement": False})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, cache_dir=CACHE)


@pytest.fixture
async def stack(settings, db: Database, tiny_model: Path):  # type: ignore[no-untyped-def]
    """Engine + registry + curator on one database, with the tiny base registered and a 40-example dataset."""
    from L07_learning.services.dataset_curator import DatasetCurator
    from L07_learning.services.fine_tuning_engine import FineTuningEngine
    from L07_learning.services.model_registry import ModelRegistry

    registry = ModelRegistry(db=db, settings=settings)
    curator = DatasetCurator(db=db, settings=settings)
    base = await registry.register_base(str(tiny_model), name="tiny-llama")
    dataset = await curator.create_dataset("tools", tool_examples(40, seed=0), min_examples=1)
    engine = FineTuningEngine(db=db, registry=registry, curator=curator, settings=settings)
    return engine, registry, base, dataset


async def _outbox_types(db: Database, subject: str) -> list[str]:
    from L07_learning.store.repositories.outbox import OutboxRepository

    async with db.session() as session:
        rows = await OutboxRepository(session).list(limit=1000)
    # newest first from the repository; oldest first here
    return [r["event"]["type"] for r in reversed(rows) if r["event"].get("subject") == subject]


async def test_start_training_validates_at_submission(stack) -> None:  # type: ignore[no-untyped-def]
    engine, _, base, dataset = stack
    started = time.monotonic()
    job = await engine.start_training(dataset.dataset_id, base.model_id, JobConfig(**TINY))
    assert job.status == JobStatus.PENDING and time.monotonic() - started < 30
    stored = await engine.get_job_status(job.job_id)
    assert stored.status == JobStatus.PENDING and stored.dataset_version == dataset.version
    assert stored.metrics["resolved_target_modules"] == ["q_proj", "v_proj"]

    cases = [
        ({**TINY, "learning_rate": 0.5}, dataset.dataset_id, "E7500"),
        ({**TINY, "target_modules": ["c_attn_missing"]}, dataset.dataset_id, "E7036"),
        ({**TINY, "max_seq_length": 4096}, dataset.dataset_id, "E7500"),  # tiny model has 2048 positions
        (TINY, "no-such-dataset", "E7028"),
    ]
    for config, dataset_id, code in cases:
        with pytest.raises(L07Error) as err:
            await engine.start_training(dataset_id, base.model_id, config)
        assert err.value.code.value == code
    with pytest.raises(L07Error) as err:
        await engine.get_job_status("no-such-job")
    assert err.value.code == L07ErrorCode.TRAINING_JOB_NOT_FOUND
    assert [j.job_id for j in await engine.list_jobs()] == [job.job_id]  # refused submissions stored nothing


async def test_claims_are_exclusive_across_concurrent_workers(db: Database) -> None:
    async with db.session() as session:
        repo = JobRepository(session)
        for _ in range(3):
            await repo.add(TrainingJob(config=JobConfig().model_dump(mode="json")))

    async def claim(worker: str):  # type: ignore[no-untyped-def]
        async with db.session() as session:
            got = await JobRepository(session).claim(worker, 1, utcnow() - timedelta(seconds=60))
            return got[0].job_id if got else None

    claimed = await asyncio.gather(*(claim(f"w{i}") for i in range(4)))
    won = [c for c in claimed if c]
    assert len(won) == 3 and len(set(won)) == 3 and claimed.count(None) == 1


async def test_stale_job_is_claimable_again_but_live_one_is_not(db: Database) -> None:
    async with db.session() as session:
        repo = JobRepository(session)
        job = await repo.add(TrainingJob(config=JobConfig().model_dump(mode="json")))
        await repo.claim("w1", 1, utcnow() - timedelta(seconds=60))
        await repo.update(job.job_id, JobStatus.INITIALIZING)
    async with db.session() as session:
        assert await JobRepository(session).claim("w2", 2, utcnow() - timedelta(seconds=60)) is None
    async with db.session() as session:  # w1's heartbeat is now older than the stale limit
        got = await JobRepository(session).claim("w2", 2, utcnow() + timedelta(seconds=1))
    assert got is not None and got[1] == JobStatus.INITIALIZING
    async with db.session() as session:
        with pytest.raises(L07Error):  # w1 finds out it lost the job at its next heartbeat
            await JobRepository(session).heartbeat(job.job_id, "w1")


async def test_each_transition_writes_state_events_audit_and_outbox_in_one_transaction(db: Database) -> None:
    from L07_learning.services.jobs.lifecycle import JobLifecycle
    from L07_learning.store.repositories.audit import list_audit

    lifecycle = JobLifecycle(db, actor="w1")
    job = await lifecycle.submit(TrainingJob(config=JobConfig().model_dump(mode="json")), "tester", {"job_type": "SFT"})
    with pytest.raises(L07Error):  # PENDING -> FAILED is not in the state machine: nothing of it may be written
        await lifecycle.fail(job, L07ErrorCode.TRAINING_DIVERGENCE, "nan", 1.0)
    assert await _outbox_types(db, job.job_id) == []
    claimed = await lifecycle.claim(1, utcnow() - timedelta(seconds=60), max_concurrent=1)
    assert claimed is not None and claimed[1] == JobStatus.PENDING
    job = await lifecycle.start(claimed[0], JobConfig(), "cpu")
    job = await lifecycle.fail(job, L07ErrorCode.TRAINING_DIVERGENCE, "nan", 1.0)
    assert job.status == JobStatus.FAILED and job.error_code == "E7033"
    async with db.session() as session:
        events = await JobRepository(session).events(job.job_id, ["status"])
        audits, _ = await list_audit(session, resource_id=job.job_id)
        worker, _, _ = await JobRepository(session).worker_of(job.job_id)
    assert [e["payload"]["status"] for e in events] == ["PENDING", "INITIALIZING", "FAILED"]
    assert sorted(a["action"] for a in audits) == ["training_job.failed", "training_job.initializing", "training_job.submit"]
    assert await _outbox_types(db, job.job_id) == ["com.agentic.learning.training_job_started",
                                                   "com.agentic.learning.training_job_completed"]
    assert worker is None  # the terminal transition also released the claim


def test_retry_policy_follows_the_contract() -> None:
    from L07_learning.services.jobs.retry import retry_config

    job = TrainingJob()
    cfg = JobConfig(batch_size=8, gradient_accumulation_steps=1, learning_rate=1e-4)
    oom = retry_config(L07ErrorCode.GPU_OUT_OF_MEMORY, cfg, job, {})
    assert (oom.batch_size, oom.gradient_accumulation_steps) == (4, 3)
    assert retry_config(L07ErrorCode.GPU_OUT_OF_MEMORY, cfg.model_copy(update={"batch_size": 1}), job, {}) is None
    nan = retry_config(L07ErrorCode.TRAINING_DIVERGENCE, cfg, job, {})
    assert nan.learning_rate == pytest.approx(5e-5)
    assert retry_config(L07ErrorCode.TRAINING_DIVERGENCE, cfg, job, {"E7033": 1}) is None  # once only
    assert retry_config(L07ErrorCode.DATASET_LOADING_FAILURE, cfg, job, {}) is None
    assert retry_config(L07ErrorCode.GPU_OUT_OF_MEMORY, cfg, TrainingJob(retry_count=3), {}) is None


def test_every_job_type_has_a_kind() -> None:
    from L07_learning.models import JobType
    from L07_learning.services.jobs.kinds import JOB_KINDS

    assert set(JOB_KINDS) == set(JobType)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_job_runs_in_a_subprocess_and_registers_the_adapter(stack, db: Database) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.observability.metrics import REGISTRY

    engine, registry, base, dataset = stack
    before = REGISTRY.get_sample_value("l07_training_jobs_total", {"job_type": "SFT", "status": "COMPLETED"}) or 0
    job = await engine.start_training(dataset.dataset_id, base.model_id, {**TINY, "eval_strategy": "epoch",
                                                                          "save_strategy": "epoch"})
    done = await engine.run_worker_once(progress_interval_s=1.0)
    assert done.job_id == job.job_id and done.status == JobStatus.COMPLETED, done.error_message
    m = done.metrics
    assert m["eval_loss"] < m["initial_eval_loss"] and m["tokens_per_second"] > 0
    assert "eval_accuracy" in m and "base_accuracy" in m  # measured by generation on the test split

    model = await registry.get_model(done.output_model_id)
    assert model.model_type == ModelType.LORA_ADAPTER
    assert (model.parent_model_id, model.training_job_id, model.dataset_id, model.dataset_version) == (
        base.model_id, job.job_id, dataset.dataset_id, dataset.version)
    adapter_dir = Path(await registry.local_path(model.model_id))
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()

    events = await engine.job_events(job.job_id)
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, m["global_step"] + 1))
    statuses = [e["payload"]["status"] for e in events if e["kind"] == "status" and "status" in e["payload"]]
    assert statuses == ["PENDING", "INITIALIZING", "PREPARING_DATA", "RUNNING", "VALIDATING", "COMPLETED"]
    types = await _outbox_types(db, job.job_id)
    assert types[0] == "com.agentic.learning.training_job_started"
    assert types[-1] == "com.agentic.learning.training_job_completed"
    assert "com.agentic.learning.training_progress_updated" in types
    after = REGISTRY.get_sample_value("l07_training_jobs_total", {"job_type": "SFT", "status": "COMPLETED"})
    assert after == before + 1
    assert await engine.run_worker_once() is None  # queue empty


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_cancel_stops_a_running_job_within_seconds(stack, db: Database) -> None:  # type: ignore[no-untyped-def]
    engine, _, base, dataset = stack
    job = await engine.start_training(dataset.dataset_id, base.model_id, {**TINY, "epochs": 10})
    worker = asyncio.create_task(engine.run_worker_once(cancel_grace_s=5.0))
    deadline = time.monotonic() + 240
    while not await engine.job_events(job.job_id, ["step"]):
        assert time.monotonic() < deadline and not worker.done(), "job never started training"
        await asyncio.sleep(0.5)
    asked = time.monotonic()
    await engine.cancel_job(job.job_id)
    done = await asyncio.wait_for(worker, timeout=60)
    assert done.status == JobStatus.CANCELLED and time.monotonic() - asked < 30
    steps = await engine.job_events(job.job_id, ["step"])
    assert steps[-1]["step"] < steps[-1]["payload"]["total_steps"]
    await engine.cancel_job(job.job_id)  # idempotent on a terminal job
    assert (await engine.get_job_status(job.job_id)).status == JobStatus.CANCELLED
    assert (await _outbox_types(db, job.job_id))[-1] == "com.agentic.learning.training_job_completed"


async def test_cancel_of_a_pending_job_is_immediate(stack) -> None:  # type: ignore[no-untyped-def]
    engine, _, base, dataset = stack
    job = await engine.start_training(dataset.dataset_id, base.model_id, TINY)
    await engine.cancel_job(job.job_id)
    assert (await engine.get_job_status(job.job_id)).status == JobStatus.CANCELLED
    assert await engine.run_worker_once() is None


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_killed_worker_leaves_a_job_the_next_worker_resumes(stack, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine, _, base, dataset = stack
    # Enough steps that the first checkpoint lands well before the last one, even when a loaded machine lets the
    # worker run several steps between two polls.
    job = await engine.start_training(dataset.dataset_id, base.model_id, {**TINY, "epochs": 10})
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "L07_DATABASE_URL": str(engine.db.url), "L07_HOME": str(settings.home),
           "L07_WORKER_HEARTBEAT_S": "0.5", "L07_WORKER_STALE_AFTER_S": "3"}
    worker = subprocess.Popen([sys.executable, "-m", "L07_learning.cli.main", "worker", "--once"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (await engine.get_job_status(job.job_id)).checkpoint_location:
            assert worker.poll() is None and time.monotonic() < deadline, "worker ended before a checkpoint"
            await asyncio.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    killed = await engine.get_job_status(job.job_id)
    assert killed.status == JobStatus.RUNNING  # nobody marked it: the worker died
    last_step_before = max(e["step"] for e in await engine.job_events(job.job_id, ["step"]))

    monkeypatch.setenv("L07_WORKER_STALE_AFTER_S", "3")
    from L07_learning.settings import get_settings, reset_settings

    reset_settings()
    engine.settings = get_settings()
    await asyncio.sleep(3.5)
    done = await engine.run_worker_once()
    assert done is not None and done.job_id == job.job_id
    assert done.status == JobStatus.COMPLETED, done.error_message
    events = await engine.job_events(job.job_id)
    assert any(e["kind"] == "resumed" for e in events) and done.retry_count == 1
    resumed_from = done.metrics["resumed_from_step"]
    # Resumed mid-run from a checkpoint (not from scratch); a checkpoint may be newer than the last step event
    # the dying worker managed to store.
    assert 0 < resumed_from < done.metrics["global_step"] and last_step_before > 0
    steps_after = [e["step"] for e in events if e["kind"] == "step"][-(done.metrics["global_step"] - resumed_from):]
    assert steps_after[0] == resumed_from + 1 and steps_after[-1] == done.metrics["global_step"]


def test_cli_lists_and_reports_unknown_jobs(l07_home: Path) -> None:
    from typer.testing import CliRunner

    from L07_learning.cli.main import app

    runner = CliRunner()
    listed = runner.invoke(app, ["jobs", "list", "--json"])
    assert listed.exit_code == 0 and listed.stdout.strip() == "[]"
    missing = runner.invoke(app, ["jobs", "show", "nope", "--json"])
    assert missing.exit_code == 2 and "E7410" in missing.stdout
    bad = runner.invoke(app, ["train", "--dataset", "x", "--preset", "no-such-preset", "--json"])
    assert bad.exit_code == 2 and "E7905" in bad.stdout


def test_cpu_preset_is_valid_and_keeps_contract_defaults_elsewhere() -> None:
    from L07_learning.services.jobs.presets import list_presets, load_preset

    assert "cpu-small" in list_presets()
    cpu = load_preset("cpu-small", {"epochs": 3})
    assert (cpu.learning_rate, cpu.lora_rank, cpu.gradient_checkpointing, cpu.batch_size, cpu.epochs) == (
        1e-3, 8, False, 8, 3)
    assert (cpu.target_modules, cpu.lora_alpha, cpu.lora_top_layers) == (["all-linear"], 32, 20)
    assert JobConfig().learning_rate == 2e-5 and JobConfig().gradient_checkpointing is True

"""``l07 run`` as real processes (contract §9, issue 18): killed with SIGKILL mid-training and restarted, two of them
sharing one PostgreSQL database, and idling small.

The training tests use the 2-layer tiny model (registered in the loop's database beforehand and named by the policy),
so a run takes seconds. A tiny random model cannot learn the task, so its validation ends REJECT (regression pass
rate 0 against the base): the tests check that each run reaches exactly one verdict, one model, one validation, and
a release event only for a run that was STAGED (a ``model_deployment_failed`` for one that was REJECTED).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from L07_learning.models.model_artifact import ModelType
from L07_learning.models.training_job import JobStatus
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.jobs import JobRepository
from L07_learning.store.repositories.loop import LoopRepository, LoopRun
from L07_learning.tests.conftest import PG_URL
from L07_learning.tests.factories.loop import (
    AGENTS,
    CACHE,
    TASK_TYPE,
    TINY_TRAINING,
    LoopProcess,
    loop_env,
    policy_file,
    sink_events,
    tool_choice_lines,
    wait_for,
    write_events,
)

FAILED_EVENT = "com.agentic.learning.model_deployment_failed"
# Fast heartbeats, stale limits and leases, so a dead process's job, run and lease are taken over in seconds;
# validation with a short generation cap, one timed request and no probes.
FAST = {"worker_heartbeat_s": 0.5, "worker_stale_after_s": 3, "loop_lease_ttl_s": 3,
        "validation_max_new_tokens": 8, "validation_latency_requests": 1, "validation_safety_prompts": 0}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, cache_dir=CACHE)


async def _registered_base(settings: Settings, tiny_model: Path) -> tuple[Database, str]:
    """Migrate the loop's database and register the tiny base in it, as an operator would before ``l07 run``."""
    db = Database(settings.database_url or "", auto_migrate=True)
    await db.connect()
    base = await ModelRegistry(db=db, settings=settings).register_base(str(tiny_model), name="tiny-llama")
    return db, base.model_id


async def _runs(db: Database) -> list[LoopRun]:
    async with db.session() as session:
        return await LoopRepository(session).runs()


async def _all_finished(db: Database, n: int) -> list[LoopRun] | None:
    runs = await _runs(db)
    return runs if len(runs) == n and all(r.status not in ("TRAINING", "VALIDATING") for r in runs) else None


async def _assert_done_once(db: Database, settings: Settings, run: LoopRun) -> dict[str, Any]:
    """One completed job, one model, one validation and one verdict event for ``run``; returns the job's row."""
    assert run.status in ("STAGED", "REJECTED", "REVIEW"), (run.status, run.error_code, run.error_message)
    registry = ModelRegistry(db=db, settings=settings)
    async with db.session() as session:
        job = await JobRepository(session).get(run.job_id or "")
        events = await JobRepository(session).events(job.job_id, ["status", "resumed"])
    assert job.status is JobStatus.COMPLETED and job.output_model_id == run.model_id
    models = [m for m in await registry.list_models() if m.training_job_id == run.job_id]
    assert [m.model_id for m in models] == [run.model_id] and models[0].model_type is not ModelType.BASE
    assert len(await registry.get_validations(run.model_id or "")) == 1
    released = [e for e in sink_events(settings.home) if e["data"]["model_id"] == run.model_id]
    failed = [e for e in sink_events(settings.home, FAILED_EVENT) if e["data"]["model_id"] == run.model_id]
    assert (len(released), len(failed)) == ((1, 0) if run.status == "STAGED" else
                                            (0, 1) if run.status == "REJECTED" else (0, 0))
    dataset = await registry_dataset(db, settings, run)
    ids = [e.example_id for e in dataset.examples]
    assert run.examples == len(ids) == len(set(ids))
    workers = {e["payload"]["worker_id"] for e in events if e["payload"].get("worker_id")}
    return {"job": job, "workers": workers, "example_ids": set(ids)}


async def registry_dataset(db: Database, settings: Settings, run: LoopRun):  # type: ignore[no-untyped-def]
    from L07_learning.services.dataset_curator import DatasetCurator

    return await DatasetCurator(db=db, settings=settings).get_dataset(run.dataset_id, run.dataset_version)


@pytest.mark.slow
async def test_sigkill_mid_training_then_restart_resumes_the_job_and_releases_once(tmp_path: Path,
                                                                                   tiny_model: Path) -> None:
    home, drop = tmp_path / "home", tmp_path / "drop"
    settings = Settings(home=home, model_cache_dir=Path(CACHE))
    db, base_id = await _registered_base(settings, tiny_model)
    policy = policy_file(tmp_path / "policy.yaml", {"tools": {"task_type": TASK_TYPE}}, _tiny(base_id), min_new=40)
    env = loop_env(home, **FAST)
    args = ["--watch", str(drop), "--policy", str(policy), "--tick", "0.5"]
    first = LoopProcess(env, args, tmp_path / "first.log")
    second = None
    try:
        await wait_for(lambda: _is_dir(drop / "done"), 120, "watched folder", (first,))
        write_events(drop / "tools.jsonl", tool_choice_lines(60, seed=5))

        async def checkpointed():  # type: ignore[no-untyped-def]
            runs = await _runs(db)
            if not runs or not runs[0].job_id:
                return None
            async with db.session() as session:
                job = await JobRepository(session).get(runs[0].job_id)
            return job if job.checkpoint_location and not job.status.terminal else None

        job = await wait_for(checkpointed, 300, "a checkpoint of the loop's job", (first,), every_s=0.2)
        os.kill(first.pid, signal.SIGKILL)  # the loop only: its job child dies with it (PR_SET_PDEATHSIG)
        first.proc.wait(timeout=30)
        async with db.session() as session:
            killed = await JobRepository(session).get(job.job_id)
        assert killed.status is JobStatus.RUNNING  # nobody marked it: the loop and its job child died

        second = LoopProcess(env, args, tmp_path / "second.log")
        (run,) = await wait_for(lambda: _all_finished(db, 1), 600, "the run's verdict", (second,))
        assert second.stop() == 0, second.tail()
    finally:
        first.kill()
        if second is not None:
            second.kill()

    once = await _assert_done_once(db, settings, run)
    done = once["job"]
    assert done.job_id == job.job_id and done.retry_count == 1
    async with db.session() as session:
        events = await JobRepository(session).events(done.job_id)
        accepted = {e.example_id for e in await ExampleRepository(session).list(status="ACCEPTED")}
        stored = await ExampleRepository(session).list()
    assert any(e["kind"] == "resumed" for e in events)
    resumed_from, last = done.metrics["resumed_from_step"], done.metrics["global_step"]
    assert 0 < resumed_from < last  # from the checkpoint, not from scratch
    steps_after = [e["step"] for e in events if e["kind"] == "step"][-(last - resumed_from):]
    assert steps_after == list(range(resumed_from + 1, last + 1))  # each step after the checkpoint once
    # Every example ingested once, every ACCEPTED one in the one dataset version, none twice.
    assert len(stored) == 60 and once["example_ids"] == accepted
    assert [p.name for p in (drop / "done").glob("*.jsonl")] == ["tools.jsonl"] and not any((drop / "failed").iterdir())
    await db.dispose()


@pytest.mark.postgres
async def test_two_loops_on_postgres_share_the_work_with_one_leader(tmp_path: Path, tiny_model: Path) -> None:
    url = await _create_database()
    home = tmp_path / "home"
    settings = Settings(home=home, database_url=url, model_cache_dir=Path(CACHE))
    db, base_id = await _registered_base(settings, tiny_model)
    try:
        await _two_loops_share_the_work(tmp_path, db, settings, base_id)
    finally:
        await db.dispose()
        await _drop_database(url)


async def _two_loops_share_the_work(tmp_path: Path, db: Database, settings: Settings, base_id: str) -> None:
    groups = {"router-a": {"agent_id": AGENTS[0]}, "router-b": {"agent_id": AGENTS[1]}}
    policy = policy_file(tmp_path / "policy.yaml", groups, _tiny(base_id), min_new=20)
    # Both processes stay alive here: realistic stale and lease limits, so a worker or leader slowed by the other's
    # work is not presumed dead (its job would run twice, or leadership move, by design of the takeover).
    env = loop_env(settings.home, database_url=settings.database_url,
                   **{**FAST, "worker_stale_after_s": 30, "loop_lease_ttl_s": 30})
    loops = [LoopProcess(env, ["--watch", str(tmp_path / f"drop-{name}"), "--policy", str(policy), "--tick", "0.5"],
                         tmp_path / f"{name}.log") for name in ("a", "b")]
    leaders: set[str | None] = set()

    async def finished():  # type: ignore[no-untyped-def]
        leaders.add(await _leader(db))
        return await _all_finished(db, 2)

    try:
        await wait_for(lambda: _is_dir(tmp_path / "drop-a" / "done"), 120, "watched folder", tuple(loops))
        leader = await wait_for(lambda: _leader(db), 60, "a leader", tuple(loops))
        write_events(tmp_path / "drop-a" / "tools.jsonl", tool_choice_lines(75, seed=9))
        runs = await wait_for(finished, 600, "both runs' verdicts", tuple(loops), every_s=0.5)
        status = _cli_status(env)
        for loop in loops:
            assert loop.stop() == 0, loop.tail()
    finally:
        for loop in loops:
            loop.kill()
    assert leaders == {leader} and status["leader"]["holder"] == leader  # one leader throughout
    assert int(leader.split(":")[1]) in {loop.pid for loop in loops}
    assert sorted(r.policy for r in runs) == ["router-a", "router-b"]
    done = [await _assert_done_once(db, settings, run) for run in runs]
    assert all(d["job"].retry_count == 0 and len(d["workers"]) == 1 for d in done)  # each job run by one worker
    assert done[0]["workers"] != done[1]["workers"]  # one job in each process's worker
    async with db.session() as session:
        schedules = (await session.execute(text("SELECT name, last_holder FROM l07_loop_schedules"))).all()
        assert len(await JobRepository(session).list(limit=10)) == 2
    assert schedules and {h for _, h in schedules} == {leader}  # only the leader ran schedules


def test_idle_loop_stays_small_and_never_loads_torch(tmp_path: Path) -> None:
    home, drop = tmp_path / "home", tmp_path / "drop"
    loop = LoopProcess(loop_env(home), ["--watch", str(drop), "--tick", "0.2"], tmp_path / "loop.log")
    try:
        asyncio.run(wait_for(lambda: _has_leader_row(home), 120, "two ticks", (loop,), every_s=0.5))
        asyncio.run(asyncio.sleep(1.0))  # a few more ticks
        status = Path(f"/proc/{loop.pid}/status").read_text()
        maps = Path(f"/proc/{loop.pid}/maps").read_text()
    finally:
        rc = loop.stop()
    rss_mb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024
    assert "libtorch" not in maps and "torch/lib" not in maps
    assert rss_mb < 300, f"l07 run idles at {rss_mb:.0f} MB"
    assert rc == 0, loop.tail()


# --- helpers --------------------------------------------------------------------------------------------------


def _tiny(base_id: str) -> dict[str, Any]:
    return {"kind": "sft", "base_model_id": base_id, "config": TINY_TRAINING}


async def _is_dir(path: Path) -> bool:
    return path.is_dir()


async def _leader(db: Database) -> str | None:
    async with db.session() as session:
        row = await LoopRepository(session).lease("loop-leader")
    return row[0] if row else None


async def _has_leader_row(home: Path) -> bool:
    db_file = home / "l07.db"
    if not db_file.exists():
        return False
    db = Database(Settings(home=home).database_url or "")
    try:
        await db.connect()
        return await _leader(db) is not None
    except Exception:  # noqa: BLE001 - the loop is still creating its database
        return False
    finally:
        await db.dispose()


def _cli_status(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "L07_learning.cli.main", "loop", "status", "--json"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def _raw(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _create_database() -> str:
    """A fresh PostgreSQL database (not a schema: the URL is all an ``l07 run`` process is given)."""
    import asyncpg

    name = f"l07_loop_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(_raw(PG_URL))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_URL.rsplit("/", 1)[0] + "/" + name


async def _drop_database(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_raw(PG_URL))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()

"""The loop between processes, without training: finishing a run taken over by another process, the charge and the
outcome in one transaction, the leader lease lost mid-tick, a policy's own claim, one broken policy, and two
watchers on one folder."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from L07_learning.services.example_quality_filter import ExampleQualityFilter
from L07_learning.services.learning_service import LearningService
from L07_learning.services.loop import FolderWatcher, LeaderLease, LearningLoop, PolicySet, ScheduledTask
from L07_learning.store.db import Database
from L07_learning.store.repositories.loop import LoopRepository, LoopRun
from L07_learning.tests.services.loop.test_loop import T0

DAY = T0.strftime("%Y-%m-%d")


async def _open_run(db: Database, claimed_by: str) -> LoopRun:
    run = LoopRun(run_id=f"run-{claimed_by}", policy="qa", job_type="SFT", dataset_id="ds-1", dataset_version=f"1.0.0-{claimed_by}",
                  examples=10, status="TRAINING", started_at=T0)
    async with db.session() as session:
        repo = LoopRepository(session)
        assert await repo.add_run(run)
        assert await repo.claim_run(run.run_id, claimed_by, T0, T0)
    return run


async def _state(db: Database, run_id: str):  # type: ignore[no-untyped-def]
    async with db.session() as session:
        repo = LoopRepository(session)
        (run,) = [r for r in await repo.runs("qa") if r.run_id == run_id]
        return run, await repo.get_policy("qa"), await repo.spent(DAY)


async def test_a_run_taken_over_is_not_finished_charged_or_counted(settings, db: Database) -> None:
    loop = LearningLoop(LearningService.build(settings, db), tasks=[], run_worker=False, holder="me")
    theirs = await _open_run(db, "other")
    assert not await loop.runs.finish(theirs, "FAILED", {}, error_code="E7036", charge=(DAY, 5.0, 0.0))
    run, policy, spent = await _state(db, theirs.run_id)
    assert run.status == "TRAINING" and policy is None and spent == (0.0, 0.0)

    mine = await _open_run(db, "me")
    assert await loop.runs.finish(mine, "FAILED", {}, error_code="E7036", charge=(DAY, 5.0, 0.0))
    run, policy, spent = await _state(db, mine.run_id)
    assert run.status == "FAILED" and policy.consecutive_failures == 1 and spent == (5.0, 0.0)
    assert not await loop.runs.finish(mine, "FAILED", {}, charge=(DAY, 5.0, 0.0))  # closed: not finished twice
    assert (await _state(db, mine.run_id))[2] == (5.0, 0.0)


async def test_the_charge_and_the_failed_outcome_are_one_transaction(settings, db: Database,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    loop = LearningLoop(LearningService.build(settings, db), tasks=[], run_worker=False, holder="me")
    mine = await _open_run(db, "me")

    async def crash(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("process died")

    monkeypatch.setattr(loop.breakers, "record", crash)
    with pytest.raises(RuntimeError):
        await loop.runs.finish(mine, "FAILED", {}, charge=(DAY, 5.0, 0.0))
    run, _, spent = await _state(db, mine.run_id)
    assert run.status == "TRAINING" and spent == (0.0, 0.0)  # nothing charged: the retry charges once


def _policies(*names: str) -> PolicySet:
    return PolicySet.model_validate({"policies": [{"name": n, "group": {"task_type": "summarization"}}
                                                  for n in names]})


def _loop_with_schedule(settings, db: Database, ran: list[str]) -> LearningLoop:  # type: ignore[no-untyped-def]
    """A loop over policies ``a`` and ``b`` with one schedule due every five minutes, which appends to ``ran``."""
    async def action() -> dict:
        ran.append("x")
        return {}

    return LearningLoop(LearningService.build(settings, db), _policies("a", "b"),
                        tasks=[ScheduledTask("x", "*/5 * * * *", action)], run_worker=False, holder="me")


async def test_a_broken_policy_stops_neither_the_others_nor_the_schedules(settings, sqlite_db: Database,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    loop = _loop_with_schedule(settings, sqlite_db, ran)
    consider = loop._consider

    async def broken(policy, now):  # type: ignore[no-untyped-def]
        if policy.name == "a":
            raise KeyError("bad state")
        return await consider(policy, now)

    monkeypatch.setattr(loop, "_consider", broken)
    try:
        report = await loop.tick()
        assert report["policies"]["a"].startswith("error: KeyError") and "new examples" in report["policies"]["b"]
        assert report["schedules"] == {"x": "OK"} and ran == ["x"]
    finally:
        await loop.close()


async def test_leader_work_stops_once_the_lease_is_lost(settings, db: Database,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    loop = _loop_with_schedule(settings, db, ran)
    consider = loop._consider

    async def slow(policy, now):  # type: ignore[no-untyped-def]
        # The first policy outlasts the lease and another process takes over.
        await loop.lease.release()
        assert await LeaderLease(db, "other").acquire()
        return await consider(policy, now)

    monkeypatch.setattr(loop, "_consider", slow)
    try:
        report = await loop.tick()
        assert report["leader"] and list(report["policies"]) == ["a"] and report["schedules"] == {} and ran == []
    finally:
        await loop.runs.close()
        await loop.service.cleanup()


async def test_a_policy_claimed_by_another_process_is_left_to_it(settings, db: Database) -> None:
    loop = LearningLoop(LearningService.build(settings, db), _policies("a"), tasks=[], run_worker=False, holder="me")
    claim = LeaderLease(db, "other", ttl_s=300, name="loop-policy:a")
    assert await claim.acquire()
    try:
        assert (await loop.tick())["policies"] == {"a": "another process is evaluating this policy"}
        await claim.release()
        assert "new examples" in (await loop.tick())["policies"]["a"]
    finally:
        await loop.close()


# --- watched folder -----------------------------------------------------------------------------------------------


def _watcher(settings, db: Database, folder: Path, holder: str) -> FolderWatcher:  # type: ignore[no-untyped-def]
    return FolderWatcher(folder, db=db, settings=settings, settle_s=0.0, holder=holder,
                         quality_filter=ExampleQualityFilter(db=db, settings=settings))


async def test_two_watchers_on_one_folder_take_a_file_once(settings, sqlite_db: Database, sample_cloud_event: dict,
                                                           tmp_path: Path) -> None:
    host = socket.gethostname()
    first, second = (_watcher(settings, sqlite_db, tmp_path / "in", f"{host}:{os.getpid()}:{n}") for n in "ab")
    path = first.folder / "events.jsonl"
    path.write_text(json.dumps(sample_cloud_event) + "\n")
    old = time.time() - 10
    os.utime(path, (old, old))
    assert await first.poll() == [] and await second.poll() == []  # both have seen it once: both find it ready
    reports = [r for rs in await asyncio.gather(first.poll(), second.poll()) for r in rs]
    assert [r["file"] for r in reports] == ["events.jsonl"] and reports[0]["ingested"] == 1
    assert sorted(p.name for p in first.done.iterdir()) == ["events.jsonl", "events.jsonl.report.json"]
    assert not any(first.processing.iterdir()) and not path.exists()


async def test_a_file_left_in_processing_by_a_dead_process_is_returned(settings, sqlite_db: Database,
                                                                      tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    processing = tmp_path / "in" / ".processing"
    processing.mkdir(parents=True)
    (processing / f"lost.jsonl.{host}:{dead.stdout.strip()}:dead").write_text("{}\n")
    (processing / f"busy.jsonl.{host}:{os.getpid()}:live").write_text("{}\n")
    (processing / "odd.jsonl.elsewhere:1:x").write_text("{}\n")
    watcher = _watcher(settings, sqlite_db, tmp_path / "in", "me")
    assert (watcher.folder / "lost.jsonl").read_text() == "{}\n"
    assert sorted(p.name for p in processing.iterdir()) == [f"busy.jsonl.{host}:{os.getpid()}:live",
                                                            "odd.jsonl.elsewhere:1:x"]

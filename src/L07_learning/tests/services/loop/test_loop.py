"""The loop's core without training (contract §9): policies, triggers, breakers, the leader lease, the watched folder
and schedules. The end-to-end run with a real model lives in the slow suite."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from L07_learning.models.error_codes import L07Error
from L07_learning.observability.metrics import REGISTRY
from L07_learning.services.example_quality_filter import ExampleQualityFilter
from L07_learning.services.learning_service import LearningService
from L07_learning.services.loop import (
    FolderWatcher,
    LeaderLease,
    LearningLoop,
    LoopPolicy,
    PolicyBreakers,
    ScheduledTask,
    Scheduler,
    default_policies,
    evaluate_trigger,
    load_policies,
)
from L07_learning.store.db import Database
from L07_learning.store.repositories.loop import LoopRepository
from L07_learning.store.repositories.outbox import OutboxRepository

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)


# --- policies -----------------------------------------------------------------------------------------------------


def test_default_policy_makes_one_group_per_task_type(settings) -> None:
    policies = load_policies(None).expand(["summarization", "flight booking"])
    assert [p.name for p in policies] == ["default.summarization", "default.flight-booking"]
    assert policies[0].group.task_type == "summarization"
    assert policies[0].dataset_name == "loop-default.summarization"
    assert default_policies().policies[0].training.kind == "auto"


def test_policy_file_with_durations_and_kinds(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "policies:\n"
        "  - name: support\n"
        "    group: {agent_id: agent-support-03, labels: [gold]}\n"
        "    trigger: {min_new_examples: 20, max_interval: 12h, cooldown: 90s}\n"
        "    training: {kind: auto, rlhf_min_pairs: 50}\n"
        "  - name: distil\n"
        "    training: {teacher_model_id: mdl-teacher}\n")
    support, distil = load_policies(path).policies
    assert support.trigger.max_interval == timedelta(hours=12) and support.trigger.cooldown == timedelta(seconds=90)
    assert support.group.labels == ["gold"]
    assert support.job_kind(preference_pairs=49) == "sft" and support.job_kind(preference_pairs=50) == "rlhf"
    assert distil.job_kind(preference_pairs=1000) == "distillation"


@pytest.mark.parametrize("text, needle", [
    ("policies:\n  - name: a\n    trigger: {min_new_examples: 0}\n", "min_new_examples"),
    ("policies:\n  - name: a\n    colour: blue\n", "colour"),
    ("policies:\n  - name: a\n  - name: a\n", "unique"),
    ("policies:\n  - name: a\n    training: {kind: distillation}\n", "teacher_model_id"),
    ("policies: [unclosed\n", "not YAML"),
])
def test_invalid_policy_file_names_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(L07Error) as err:
        load_policies(path)
    assert err.value.code.value == "E7500"
    assert needle in err.value.message


def test_missing_policy_file_is_configuration_not_found(tmp_path: Path) -> None:
    with pytest.raises(L07Error) as err:
        load_policies(tmp_path / "nope.yaml")
    assert err.value.code.value == "E7905"


# --- triggers -----------------------------------------------------------------------------------------------------


def _decide(settings, policy: LoopPolicy | None = None, **kw):  # type: ignore[no-untyped-def]
    args = {"now": T0, "new_examples": 0, "group_size": 0, "since": T0 - timedelta(hours=1), "last_run_at": None}
    return evaluate_trigger(policy or LoopPolicy(name="p"), settings, **{**args, **kw})


def test_trigger_on_min_new_examples_from_settings(settings) -> None:
    assert settings.loop_min_new_examples == 500
    assert not _decide(settings, new_examples=499, group_size=499).fire
    decision = _decide(settings, new_examples=500, group_size=500)
    assert decision.fire and "500 new" in decision.reason


def test_trigger_on_max_interval_needs_minimum_dataset_size(settings) -> None:
    policy = LoopPolicy(name="p", trigger={"max_interval": "2h", "min_dataset_size": 100})
    early = _decide(settings, policy, new_examples=5, group_size=150, since=T0 - timedelta(hours=1))
    assert not early.fire and "more new examples" in early.next_trigger
    small = _decide(settings, policy, new_examples=5, group_size=99, since=T0 - timedelta(hours=3))
    assert not small.fire
    assert _decide(settings, policy, new_examples=5, group_size=100, since=T0 - timedelta(hours=3)).fire
    assert not _decide(settings, policy, new_examples=0, group_size=100, since=T0 - timedelta(hours=3)).fire


def test_trigger_waits_for_the_cool_down(settings) -> None:
    policy = LoopPolicy(name="p", trigger={"min_new_examples": 10, "cooldown": "30m"})
    cooling = _decide(settings, policy, new_examples=50, group_size=50, last_run_at=T0 - timedelta(minutes=10))
    assert not cooling.fire and cooling.reason.startswith("cool-down")
    assert _decide(settings, policy, new_examples=50, group_size=50, last_run_at=T0 - timedelta(minutes=31)).fire


def test_settings_accept_short_durations(monkeypatch: pytest.MonkeyPatch, l07_home: Path) -> None:
    from L07_learning.settings import Settings

    monkeypatch.setenv("L07_LOOP_MAX_INTERVAL", "30m")
    assert Settings().loop_max_interval == timedelta(minutes=30)
    assert Settings(loop_max_interval=7200).loop_max_interval == timedelta(hours=2)


# --- breakers -----------------------------------------------------------------------------------------------------


def _trips(policy: str) -> float:
    return REGISTRY.get_sample_value("l07_loop_breaker_trips_total", {"policy": policy}) or 0.0


async def test_breaker_opens_after_three_failures_and_resume_closes_it(db: Database) -> None:
    breakers = PolicyBreakers(db)
    policy = f"p-{uuid.uuid4().hex[:6]}"
    verdicts = ["FAILED", "REVIEW", "REJECT", "FAILED"]  # a REVIEW breaks the streak
    for i, verdict in enumerate(verdicts):
        async with db.session() as session:
            state = await breakers.record(session, policy, failed=verdict != "REVIEW", verdict=verdict, run_id=f"r{i}")
    assert state.breaker_state == "CLOSED" and state.consecutive_failures == 2
    async with db.session() as session:
        state = await breakers.record(session, policy, failed=True, verdict="REJECT", run_id="r9",
                                      error_code="E7203", message="benchmark")
    assert state.breaker_state == "OPEN" and "3 consecutive" in (state.breaker_reason or "")
    assert _trips(policy) == 1
    async with db.session() as session:
        alerts = await OutboxRepository(session).list("com.agentic.learning.learning_system_alert")
    assert len(alerts) == 1
    data = alerts[0]["event"]["data"]
    assert data["circuit_breaker_state"] == "OPEN" and data["details"]["policy"] == policy
    assert data["error_code"] == "E7203"
    resumed = await breakers.resume(policy, actor="ops")
    assert resumed.breaker_state == "CLOSED" and resumed.consecutive_failures == 0
    with pytest.raises(L07Error) as err:
        await breakers.resume("never-seen")
    assert err.value.code.value == "E7905"


# --- leader lease -------------------------------------------------------------------------------------------------


async def test_lease_acquire_renew_and_takeover(db: Database) -> None:
    async with db.session() as session:
        repo = LoopRepository(session)
        assert await repo.acquire_lease("leader", "a", 30, T0)
        assert not await repo.acquire_lease("leader", "b", 30, T0 + timedelta(seconds=5))
        assert await repo.acquire_lease("leader", "a", 30, T0 + timedelta(seconds=20))  # renew: now valid to T0+50
        assert not await repo.acquire_lease("leader", "b", 30, T0 + timedelta(seconds=45))
        assert await repo.acquire_lease("leader", "b", 30, T0 + timedelta(seconds=51))  # a died: b takes over
        assert not await repo.acquire_lease("leader", "a", 30, T0 + timedelta(seconds=52))
        holder, expires = await repo.lease("leader")
    assert holder == "b" and expires == T0 + timedelta(seconds=81)


async def test_leader_lease_release_hands_over_at_once(db: Database) -> None:
    a, b = LeaderLease(db, "proc-a"), LeaderLease(db, "proc-b")
    assert await a.acquire() and not await b.acquire()
    await a.release()
    assert await b.acquire() and not await a.acquire()
    assert (await a.current())["holder"] == "proc-b"


# --- schedules ----------------------------------------------------------------------------------------------------


async def test_schedule_runs_once_per_period(sqlite_db: Database) -> None:
    calls: list[int] = []

    async def action() -> dict:
        calls.append(1)
        return {"n": len(calls)}

    daily = ScheduledTask("mine", "0 3 * * *", action)
    scheduler = Scheduler(sqlite_db, [daily], holder="a")
    assert await scheduler.run_due(T0) == {"mine": "OK"}
    assert await scheduler.run_due(T0 + timedelta(hours=2)) == {}
    # A restarted process (new holder) does not run the period again either.
    assert await Scheduler(sqlite_db, [daily], holder="b").run_due(T0 + timedelta(hours=10)) == {}
    assert await scheduler.run_due(T0 + timedelta(hours=17, minutes=1)) == {"mine": "OK"}  # next day 03:01
    assert len(calls) == 2
    status = (await scheduler.status(T0 + timedelta(hours=18)))[0]
    assert status["last_status"] == "OK" and status["next_run_at"].startswith("2026-12-08T03:00")


async def test_failing_schedule_is_recorded_and_the_others_run(sqlite_db: Database) -> None:
    async def boom() -> dict:
        raise RuntimeError("disk full")

    async def fine() -> dict:
        return {}

    scheduler = Scheduler(sqlite_db, [ScheduledTask("a", "*/5 * * * *", boom), ScheduledTask("b", "*/5 * * * *", fine)],
                          holder="x")
    assert await scheduler.run_due(T0) == {"a": "FAILED", "b": "OK"}
    assert "disk full" in (await scheduler.status(T0))[0]["last_error"]


async def test_only_the_leader_runs_schedules(settings, sqlite_db: Database) -> None:
    calls: list[str] = []

    def task(name: str) -> ScheduledTask:
        async def action() -> dict:
            calls.append(name)
            return {}
        return ScheduledTask("every-5-min", "*/5 * * * *", action)

    loops = [LearningLoop(LearningService.build(settings, sqlite_db), tasks=[task(n)], run_worker=False, holder=n)
             for n in ("first", "second")]
    try:
        reports = [await loop.tick() for loop in loops]
        assert [r["leader"] for r in reports] == [True, False]
        assert calls == ["first"]
        status = await loops[1].status()
        assert status["leader"]["holder"] == "first" and status["policies"] == []
        assert status["schedules"][0]["last_status"] == "OK" and status["review_queue"] == 0
    finally:
        for loop in loops:
            await loop.runs.close()
            await loop.lease.release()
        await loops[0].service.cleanup()


# --- watched folder -----------------------------------------------------------------------------------------------


def _score(execution_id: str) -> dict:
    data = {"execution_id": execution_id, "quality_score": 91.0, "confidence_level": 0.95, "task_type": "summarization"}
    return {"specversion": "1.0", "type": "com.agentic.evaluation.quality_score_computed", "id": str(uuid.uuid4()),
            "source": "https://agentic.local/layers/l06", "time": "2026-02-10T09:15:03Z", "data": data}


def _settle(path: Path) -> None:
    old = time.time() - 10
    os.utime(path, (old, old))


async def test_watched_folder_ingests_good_lines_and_reports_bad_ones(settings, sqlite_db: Database,
                                                                      sample_cloud_event: dict, tmp_path: Path) -> None:
    watcher = FolderWatcher(tmp_path / "in", db=sqlite_db, settings=settings,
                            quality_filter=ExampleQualityFilter(db=sqlite_db, settings=settings))
    lines = [json.dumps(sample_cloud_event), "{not json", "",
             json.dumps({"specversion": "1.0", "type": "com.agentic.execution.trace_generated"}),
             json.dumps(_score(sample_cloud_event["data"]["execution_id"]))]
    path = watcher.folder / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _settle(path)
    assert await watcher.poll() == []  # first sight: not yet known to be complete
    (report,) = await watcher.poll()
    assert not path.exists() and (watcher.done / "events.jsonl").exists()
    stored = json.loads((watcher.done / "events.jsonl.report.json").read_text())
    assert stored == {k: v for k, v in report.items() if k != "moved_to"}
    assert stored["lines_read"] == 4 and stored["ingested"] == 2 and stored["rejected"] == 2
    assert [r["line"] for r in stored["rejected_lines"]] == [2, 4]
    assert all(r["code"].startswith("E7") for r in stored["rejected_lines"])
    assert sum(stored["rejected_by_code"].values()) == 2
    assert stored["examples"]["extracted"] == 1
    assert stored["examples"]["accepted"] + stored["examples"]["review"] + stored["examples"]["rejected"] \
        + stored["examples"]["quarantined"] == 1


async def test_unreadable_file_goes_to_failed_and_growing_file_waits(settings, sqlite_db: Database,
                                                                    tmp_path: Path) -> None:
    watcher = FolderWatcher(tmp_path / "in", db=sqlite_db, settings=settings,
                            quality_filter=ExampleQualityFilter(db=sqlite_db, settings=settings))
    binary = watcher.folder / "dump.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    _settle(binary)
    growing = watcher.folder / "growing.jsonl"
    growing.write_text('{"a": 1}\n')
    await watcher.poll()
    growing.write_text('{"a": 1}\n{"b": 2}\n')  # still being written: changed since the last poll
    (report,) = await watcher.poll()
    assert report["file"] == "dump.jsonl" and "binary" in report["failed"]
    assert (watcher.failed / "dump.jsonl").exists()
    assert "binary" in (watcher.failed / "dump.jsonl.reason.txt").read_text()
    assert growing.exists()

"""The loop's doors (issue 18): ``l07 loop status|resume`` and ``/api/v1/loop`` with their roles, every ingestion
door filtering, ``l07 examples filter --pending``, and ``l07 run --watch`` as a real process stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from L07_learning.cli.main import app as cli
from L07_learning.models._base import utcnow
from L07_learning.services.demo.sample_stream import generate
from L07_learning.services.ingestion.pipeline import IngestionPipeline
from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.loop import LoopRepository
from L07_learning.tests.api.test_api import ROLES, auth, client_for, keys, make_keys  # noqa: F401 - fixtures

EVERY_READER = {"trainer", "reviewer", "deployer", "auditor", "admin"}


def _json(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


async def _trip(db: Database, policy: str) -> None:
    """A policy whose breaker tripped after three failed runs."""
    async with db.session() as s:
        repo = LoopRepository(s)
        await repo.ensure_policy(policy, utcnow())
        await repo.update_policy(policy, utcnow(), breaker_state="OPEN", consecutive_failures=3,
                                 breaker_opened_at=utcnow(), breaker_reason="3 consecutive failed runs")


async def _count(db: Database, status: str) -> int:
    async with db.session() as s:
        return await ExampleRepository(s).count(status=status)


def _db(settings) -> Database:  # type: ignore[no-untyped-def]
    return Database(settings.database_url or "", auto_migrate=True)


def test_cli_loop_status_and_resume(settings) -> None:  # type: ignore[no-untyped-def]
    db = _db(settings)

    async def trip_and_close() -> None:
        try:
            await _trip(db, "support")
        finally:
            await db.dispose()

    asyncio.run(trip_and_close())
    status = _json(CliRunner().invoke(cli, ["loop", "status", "--json"]))
    [support] = [p for p in status["policies"] if p["policy"] == "support"]
    assert support["breaker"]["state"] == "OPEN" and support["breaker"]["consecutive_failures"] == 3
    assert {"budget", "jobs", "models_per_stage", "review_queue"} <= set(status)

    table = CliRunner().invoke(cli, ["loop", "status"])
    assert table.exit_code == 0 and "support" in table.stdout and "REVIEW queue" in table.stdout, table.output

    resumed = _json(CliRunner().invoke(cli, ["loop", "resume", "support", "--actor", "ops", "--json"]))
    assert resumed["breaker"] == {"state": "CLOSED", "consecutive_failures": 0, "opened_at": None, "reason": None}
    unknown = CliRunner().invoke(cli, ["loop", "resume", "nope"])
    assert unknown.exit_code == 2 and "E7905" in unknown.output


async def test_rest_loop_status_for_readers_and_resume_for_deployers(sqlite_db: Database, client_for, keys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    client = await client_for(sqlite_db)
    for role in ROLES:
        r = await client.get("/api/v1/loop", headers=auth(keys[role]))
        assert r.status_code == (200 if role in EVERY_READER else 403), (role, r.text)
    for role in ROLES:
        await _trip(sqlite_db, "support")
        r = await client.post("/api/v1/loop/support/resume", headers=auth(keys[role]))
        assert r.status_code == (200 if role in {"deployer", "admin"} else 403), (role, r.text)
        if r.status_code == 200:
            assert r.json()["breaker"]["state"] == "CLOSED"
    assert (await client.post("/api/v1/loop/support/resume", headers=auth(keys["admin"]))).status_code == 200
    r = await client.post("/api/v1/loop/nope/resume", headers=auth(keys["admin"]))
    assert r.status_code == 404 and r.json()["code"] == "E7905"
    status = (await client.get("/api/v1/loop", headers=auth(keys["auditor"]))).json()
    assert [p["breaker"]["state"] for p in status["policies"] if p["policy"] == "support"] == ["CLOSED"]


def test_cli_ingest_filters_every_example(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    events = tmp_path / "events.jsonl"
    generate(60, seed=3).write(str(events))
    summary = _json(CliRunner().invoke(cli, ["ingest", str(events), "--json"]))
    assert summary["examples_extracted"] > 0 and 0 < summary["examples_accepted"] <= summary["examples_extracted"]
    db = _db(settings)

    async def counts() -> tuple[int, int]:
        try:
            return await _count(db, "PENDING"), await _count(db, "ACCEPTED")
        finally:
            await db.dispose()

    pending, accepted = asyncio.run(counts())
    assert pending == 0 and accepted == summary["examples_accepted"]


def test_examples_filter_pending_drains_the_backlog(settings) -> None:  # type: ignore[no-untyped-def]
    db = _db(settings)

    async def ingest_unfiltered() -> int:
        try:
            # The pipeline alone stores PENDING: the backlog that ingestion left before every door filtered.
            await IngestionPipeline(db, settings).ingest(generate(60, seed=4).lines, "file")
            return await _count(db, "PENDING")
        finally:
            await db.dispose()

    backlog = asyncio.run(ingest_unfiltered())
    assert backlog > 0
    counts = _json(CliRunner().invoke(cli, ["examples", "filter", "--pending", "--batch-size", "7", "--json"]))
    assert counts["still_pending"] == 0 and counts["batches"] >= backlog // 7
    assert sum(counts[d] for d in ("ACCEPT", "REVIEW", "REJECT", "QUARANTINE")) == backlog and counts["ACCEPT"] > 0
    again = _json(CliRunner().invoke(cli, ["examples", "filter", "--pending", "--json"]))
    assert again["batches"] == 0


def _l07(*args: str, env: dict[str, str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "L07_learning.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120, **kw)


def test_l07_run_watches_a_folder_and_stops_on_sigterm(l07_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "L07_HOME": str(l07_home), "L07_LOOP_MIN_NEW_EXAMPLES": "100000", "L07_LOG_FORMAT": "text"}
    watch = tmp_path / "inbox"
    proc = subprocess.Popen([sys.executable, "-m", "L07_learning.cli.main", "run", "--watch", str(watch),
                             "--tick", "0.2", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not (watch / "done").is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        written = tmp_path / "drop.tmp"
        generate(40, seed=5).write(str(written))
        written.replace(watch / "events.jsonl")  # appears complete, as a producer's rename does
        report_path = watch / "done" / "events.jsonl.report.json"
        while not report_path.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        report = json.loads(report_path.read_text())
        assert (watch / "done" / "events.jsonl").exists() and not (watch / "events.jsonl").exists()
        assert report["lines_read"] > 0 and report["examples"]["pending"] == 0 and report["examples"]["accepted"] > 0

        status = _l07("loop", "status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout.strip().splitlines()[-1])
        assert sum(p.get("group_size", 0) for p in shown["policies"]) == report["examples"]["accepted"]
        assert shown["leader"]["alive"] and shown["leader"]["holder"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[0])["watch"] == [str(watch)]

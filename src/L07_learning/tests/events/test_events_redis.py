"""Redis Streams consumer against a real Redis: kill a consumer mid-batch, reclaim, dead-letter (issue 4).

The kill test runs ``l07 consume`` as real subprocesses sharing one database (SQLite file, or a fresh PostgreSQL
database), SIGKILLs the first one while it works, and lets a second one take over its pending entries.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from L07_learning.events.redis_stream import RedisStreamSource
from L07_learning.services.demo.sample_stream import generate
from L07_learning.services.ingestion.pipeline import IngestionPipeline, run_source
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.events import RejectedEventRepository
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.tests import paths

from ..conftest import PG_URL, REDIS_URL

pytestmark = pytest.mark.redis

SRC = str(paths.SRC)


@pytest.fixture
async def redis_client():
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    created: list[str] = []
    yield client, created
    if created:
        await client.delete(*created)
    await client.aclose()


async def _fill(client, stream: str, lines: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for line in lines:
        pipe.xadd(stream, {"event": line})
    await pipe.execute()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request, tmp_path):
    """A database URL a subprocess can open on its own: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'redis-test.db'}"
        return
    import asyncpg

    name = f"l07_{uuid.uuid4().hex[:12]}"
    admin = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def _consumer(db_url: str, home: Path, stream: str, group: str, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "L07_HOME": str(home), "L07_DATABASE_URL": db_url,
           "L07_AUTO_MIGRATE": "true", "L07_LOG_LEVEL": "ERROR"}
    cmd = [sys.executable, "-m", "L07_learning.cli.main", "consume", "--redis", REDIS_URL, "--stream", stream,
           "--group", group, "--consumer", name, "--batch-size", "25", "--block-ms", "200",
           "--claim-idle-ms", "1000", "--idle-exit", "3", "--json"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


async def test_killed_consumer_mid_batch_every_event_becomes_exactly_one_example(redis_client, db_url, tmp_path):
    client, created = redis_client
    stream, group = f"l07-test-{uuid.uuid4().hex[:8]}", "l07-training-extractor"
    created += [stream, f"{stream}.dlq"]
    sample = generate(700, seed=21)
    await _fill(client, stream, sample.lines)
    db = Database(db_url, auto_migrate=True)
    await db.connect()  # migrate once up front so both consumers start on a ready schema

    first = _consumer(db_url, tmp_path / "h1", stream, group, "consumer-1")
    try:
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and first.poll() is None:
            async with db.session() as s:
                stored = await ExampleRepository(s).count()
            if stored >= 40:
                break
            await asyncio.sleep(0.05)
        assert first.poll() is None, "the first consumer finished before it could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    pending = await client.xpending(stream, group)
    assert 0 < stored < len(sample.expected["trace_examples"])

    second = _consumer(db_url, tmp_path / "h2", stream, group, "consumer-2")
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["consumer"] == "consumer-2"

    async with db.session() as s:
        keys = await ExampleRepository(s).keys()
        rejected = await RejectedEventRepository(s).count_by_code()
    await db.dispose()
    traces = [e for t, e in keys if t == "EXECUTION_TRACE"]
    assert len(keys) == len(set(keys)), "no event became two examples"
    assert sorted(traces) == sorted(sample.expected["trace_examples"]), "every joined execution became one example"
    assert sorted(e for t, e in keys if t == "QUALITY_FEEDBACK") == sorted(sample.expected["feedback_examples"])
    assert set(rejected) == set(sample.expected["rejected"])
    assert (await client.xpending(stream, group))["pending"] == 0, "everything was acknowledged in the end"
    assert pending["pending"] > 0 or report["acknowledged"] > 0


async def test_rejected_entries_go_to_the_dead_letter_stream_with_their_code(redis_client, tmp_path):
    client, created = redis_client
    stream = f"l07-test-{uuid.uuid4().hex[:8]}"
    created += [stream, f"{stream}.dlq"]
    good = generate(5, seed=2).lines
    await _fill(client, stream, good[:3] + ["{not json"])
    await client.xadd(stream, {"ce-specversion": "1.0", "ce-id": "bin-1", "ce-source": "https://agentic.local/layers/l06",
                               "ce-type": "com.agentic.evaluation.quality_score_computed",
                               "content-type": "application/json", "data": json.dumps({"execution_id": "e"})})
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'dlq.db'}", auto_migrate=True)
    source = RedisStreamSource(REDIS_URL, stream, "g", "c", block_ms=100, idle_exit_s=0.3)
    summary = await run_source(source, IngestionPipeline(db, Settings(home=tmp_path / "h")))
    await source.close()
    await db.dispose()
    assert summary.events_read == 5 and summary.events_rejected == 2
    dlq = await client.xrange(f"{stream}.dlq")
    codes = sorted(fields[b"l07_code"].decode() for _, fields in dlq)
    assert codes == ["E7010", "E7015"], "binary-mode score without quality_score is E7010, broken JSON E7015"
    assert (await client.xpending(stream, "g"))["pending"] == 0


async def test_entry_failing_every_delivery_is_dead_lettered_after_max_attempts(redis_client, tmp_path):
    client, created = redis_client
    stream = f"l07-test-{uuid.uuid4().hex[:8]}"
    created += [stream, f"{stream}.dlq"]
    await _fill(client, stream, generate(2, seed=9).lines[:3])
    unreachable = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none")  # storage down: every batch fails
    source = RedisStreamSource(REDIS_URL, stream, "g", "c", block_ms=50, claim_idle_ms=0, max_deliveries=2,
                               idle_exit_s=0.3)
    summary = await asyncio.wait_for(run_source(source, IngestionPipeline(unreachable, Settings(home=tmp_path))), 60)
    await source.close()
    assert summary.events_read == 0, "nothing was committed"
    dlq = await client.xrange(f"{stream}.dlq")
    assert len(dlq) == 3 and {f[b"l07_code"] for _, f in dlq} == {b"E7040"}
    assert all(b"delivered 3 times" in f[b"l07_reason"] for _, f in dlq)
    assert (await client.xpending(stream, "g"))["pending"] == 0

"""Hostile producers against the Redis Streams consumer (issue 22), on a real Redis: ``l07 consume`` never dies on
data, the dead-letter count compares stream ids as numbers, and the Redis password never shows in an error."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

import pytest

from L07_learning.events import redis_stream
from L07_learning.events.redis_stream import RedisStreamSource
from L07_learning.models import L07Error
from L07_learning.services.ingestion.pipeline import IngestionPipeline, run_source
from L07_learning.services.learning_service import LearningService
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.events import RejectedEventRepository
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.tests import paths

from ..conftest import REDIS_URL
from ..services.ingestion.test_extractor import score_event, trace_event
from .test_events_redis import redis_client  # noqa: F401 - shared fixture

pytestmark = pytest.mark.redis


async def test_dead_letter_count_compares_stream_ids_as_numbers(redis_client, tmp_path):  # noqa: F811
    """Ids ``1-10``..``1-12`` sort before ``1-9`` as bytes: their delivery counts used to be missed, and a failing
    batch was redelivered without end although ``max_deliveries=2``."""
    client, created = redis_client
    stream = f"l07-test-{os.urandom(4).hex()}"
    created += [stream, f"{stream}.dlq"]
    for seq in range(1, 13):
        await client.xadd(stream, {"event": json.dumps(trace_event(f"exec-{seq}"))}, id=f"1-{seq}")
    unreachable = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none")  # storage down: every batch fails
    source = RedisStreamSource(REDIS_URL, stream, "g", "c", block_ms=50, claim_idle_ms=0, max_deliveries=2,
                               idle_exit_s=0.3)
    deliveries = 0
    fail = source._on_fail

    async def counting_fail(exc):
        nonlocal deliveries
        deliveries += 1
        await fail(exc)

    source._on_fail = counting_fail
    try:
        await asyncio.wait_for(run_source(source, IngestionPipeline(unreachable, Settings(home=tmp_path))), 30)
    except TimeoutError:
        pass
    finally:
        await source.close()
    dlq = await client.xrange(f"{stream}.dlq")
    assert sorted(f[b"l07_source_id"] for _, f in dlq) == sorted(f"1-{i}".encode() for i in range(1, 13))
    assert all(b"delivered 3 times" in f[b"l07_reason"] for _, f in dlq)
    assert deliveries == 2, "each failing batch was delivered max_deliveries times, then dead-lettered"
    assert (await client.xpending(stream, "g"))["pending"] == 0


def hostile_entries() -> list[dict]:
    deep = trace_event("exec-deep")
    deep["data"]["task_definition"]["context"] = "DEEP"
    deep_text = json.dumps(deep).replace('"DEEP"', '{"a":' * 300 + '"x"' + "}" * 300)
    return [
        {"event": json.dumps(trace_event("exec-1"))},
        {"event": deep_text},
        {"event": json.dumps(score_event("exec-deep"))},
        {"event": json.dumps({**trace_event("exec-long"), "id": "i" * 600})},
        {b"\xff\xfe": b"\xff", b"ce-id": b"\xff\xfe"},  # neither UTF-8 field names nor values
        {"event": b"\xff\xfe{"},
        {"event": json.dumps(score_event("exec-1"))},
        {"event": json.dumps(trace_event("exec-2"))},
        {"event": json.dumps(score_event("exec-2"))},
    ]


async def _check_outcome(client, stream: str, db: Database) -> None:
    assert (await client.xpending(stream, "l07-training-extractor"))["pending"] == 0
    dlq = await client.xrange(f"{stream}.dlq")
    assert sorted(f[b"l07_code"].decode() for _, f in dlq) == ["E7015", "E7015", "E7015", "E7110"]
    async with db.session() as s:
        examples = sorted(e.execution_id for e in await ExampleRepository(s).list())
        rejected = await RejectedEventRepository(s).count_by_code()
    assert examples == ["exec-1", "exec-2"]
    assert rejected == {"E7015": 3, "E7110": 1}


async def test_consumer_survives_hostile_entries_and_dead_letters_each_with_its_code(redis_client, db, tmp_path):  # noqa: F811
    """The review's crash loop: a trace nested ~255 levels, then its score, killed the consumer on every restart.
    Now each hostile entry is rejected with a code, stored, dead-lettered, and the valid pairs around it extract;
    this is ``LearningService.consume``, what ``l07 consume`` runs (every batch through the quality filter)."""
    client, created = redis_client
    stream = f"l07-test-{os.urandom(4).hex()}"
    created += [stream, f"{stream}.dlq"]
    for fields in hostile_entries():
        await client.xadd(stream, fields)
    service = LearningService(settings=Settings(home=tmp_path / "home"), db=db)
    for _restart in range(2):  # a restart with the same consumer name finds nothing left to crash on
        source = service.stream_source(REDIS_URL, stream, "l07-training-extractor", "fixed-name", block_ms=50,
                                       claim_idle_ms=0, max_deliveries=2, idle_exit_s=0.3)
        try:
            summary = await asyncio.wait_for(service.consume(source), 60)
        finally:
            await source.close()
    assert summary["events_read"] == 0, "the restart had nothing left to read"
    await _check_outcome(client, stream, db)


async def test_l07_consume_process_exits_cleanly_on_hostile_entries(redis_client, tmp_path):  # noqa: F811
    client, created = redis_client
    stream = f"l07-test-{os.urandom(4).hex()}"
    created += [stream, f"{stream}.dlq"]
    for fields in hostile_entries():
        await client.xadd(stream, fields)
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'consume.db'}"
    env = {**os.environ, "PYTHONPATH": str(paths.SRC), "L07_HOME": str(tmp_path / "home"),
           "L07_DATABASE_URL": db_url, "L07_AUTO_MIGRATE": "true", "L07_LOG_LEVEL": "ERROR"}
    cmd = [sys.executable, "-m", "L07_learning.cli.main", "consume", "--redis", REDIS_URL, "--stream", stream,
           "--group", "l07-training-extractor", "--consumer", "fixed-name", "--batch-size", "50", "--block-ms", "100",
           "--claim-idle-ms", "0", "--max-deliveries", "2", "--idle-exit", "0.5", "--json"]
    done = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["consumer"] == "fixed-name" and report["dead_lettered"] == 4 and report["events_rejected"] == 4
    db = Database(db_url)
    try:
        await _check_outcome(client, stream, db)
    finally:
        await db.dispose()


async def test_redis_password_never_shows_in_errors_or_logs(caplog):
    url = "redis://l07user:s3cr3t-pw@127.0.0.1:1/0"
    safe_url = redis_stream.safe_url
    assert safe_url(url) == "redis://l07user:***@127.0.0.1:1/0"
    assert safe_url("redis://:only-pw@host:6379") == "redis://:***@host:6379"
    assert safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    source = RedisStreamSource(url, "s", "g", "c")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(L07Error) as info:
        await source.ensure_group()
    await source.close()
    assert info.value.code.value == "E7040"
    assert "s3cr3t-pw" not in str(info.value) and "s3cr3t-pw" not in repr(info.value.details)
    assert "127.0.0.1:1" in str(info.value), "the message still says which Redis failed"
    assert "s3cr3t-pw" not in caplog.text

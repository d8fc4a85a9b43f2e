"""Transactional outbox: an event exists only if its transaction committed, and a sink outage delays delivery but
never loses or duplicates it."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time

import pytest
from sqlalchemy import update

from L07_learning.events.outbox_relay import OutboxRelay, backoff_seconds
from L07_learning.events.publisher import EventPublisher
from L07_learning.events.sinks import JsonlSink, RedisStreamSink
from L07_learning.store.db import Database
from L07_learning.store.repositories.outbox import OutboxRepository
from L07_learning.store.tables import SqlOutboxEvent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


async def test_rolled_back_transaction_publishes_nothing(db: Database, tmp_path):
    with pytest.raises(RuntimeError):
        async with db.session() as s:
            await EventPublisher().publish(s, "learning.model_ready_for_deployment", {"model_id": "m"}, subject="m")
            raise RuntimeError("stage change failed")
    sink = JsonlSink(tmp_path / "out.jsonl")
    assert await OutboxRelay(db, [sink]).drain(timeout_s=1) == 0
    assert not (tmp_path / "out.jsonl").exists()


async def test_jsonl_sink_delivers_once_with_envelope(db: Database, tmp_path):
    async with db.session() as s:
        ev = await EventPublisher().publish(s, "learning.dataset_ready", {"dataset_id": "d"}, subject="d")
    relay = OutboxRelay(db, [JsonlSink(tmp_path / "out.jsonl")])
    assert await relay.drain(timeout_s=2) == 0
    await relay.run_once()
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 1
    got = json.loads(lines[0])
    assert got["id"] == ev["id"] and got["type"] == "com.agentic.learning.dataset_ready"
    assert got["source"] == "https://agentic.local/layers/l07" and got["dataschema"] == "dataset_ready-v1"


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server binary not installed")
async def test_sink_outage_delays_but_delivers_exactly_once(db: Database, tmp_path):
    port = _free_port()
    redis_proc = _start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    jsonl = JsonlSink(tmp_path / "out.jsonl")
    redis_sink = RedisStreamSink(url, stream="releases")
    relay = OutboxRelay(db, [jsonl, redis_sink])
    try:
        # The broker goes away in the middle of a release.
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        async with db.session() as s:
            ev = await EventPublisher().publish(s, "learning.model_ready_for_deployment", {"model_id": "m1"}, subject="m1")
        first = await relay.run_once()
        assert first == {"delivered": 0, "failed": 1}
        async with db.session() as s:
            assert await OutboxRepository(s).pending_count() == 1
            assert await OutboxRepository(s).delivered_sinks(ev["id"]) == {"jsonl"}

        # It comes back on the same port; the retry (once due) delivers, and further passes add nothing.
        redis_proc = _start_redis(port)
        async with db.session() as s:
            await s.execute(update(SqlOutboxEvent).values(next_attempt_at=None))  # the backoff has passed
        assert await relay.drain(timeout_s=10) == 0
        await relay.run_once()
        await redis_sink.deliver(ev)  # even a duplicate delivery attempt is absorbed by the sink
        import redis.asyncio as aioredis

        client = aioredis.from_url(url)
        entries = await client.xrange("releases")
        await client.aclose()
        assert len(entries) == 1
        assert json.loads(entries[0][1][b"event"])["id"] == ev["id"]
        assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1
    finally:
        await relay.close()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


async def test_relays_in_several_processes_deliver_each_event_once(db: Database, tmp_path) -> None:
    # l07 run, serve and worker each relay the same outbox; a claimed row is not taken by another relay.
    async with db.session() as s:
        for i in range(20):
            await EventPublisher().publish(s, "learning.model_ready_for_deployment", {"model_id": f"m{i}"}, subject=f"m{i}")
    relays = [OutboxRelay(db, [JsonlSink(tmp_path / f"out{k}.jsonl")]) for k in range(3)]
    try:
        results = []
        for _ in range(4):
            results += await asyncio.gather(*(relay.run_once(limit=7) for relay in relays))
    finally:
        for relay in relays:
            await relay.close()
    lines = [json.loads(line)["id"] for k in range(3) if (tmp_path / f"out{k}.jsonl").exists()
             for line in (tmp_path / f"out{k}.jsonl").read_text().splitlines()]
    assert sum(r["delivered"] for r in results) == 20 and len(lines) == 20 and len(set(lines)) == 20


async def test_a_stopping_relay_delivers_what_was_committed_before_the_stop(db: Database, tmp_path) -> None:
    relay = OutboxRelay(db, [JsonlSink(tmp_path / "out.jsonl")])
    async with db.session() as s:
        ev = await EventPublisher().publish(s, "learning.model_deployment_failed", {"model_id": "m1"}, subject="m1")
    stop = asyncio.Event()
    stop.set()  # the process is already shutting down when the event commits
    await relay.serve(stop, poll_s=10)
    await relay.close()
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [ev["id"]]


def test_backoff_is_capped_with_jitter():
    assert 0.9 <= backoff_seconds(0) <= 1.1
    assert 54 <= backoff_seconds(10) <= 66

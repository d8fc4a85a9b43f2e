"""Component circuit breakers (contract §4.4) stored in the database: they trip after their failure count, survive a
restart, half-open after the cool-down, count concurrent failures from two processes, and show in `l07 loop status`."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from sqlalchemy import func, select, update
from typer.testing import CliRunner

from L07_learning.cli.main import app as cli
from L07_learning.models._base import utcnow
from L07_learning.services.breakers import ComponentBreakers
from L07_learning.store.db import Database
from L07_learning.store.tables import SqlAuditLog, SqlComponentBreaker, SqlOutboxEvent
from L07_learning.tests.conftest import PG_URL

ALERT = "com.agentic.learning.learning_system_alert"


async def _fail(breakers: ComponentBreakers, component: str, times: int, reason: str = "job diverged") -> dict:
    state: dict = {}
    for _ in range(times):
        async with breakers.db.session() as session:
            state = await breakers.record(session, component, ok=False, reason=reason)
    return state


async def _count(db: Database, table, *where) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(table).where(*where)) or 0)


async def test_training_breaker_trips_after_its_failure_count_and_survives_a_restart(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'breakers.db'}"
    first = Database(url, auto_migrate=True)
    try:
        breakers = ComponentBreakers(first)
        assert (await _fail(breakers, "training", 2))["state"] == "CLOSED"
        assert await breakers.allow("training") == (True, "")
        assert (await _fail(breakers, "training", 1, "model below its baseline"))["state"] == "OPEN"
        assert await _count(first, SqlOutboxEvent, SqlOutboxEvent.event_type == ALERT) == 1
        assert await _count(first, SqlAuditLog, SqlAuditLog.action == "breaker.open") == 1
    finally:
        await first.dispose()
    # A new process: a new engine on the same file sees the open breaker and refuses training.
    restarted = Database(url, auto_migrate=True)
    try:
        breakers = ComponentBreakers(restarted)
        status = (await breakers.status())["training"]
        assert status["state"] == "OPEN" and status["consecutive_failures"] == 3 and status["trips"] == 1
        assert "model below its baseline" in status["reason"]
        allowed, why = await breakers.allow("training")
        assert not allowed and "reset-breaker training" in why
        # Training needs a person even after the cool-down (§4.4 "1 h and manual approval").
        async with restarted.session() as s:
            await s.execute(update(SqlComponentBreaker).values(opened_at=utcnow() - timedelta(hours=2)))
        assert (await breakers.allow("training"))[0] is False
        assert (await breakers.reset("training", actor="dana"))["state"] == "CLOSED"
        assert await breakers.allow("training") == (True, "")
        assert await _count(restarted, SqlAuditLog, SqlAuditLog.action == "breaker.reset") == 1
    finally:
        await restarted.dispose()


async def test_deployment_breaker_half_opens_after_its_cooldown(sqlite_db):
    breakers = ComponentBreakers(sqlite_db)
    assert (await _fail(breakers, "deployment", 2, "release refused by the gateway"))["state"] == "OPEN"
    allowed, why = await breakers.allow("deployment")
    assert not allowed and "next probe in" in why
    async with sqlite_db.session() as s:
        await s.execute(update(SqlComponentBreaker).values(opened_at=utcnow() - timedelta(seconds=901)))
    assert await breakers.allow("deployment") == (True, "half-open probe")
    assert (await breakers.allow("deployment"))[0] is False  # one probe at a time
    assert (await _fail(breakers, "deployment", 1, "probe failed"))["state"] == "OPEN"
    async with sqlite_db.session() as s:
        await s.execute(update(SqlComponentBreaker).values(opened_at=utcnow() - timedelta(seconds=901)))
    assert (await breakers.allow("deployment"))[0] is True
    async with sqlite_db.session() as s:
        assert (await breakers.record(s, "deployment", ok=True))["state"] == "CLOSED"
    assert (await breakers.status())["deployment"]["trips"] == 2


async def test_two_processes_count_failures_together_on_postgres(pg_db):
    other = Database(PG_URL, schema=pg_db.schema)
    try:
        await asyncio.gather(_fail(ComponentBreakers(pg_db), "deployment", 1),
                             _fail(ComponentBreakers(other), "deployment", 1))
    finally:
        await other.dispose()
    status = (await ComponentBreakers(pg_db).status())["deployment"]
    assert status["state"] == "OPEN" and status["consecutive_failures"] == 2 and status["trips"] == 1
    assert await _count(pg_db, SqlOutboxEvent, SqlOutboxEvent.event_type == ALERT) == 1


def test_loop_status_shows_breakers_and_reset_breaker_closes_one(settings):
    async def trip() -> None:
        db = Database(settings.database_url, auto_migrate=True)
        try:
            await _fail(ComponentBreakers(db), "validation", 5, "validator crashed")
        finally:
            await db.dispose()

    asyncio.run(trip())
    status = json.loads(CliRunner().invoke(cli, ["loop", "status", "--json"]).stdout)
    assert status["breakers"]["validation"]["state"] == "OPEN"
    assert status["breakers"]["training"]["state"] == "CLOSED"
    table = CliRunner().invoke(cli, ["loop", "status"])
    assert "circuit breakers" in table.stdout and "validator crashed" in table.stdout
    reset = CliRunner().invoke(cli, ["loop", "reset-breaker", "validation", "--json"])
    assert reset.exit_code == 0 and json.loads(reset.stdout)["state"] == "CLOSED"
    unknown = CliRunner().invoke(cli, ["loop", "reset-breaker", "gpu"])
    assert unknown.exit_code == 2 and "E7905" in unknown.output

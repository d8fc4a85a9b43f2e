"""The audit log is hash-chained and written in the audited change's transaction (contract §7.4 "Audit", E7804):
editing or deleting a row is detected, concurrent writers never fork the chain, a rolled-back change leaves no audit
row, a failed audit write rolls the change back, and each row says where the action came from."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from sqlalchemy import JSON, DateTime, column, insert, select, table, text

from L07_learning.models.error_codes import L07Error
from L07_learning.store.db import Database
from L07_learning.store.repositories.audit import ORIGIN, StaticOrigin, audit, list_audit, verify_chain
from L07_learning.store.tables import SqlAuditLog, SqlDataset


async def _write(db: Database, n: int, tag: str = "t") -> None:
    for i in range(n):
        async with db.session() as s:
            s.add(SqlDataset(dataset_id=f"{tag}-{i}", name=f"{tag}-{i}", latest_version="1.0.0"))
            await audit(s, "dataset.create", "dataset", f"{tag}-{i}", details={"i": i, "score": 0.1 * i})


async def _verify(db: Database):
    async with db.session() as s:
        return await verify_chain(s)


async def test_an_untouched_chain_verifies_and_an_edited_row_is_named(db: Database):
    await _write(db, 5)
    report = await _verify(db)
    assert report.ok and report.rows_checked == 5 and (report.first_seq, report.last_seq, report.head_seq) == (1, 5, 5)

    async with db.session() as s:
        await s.execute(text("UPDATE l07_audit_log SET result = 'failure' WHERE seq = 3"))
    report = await _verify(db)
    assert not report.ok
    assert report.broken["seq"] == 3 and "content changed" in report.broken["reason"]
    assert report.rows_checked == 2


@pytest.mark.parametrize("victim, first_broken, reason", [(2, 3, "row 2 is missing"), (5, 5, "rows 5-5 after")])
async def test_a_deleted_row_breaks_the_chain(db: Database, victim: int, first_broken: int, reason: str):
    await _write(db, 5)
    async with db.session() as s:
        await s.execute(text(f"DELETE FROM l07_audit_log WHERE seq = {victim}"))
    report = await _verify(db)
    assert not report.ok and report.broken["seq"] == first_broken and reason in report.broken["reason"]


async def test_a_row_inserted_around_the_audit_writer_is_reported(db: Database):
    await _write(db, 2)
    async with db.session() as s:
        await s.execute(text(
            "INSERT INTO l07_audit_log (audit_id, timestamp, actor_type, actor_id, action, resource_type, result, "
            "details, seq, prev_hash, row_hash) VALUES ('forged', '2026-01-01 00:00:00', 'user', 'x', 'model.promote', "
            "'model', 'success', '{}', 3, 'aa', 'bb')"))
    report = await _verify(db)
    assert not report.ok and report.broken["seq"] == 3 and report.broken["audit_id"] == "forged"


async def test_concurrent_writers_extend_one_chain(db: Database):
    async def writer(i: int) -> None:
        async with db.session() as s:
            s.add(SqlDataset(dataset_id=f"c-{i}", name=f"c-{i}", latest_version="1.0.0"))
            await s.flush()
            await asyncio.sleep(0.01 * (i % 3))  # interleave the transactions
            await audit(s, "dataset.create", "dataset", f"c-{i}")
            await audit(s, "dataset.version_created", "dataset", f"c-{i}")

    await asyncio.gather(*(writer(i) for i in range(12)))
    report = await _verify(db)
    assert report.ok, report.broken
    assert report.rows_checked == 24 and report.head_seq == 24
    async with db.session() as s:
        rows = (await s.scalars(select(SqlAuditLog).order_by(SqlAuditLog.seq))).all()
    # Both rows of one transaction sit next to each other: each writer appended while holding the head.
    for first, second in zip(rows[::2], rows[1::2]):
        assert first.resource_id == second.resource_id and second.prev_hash == first.row_hash


async def test_a_rolled_back_change_leaves_no_audit_row_and_no_gap(db: Database):
    await _write(db, 1)
    with pytest.raises(RuntimeError):
        async with db.session() as s:
            s.add(SqlDataset(dataset_id="gone", name="gone", latest_version="1.0.0"))
            await audit(s, "dataset.create", "dataset", "gone")
            raise RuntimeError("the change fails after its audit row was queued")
    await _write(db, 1, tag="after")
    async with db.session() as s:
        rows, total = await list_audit(s)
    assert total == 2 and "gone" not in {r["resource"]["id"] for r in rows}
    assert (await _verify(db)).ok


async def test_a_failed_audit_write_rolls_the_change_back(sqlite_db: Database):
    async with sqlite_db.session() as s:
        await s.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON l07_audit_log "
                             "BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END"))
    with pytest.raises(L07Error) as info:
        async with sqlite_db.session() as s:
            s.add(SqlDataset(dataset_id="d1", name="d1", latest_version="1.0.0"))
            await audit(s, "dataset.create", "dataset", "d1")
    assert info.value.code.value == "E7804"
    async with sqlite_db.session() as s:
        assert (await s.scalars(select(SqlDataset))).all() == []


async def test_rows_record_where_the_action_came_from(db: Database):
    token = ORIGIN.set(StaticOrigin(ip_address="203.0.113.9", user_agent="pytest-agent/1.0",
                                    actor_type="user", actor_id="alice@host"))
    try:
        async with db.session() as s:
            await audit(s, "dataset.create", "dataset", "d1")  # no actor given: the origin's
            await audit(s, "model.promote", "model", "m1", actor="key-123", actor_type="api_key")
    finally:
        ORIGIN.reset(token)
    async with db.session() as s:
        rows, _ = await list_audit(s)
    by_action = {r["action"]: r["actor"] for r in rows}
    assert by_action["dataset.create"] == {"type": "user", "identifier": "alice@host", "ip_address": "203.0.113.9",
                                           "user_agent": "pytest-agent/1.0"}
    assert by_action["model.promote"]["identifier"] == "key-123"
    assert by_action["model.promote"]["ip_address"] == "203.0.113.9"
    assert (await _verify(db)).ok


async def test_the_migration_chains_rows_written_before_the_chain(db: Database):
    await db.downgrade("0004")
    legacy = table("l07_audit_log", *(column(c) for c in ("audit_id", "actor_type", "actor_id", "action",
                                                          "resource_type", "result")),
                   column("timestamp", DateTime(timezone=True)), column("details", JSON()))
    async with db.engine.begin() as conn:
        await conn.execute(insert(legacy), [
            {"audit_id": f"old-{i}", "timestamp": datetime(2026, 1, i + 1, 10, 0, 0, 123456, tzinfo=timezone.utc),
             "actor_type": "service", "actor_id": "l07", "action": "dataset.create", "resource_type": "dataset",
             "result": "success", "details": {"b": 2, "a": [1, 0.5]}} for i in range(3)])
    await db.upgrade()
    await _write(db, 2)
    report = await _verify(db)
    assert report.ok, report.broken
    assert report.rows_checked == 5
    async with db.session() as s:
        first = await s.scalar(select(SqlAuditLog).where(SqlAuditLog.seq == 1))
    assert first.audit_id == "old-0"

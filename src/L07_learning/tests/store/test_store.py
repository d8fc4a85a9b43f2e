"""Storage on SQLite and PostgreSQL: migrations round-trip, schema equals migrations, transactions leave no partial
rows, and an unreachable or outdated database gives an E79xx error saying what to run."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from L07_learning.models.error_codes import L07Error
from L07_learning.store.db import Database, head_revision
from L07_learning.store.repositories.audit import audit
from L07_learning.store.repositories.status import table_counts
from L07_learning.store.tables import Base, SqlAuditLog, SqlDataset, described_by_metadata


async def test_upgrade_downgrade_upgrade(db: Database):
    assert await db.current_revision() == head_revision()
    await db.downgrade("base")
    assert await db.current_revision() is None
    await db.upgrade()
    assert await db.current_revision() == head_revision()
    async with db.session() as s:
        counts = await table_counts(s)
    assert set(counts) == set(Base.metadata.tables) and all(v == 0 for v in counts.values())


async def test_orm_metadata_equals_migrations(db: Database):
    def diff(sync_conn):
        # The backend-specific text search index (migration 0009) is outside the ORM metadata, as in env.py.
        opts = {"include_name": described_by_metadata, **({"version_table_schema": db.schema} if db.schema else {})}
        return compare_metadata(MigrationContext.configure(sync_conn, opts=opts), Base.metadata)

    async with db.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    # alembic's own bookkeeping table is not part of the ORM metadata.
    differences = [d for d in differences if not (d[0] == "remove_table" and d[1].name == "alembic_version")]
    assert differences == []


async def test_failed_unit_of_work_leaves_nothing(db: Database):
    with pytest.raises(RuntimeError):
        async with db.session() as s:
            await audit(s, "dataset.create", "dataset", "d1")
            s.add(SqlDataset(dataset_id="d1", name="n", latest_version="1.0.0"))
            await s.flush()
            raise RuntimeError("boom after the rows were written")
    async with db.session() as s:
        assert (await s.scalars(select(SqlAuditLog))).all() == []
        assert (await s.scalars(select(SqlDataset))).all() == []


async def test_unique_constraint_rolls_back_whole_batch(db: Database):
    async with db.session() as s:
        s.add(SqlDataset(dataset_id="d1", name="same", latest_version="1.0.0"))
    with pytest.raises(Exception):
        async with db.session() as s:
            s.add(SqlDataset(dataset_id="d2", name="other", latest_version="1.0.0"))
            s.add(SqlDataset(dataset_id="d3", name="same", latest_version="1.0.0"))
    async with db.session() as s:
        names = sorted(r.name for r in (await s.scalars(select(SqlDataset))).all())
    assert names == ["same"]


async def test_unreachable_database_says_what_to_check():
    bad = Database("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    with pytest.raises(L07Error) as info:
        await bad.connect()
    await bad.dispose()
    assert info.value.code.value == "E7903"
    assert "L07_DATABASE_URL" in info.value.message


async def test_outdated_schema_says_run_upgrade(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    fresh = Database(url, auto_migrate=False)
    with pytest.raises(L07Error) as info:
        await fresh.connect()
    await fresh.dispose()
    assert info.value.code.value == "E7905"
    assert "l07 db upgrade" in info.value.message


async def test_new_sqlite_file_written_by_another_process_is_waited_for_not_reported_unreachable(tmp_path):
    # A second process writing a new (still rollback-journal) database file: SQLite answers the switch to WAL with an
    # immediate "database is locked" that its busy timeout does not cover. CI saw `l07 run` exit with E7903 this way
    # while `l07 loop status` polled the file it was creating.
    path = tmp_path / "l07.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    other.execute("CREATE TABLE other_process (a)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO other_process VALUES (1)")
    threading.Timer(0.5, other.execute, ("COMMIT",)).start()
    db = Database(f"sqlite+aiosqlite:///{path}", auto_migrate=True)
    try:
        await db.connect()
        assert await db.current_revision() == head_revision()
    finally:
        await db.dispose()
        other.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

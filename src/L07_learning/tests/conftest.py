"""Shared fixtures: a fresh database per test (SQLite and PostgreSQL), isolated settings, the brief's samples.

PostgreSQL runs are isolated in their own schema, so parallel or repeated runs never collide.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from L07_learning.models import ExampleSource, ModelArtifact, ModelType, TrainingExample
from L07_learning.settings import Settings, reset_settings
from L07_learning.store.db import Database

PG_URL = os.environ.get("L07_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("L07_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLEANUP_TIMEOUT_S = 2.0
# Training refuses a train split under minimum_dataset_size (contract §4.3; default 5000). Test datasets have tens of
# examples; the tests of the minimum itself set their own.
os.environ.setdefault("L07_MINIMUM_DATASET_SIZE", "1")
# Transformers is the reference engine the suite's answers and timings are written against, whatever fast engine the
# machine has installed (`auto` would pick it); the fast engines' own tests name them.
os.environ.setdefault("L07_INFERENCE_BACKEND", "transformers")


@pytest.fixture(autouse=True)
def _l07_logs_reach_caplog() -> None:
    """``configure_logging`` (called by CLI commands that tests run in-process) stops L07's log tree propagating to
    the root logger, where ``caplog`` listens; without this, a later test's log assertions would see nothing."""
    logging.getLogger("L07_learning").propagate = True


@pytest.fixture
def cleanup_timeout() -> float:
    """The brief's 2-second ceiling for ``cleanup()`` calls."""
    return CLEANUP_TIMEOUT_S


@pytest.fixture
def l07_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated L07 home folder (SQLite DB, keys, artifacts) for the test, wired through the environment."""
    home = tmp_path / "l07home"
    monkeypatch.setenv("L07_HOME", str(home))
    monkeypatch.delenv("L07_DATABASE_URL", raising=False)
    monkeypatch.delenv("L07_ARTIFACT_ROOT", raising=False)
    # Share the converted base model across tests so it is converted once per machine, not per test.
    monkeypatch.setenv("L07_MODEL_CACHE_DIR", os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
    reset_settings()
    yield home
    reset_settings()


@pytest.fixture
def settings(l07_home: Path) -> Settings:
    from L07_learning.settings import get_settings

    return get_settings()


async def _pg_schema_db() -> tuple[Database, str]:
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    raw = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(raw)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return Database(PG_URL, schema=schema, auto_migrate=True), schema


async def _drop_pg_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", auto_migrate=True)
    await database.connect()
    try:
        yield database
    finally:
        await database.dispose()


@asynccontextmanager
async def _postgres() -> AsyncIterator[Database]:
    database, schema = await _pg_schema_db()
    await database.connect()
    try:
        yield database
    finally:
        await database.dispose()
        await _drop_pg_schema(schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database: SQLite file, or a fresh PostgreSQL schema."""
    async with _sqlite(tmp_path) if request.param == "sqlite" else _postgres() as database:
        yield database


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database only (for tests that do not concern the backend)."""
    async with _sqlite(tmp_path) as database:
        yield database


@pytest.fixture
async def pg_db() -> AsyncIterator[Database]:
    """A migrated PostgreSQL schema only (concurrency tests)."""
    async with _postgres() as database:
        yield database


@pytest.fixture
def sample_cloud_event() -> dict:
    """The brief's sample CloudEvent: an L02 execution trace (contract §1.6)."""
    return {
        "specversion": "1.0",
        "type": "com.agentic.execution.trace_generated",
        "source": "https://agentic.local/layers/l02",
        "id": str(uuid.uuid4()),
        "time": "2026-02-10T09:15:02Z",
        "datacontenttype": "application/json",
        "data": {
            "execution_id": f"exec-{uuid.uuid4().hex[:8]}",
            "agent_id": "agent-support-03",
            "task_id": "task-991",
            "task_type": "summarization",
            "task_definition": {"goal": "Summarise ticket 4411 for the on-call engineer", "context": {"max_words": 60}},
            "execution_trace": [
                {"step": 1, "action": "fetch_ticket", "parameters": {"ticket_id": "4411"}, "output": "1240 chars"},
                {"step": 2, "action": "summarise", "parameters": {"max_words": 60}, "output": "draft ok"},
            ],
            "final_answer": "Login fails after the 2.3 upgrade because the SSO token expired; clearing the cache fixes it.",
            "outcome": "success",
            "metadata": {"execution_duration_seconds": 4.2, "tool_calls": 2, "tokens_used": 812},
        },
    }


@pytest.fixture
def sample_example() -> TrainingExample:
    """The brief's sample training example."""
    return TrainingExample(
        example_id="test-1",
        source_type=ExampleSource.EXECUTION_TRACE,
        input_text="Summarize this document",
        output_text="The document discusses...",
        quality_score=85.0,
        confidence=0.9,
        metadata={"agent_id": "agent-1", "task_type": "summarization"},
    )


@pytest.fixture
def sample_artifact() -> ModelArtifact:
    """The brief's sample model artifact (metadata only; registry tests attach real files)."""
    return ModelArtifact(name="support-summarizer", version="1.0.0", model_type=ModelType.LORA_ADAPTER)


@pytest.fixture
async def bounded_cleanup():
    """Run an async cleanup callable and fail the test if it takes longer than the brief's 2 seconds."""

    async def run(fn):
        await asyncio.wait_for(fn(), timeout=CLEANUP_TIMEOUT_S)

    return run

"""Dialect-aware ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL), the building block of idempotency.

Relying on the database's unique keys (instead of read-then-insert) is what makes concurrent consumers safe: on
PostgreSQL a second transaction inserting the same key waits for the first and then inserts nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

CHUNK = 500
"""Rows per statement: stays far below SQLite's and asyncpg's bound-parameter limits."""


def insert_ignore(session: AsyncSession, table: Table) -> Any:
    """An INSERT for ``table`` that skips rows violating any unique key, in the session's dialect."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


def chunks(rows: list[Any], size: int = CHUNK) -> list[list[Any]]:
    """``rows`` cut into lists of at most ``size``."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]

"""Alembic environment: runs on the connection handed over by ``Database`` (async engines use run_sync)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

# Alembic loads this file by path, so the package is imported absolutely (it is installed or on PYTHONPATH).
from L07_learning.store.tables import described_by_metadata

config = context.config
target_metadata = config.attributes.get("metadata")
if target_metadata is None:
    from L07_learning.store.tables import Base

    target_metadata = Base.metadata


def _configure(connection) -> None:  # type: ignore[no-untyped-def]
    schema = config.attributes.get("schema")
    opts = {"version_table_schema": schema} if schema else {}
    # The text search index is written by hand per backend (migration 0009): autogenerate must not drop it.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      include_name=described_by_metadata, **opts)


connection = config.attributes.get("connection")
if connection is not None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()
elif context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = config.get_main_option("sqlalchemy.url").replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    with create_engine(url).connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()

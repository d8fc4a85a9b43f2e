"""Text search index over the stored examples (the console's and REST's ``q``), and an index of the loop's groups

The search finds a piece of text anywhere in an example's id, input or output, in any letter case. On SQLite an FTS5
table with the trigram tokenizer (``l07_example_search``, external content: it indexes the rows of
``l07_training_examples`` by rowid and stores no copy of the texts) is kept in step by triggers on every insert,
update and delete. On PostgreSQL one GIN index with ``pg_trgm``'s trigram operator class over the three columns
serves ``ILIKE '%...%'`` directly; without the extension (not installed, or no right to create it) the index is left
out and the search still answers, by reading every row.

The loop's status counts each policy group's ACCEPTED examples (``status``, ``task_type``, ``agent_id``) and those
not yet in the group's dataset (by ``example_id``): (status, task_type, agent_id, example_id) answers all of it from
the index alone instead of reading every example row.

A later batch migration of ``l07_training_examples`` on SQLite copies the table to new rowids: it must rebuild the
search table (``INSERT INTO l07_example_search(l07_example_search) VALUES('rebuild')``) and recreate the triggers.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 13:00:00
"""
import logging
import sqlite3

from alembic import op
import sqlalchemy as sa

from L07_learning.store.tables import SQLITE_TRIGRAM


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

_SQLITE_UP = [
    "CREATE VIRTUAL TABLE l07_example_search USING fts5(example_id, input_text, output_text, "
    "content='l07_training_examples', tokenize='trigram case_sensitive 0')",
    # Backfill: index every row already stored.
    "INSERT INTO l07_example_search(l07_example_search) VALUES ('rebuild')",
    """CREATE TRIGGER l07_example_search_insert AFTER INSERT ON l07_training_examples BEGIN
        INSERT INTO l07_example_search(rowid, example_id, input_text, output_text)
        VALUES (new.rowid, new.example_id, new.input_text, new.output_text);
    END""",
    # An external-content FTS5 table forgets a row by being told the values it indexed.
    """CREATE TRIGGER l07_example_search_delete AFTER DELETE ON l07_training_examples BEGIN
        INSERT INTO l07_example_search(l07_example_search, rowid, example_id, input_text, output_text)
        VALUES ('delete', old.rowid, old.example_id, old.input_text, old.output_text);
    END""",
    """CREATE TRIGGER l07_example_search_update AFTER UPDATE OF example_id, input_text, output_text
    ON l07_training_examples BEGIN
        INSERT INTO l07_example_search(l07_example_search, rowid, example_id, input_text, output_text)
        VALUES ('delete', old.rowid, old.example_id, old.input_text, old.output_text);
        INSERT INTO l07_example_search(rowid, example_id, input_text, output_text)
        VALUES (new.rowid, new.example_id, new.input_text, new.output_text);
    END""",
]

_SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS l07_example_search_update",
    "DROP TRIGGER IF EXISTS l07_example_search_delete",
    "DROP TRIGGER IF EXISTS l07_example_search_insert",
    "DROP TABLE IF EXISTS l07_example_search",
]

_TRGM_SCHEMA = sa.text("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'")


def upgrade() -> None:
    op.create_index('ix_l07_training_examples_group', 'l07_training_examples',
                    ['status', 'task_type', 'agent_id', 'example_id'], unique=False)
    conn = op.get_bind()
    if conn.dialect.name == 'sqlite':
        if not SQLITE_TRIGRAM:
            log.warning('SQLite %s has no FTS5 trigram tokenizer (3.34+): the example text search reads every row',
                        sqlite3.sqlite_version)
            return
        for statement in _SQLITE_UP:
            op.execute(statement)
    elif conn.dialect.name == 'postgresql':
        schema = _pg_trgm_schema(conn)
        if schema is None:
            return
        ops = f'{schema}.gin_trgm_ops'
        # Building the index reads every stored row: the backfill.
        op.execute(f'CREATE INDEX ix_l07_example_search ON l07_training_examples USING gin '
                   f'(example_id {ops}, input_text {ops}, output_text {ops})')


def _pg_trgm_schema(conn: sa.engine.Connection) -> str | None:
    """The (quoted) schema of the ``pg_trgm`` extension, created when missing; None when it cannot be."""
    schema = conn.scalar(_TRGM_SCHEMA)
    if schema is not None:
        return schema
    try:
        with conn.begin_nested():  # a failed CREATE EXTENSION must not abort the migration's transaction
            conn.execute(sa.text('CREATE EXTENSION IF NOT EXISTS pg_trgm'))
    except sa.exc.DBAPIError as exc:
        log.warning('pg_trgm is not available (%s): the example text search reads every row',
                    str(exc).splitlines()[0])
    return conn.scalar(_TRGM_SCHEMA)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == 'sqlite':
        for statement in _SQLITE_DOWN:
            op.execute(statement)
    elif conn.dialect.name == 'postgresql':
        op.execute('DROP INDEX IF EXISTS ix_l07_example_search')
    op.drop_index('ix_l07_training_examples_group', table_name='l07_training_examples')

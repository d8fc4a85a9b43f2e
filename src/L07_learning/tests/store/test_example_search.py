"""The examples' text search (``q`` of the console and of ``GET /api/v1/examples``) on SQLite and PostgreSQL: it
answers from the search index of migration 0009, so the index must hold every stored row: those stored before the
migration (its backfill) and every insert, update and delete after it (SQLite's triggers)."""

from __future__ import annotations

from sqlalchemy import delete, insert, text

from L07_learning.store.db import Database
from L07_learning.store.repositories.example_review import ExampleReviewRepository
from L07_learning.store.repositories.examples import ExampleRepository, example_row
from L07_learning.store.tables import SqlTrainingExample
from L07_learning.tests.factories.curation import make_example

EXAMPLES = [
    make_example(1, input_text="Where is ORDER 4242 of the Alpine shop?", output_text="It ships on Monday.",
                 status="REVIEW"),
    make_example(2, input_text="Refund for order 42420 please", output_text="Refunds take 5 days; 100% of the fee."),
    make_example(3, input_text="Unrelated question", output_text="Use snake_case names."),
]


async def found(db: Database, text: str, **filters: str) -> list[str]:
    async with db.session() as session:
        rows, total, _ = await ExampleReviewRepository(session).page(text=text, **filters)
    assert total is None  # a text search is not counted
    return sorted(r["example_id"] for r in rows)


async def test_search_follows_inserts_updates_and_deletes_after_the_migration(db: Database) -> None:
    async with db.session() as session:
        assert await ExampleRepository(session).add_many(EXAMPLES) == 3
    assert await found(db, "order 4242") == ["ex-00001", "ex-00002"]  # a substring, in any letter case
    assert await found(db, "order 4242", status="REVIEW") == ["ex-00001"]
    assert await found(db, "ex-00003") == ["ex-00003"]  # the exact example id
    assert await found(db, "SHIPS ON monday") == ["ex-00001"]  # the output
    assert await found(db, "mo") == ["ex-00001"]  # shorter than a trigram
    assert await found(db, "e_c") == ["ex-00003"] and await found(db, "4242%") == []  # no LIKE wildcards
    assert await found(db, 'say "hi"') == []

    async with db.session() as session:
        await ExampleReviewRepository(session).set_answer("ex-00001", "It ships on Friday.", "f" * 64)
    assert await found(db, "monday") == []
    assert await found(db, "friday") == ["ex-00001"]

    async with db.session() as session:
        await session.execute(delete(SqlTrainingExample)
                              .where(SqlTrainingExample.example_id.in_(["ex-00002", "ex-00003"])))
    # The next example takes a deleted one's place (on SQLite its rowid): no trace of the deleted texts may point at it.
    async with db.session() as session:
        await ExampleRepository(session).add_many([make_example(4, input_text="Another question", output_text="Fine.")])
    assert await found(db, "order 4242") == ["ex-00001"]
    assert await found(db, "refund") == [] and await found(db, "snake") == []
    assert await found(db, "another") == ["ex-00004"]


async def test_migration_indexes_the_examples_stored_before_it(db: Database) -> None:
    await db.downgrade("0008")
    async with db.engine.begin() as conn:
        await conn.execute(insert(SqlTrainingExample.__table__),
                           [example_row(e, None, e.model_dump(mode="json")) for e in EXAMPLES])
    await db.upgrade()
    assert await found(db, "order 4242") == ["ex-00001", "ex-00002"]
    assert await found(db, "snake_case") == ["ex-00003"]
    async with db.session() as session:  # and the triggers keep those rows in step too
        await session.execute(delete(SqlTrainingExample).where(SqlTrainingExample.example_id == "ex-00001"))
    assert await found(db, "order 4242") == ["ex-00002"]


async def test_sqlite_without_the_trigram_tokenizer_still_searches(sqlite_db: Database, monkeypatch) -> None:
    """SQLite before 3.34 has no trigram tokenizer: the migration leaves the search table out and the search reads
    the rows, with the same answers."""
    import L07_learning.store.repositories.example_review as review

    monkeypatch.setattr(review, "SQLITE_TRIGRAM", False)
    async with sqlite_db.session() as session:
        assert await ExampleRepository(session).add_many(EXAMPLES) == 3
        # Empty the search table, so only reading the rows can answer.
        await session.execute(text("INSERT INTO l07_example_search(l07_example_search) VALUES ('delete-all')"))
    assert await found(sqlite_db, "order 4242") == ["ex-00001", "ex-00002"]
    assert await found(sqlite_db, "e_c") == ["ex-00003"]

"""What ``GET /api/v1/loop`` counts per policy group, read from the (status, task_type, agent_id, example_id) index
of migration 0009 on SQLite and PostgreSQL: the task types with ACCEPTED examples, and a group's examples with and
without those already in its dataset version."""

from __future__ import annotations

from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.loop import LoopRepository
from L07_learning.store.tables import SqlDatasetMember
from L07_learning.tests.factories.curation import make_example

# (task_type, agent_id, status) per example.
SHAPES = [("qa", "a1", "ACCEPTED"), ("qa", "a2", "ACCEPTED"), ("qa", "a1", "REJECTED"), ("zeta", "a1", "ACCEPTED"),
          ("alpha", "a2", "REVIEW"), ("code", "a2", "ACCEPTED"), ("code", "a2", "ACCEPTED"), ("qa", "a1", "ACCEPTED")]


async def test_accepted_task_types_and_group_counts(db: Database) -> None:
    examples = [make_example(i, task_type=t, status=s, metadata={"agent_id": a, "task_type": t})
                for i, (t, a, s) in enumerate(SHAPES)]
    async with db.session() as session:
        await ExampleRepository(session).add_many(examples)
        session.add_all([SqlDatasetMember(dataset_id="d", version="1.0.0", example_id=e.example_id, split="train",
                                          position=i, content_hash=e.content_hash)
                         for i, e in enumerate(examples[:2])])
    async with db.session() as session:
        repo = LoopRepository(session)
        assert await repo.accepted_task_types() == ["code", "qa", "zeta"]  # not "alpha": none ACCEPTED
        assert await repo.count_group(None, "qa", []) == 3
        assert await repo.count_group("a1", "qa", []) == 2
        assert await repo.count_group("a2", None, []) == 3
        assert await repo.count_group(None, None, []) == 6
        assert await repo.count_group(None, "qa", [], "d", "1.0.0") == 1  # ex 0 and 1 are in the dataset
        assert await repo.count_group("a1", "qa", [], "d", "1.0.0") == 1

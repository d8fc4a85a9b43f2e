"""Example identity (contract §9 "Examples", §5.4): several examples may come from one execution (turns of one
conversation); idempotency is on ``example_id``, and the examples of one execution always share a split."""

from __future__ import annotations

from sqlalchemy import func, select

from L07_learning.services.dataset_curator import DatasetCurator
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.tables import SqlTrainingExample
from L07_learning.tests.factories.curation import clean_examples

TURNS = 3


def _conversations(executions: int) -> list:
    """``executions`` x ``TURNS`` examples with distinct texts; the turns of one execution share its execution_id."""
    examples = clean_examples(executions * TURNS, seed=11)
    return [ex.model_copy(update={"execution_id": f"conv-{i // TURNS:03d}"}) for i, ex in enumerate(examples)]


async def test_create_dataset_keeps_every_turn_of_one_execution_in_one_split(db):
    examples = _conversations(40)
    ds = await DatasetCurator(db=db).create_dataset("conversations", examples, seed=3)

    split_of = {eid: split for split, ids in ds.splits.items() for eid in ids}
    assert set(split_of) == {e.example_id for e in examples}  # no turn refused or dropped
    by_execution: dict[str, set[str]] = {}
    for ex in examples:
        by_execution.setdefault(ex.execution_id, set()).add(split_of[ex.example_id])
    assert all(len(splits) == 1 for splits in by_execution.values())
    # Grouping must not collapse the evaluation splits: whole conversations land in val and test.
    assert len(ds.splits["val"]) >= TURNS and len(ds.splits["test"]) >= TURNS
    async with db.session() as s:
        stored = await s.scalar(select(func.count()).select_from(SqlTrainingExample)
                                .where(SqlTrainingExample.execution_id.like("conv-%")))
    assert stored == len(examples)


async def test_storing_the_same_example_twice_is_a_no_op_keyed_on_example_id(db):
    examples = _conversations(2)
    async with db.session() as s:
        assert await ExampleRepository(s).add_many(examples) == len(examples)
    async with db.session() as s:
        assert await ExampleRepository(s).add_many(examples) == 0  # a replay inserts nothing
        assert await ExampleRepository(s).count() == len(examples)

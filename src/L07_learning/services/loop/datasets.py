"""A dataset version from a group's ACCEPTED examples: what a loop trigger makes, and ``POST /api/v1/datasets``."""

from __future__ import annotations

from ...models.dataset import Dataset
from ...models.error_codes import L07Error, L07ErrorCode
from ...store.db import Database
from ...store.repositories.loop import LoopRepository
from ..dataset_curator import DatasetCurator
from .policies import GroupSelector


async def version_group(curator: DatasetCurator, db: Database, name: str, group: GroupSelector, *,
                        min_examples: int, reason: str | None = None, created_by: str = "l07",
                        split_ratios: dict[str, float] | None = None) -> Dataset:
    """The next version of dataset ``name`` from the group's ACCEPTED examples that are not in it yet.

    The first version is created with fresh splits (``split_ratios``, default the curator's); later ones are MINOR
    versions in which existing members keep their split. Below ``min_examples`` the version is still made and
    flagged ``below_minimum`` (contract §4.3).

    Raises:
        L07Error: E7020 when the group has no ACCEPTED example that the dataset lacks.
    """
    async with db.session() as session:
        repo = LoopRepository(session)
        head = await repo.dataset_head(name)
        fresh = await repo.group_examples(group.agent_id, group.task_type, group.labels, *(head or (None, None)))
    if not fresh:
        raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES,
                       f"no ACCEPTED example of this group is new to dataset {name!r}", name=name)
    if head is None:
        return await curator.create_dataset(name, fresh, split_ratios=split_ratios, min_examples=min_examples,
                                            reason=reason, created_by=created_by)
    return await curator.add_examples(head[0], fresh, min_examples=min_examples, reason=reason)

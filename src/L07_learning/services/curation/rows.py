"""A dataset version's examples as the rows training and validation consume (``models/tool_calls.Row``).

Tool schemas that L07 derived from one trace's calls show only the tool that trace called. Rows of one task type
get the schemas merged over the whole version (all splits), so the job trains, and the validator judges, with the
full set of tools the agent was seen to use: the model must pick the tool, not copy the only one offered.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ...models.dataset import Dataset
from ...models.tool_calls import Row
from ...models.training_example import TrainingExample
from ..ingestion.conversation import merged_tools


def derived_tools_by_task(examples: list[TrainingExample]) -> dict[str, list[dict[str, Any]]]:
    """Per task type, the merged schemas of the examples whose schemas were derived."""
    lists: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for ex in examples:
        if ex.tools and ex.metadata.get("tools_source") == "derived":
            lists[ex.task_type].append(ex.tools)
    return {task: merged_tools(tool_lists) for task, tool_lists in lists.items()}


def dataset_rows(dataset: Dataset, split: str, system_prompt: str | None = None) -> list[Row]:
    """The rows of one split, derived tool schemas merged per task type over the version."""
    merged = derived_tools_by_task(dataset.examples)
    return [ex.chat_row(system_prompt, merged.get(ex.task_type)) for ex in dataset.split_examples(split)]

"""What a job kind's worker-side hooks receive, and the helpers more than one kind needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.tool_calls import Row
from ...models.training_job import JobConfig, TrainingJob
from ...settings import Settings
from ...store.db import Database
from ..curation.rows import dataset_rows


@dataclass
class RunnerContext:
    """What a job kind's hooks may use: the database, settings, registry, curator and the job's work folder."""

    db: Database
    settings: Settings
    registry: Any
    curator: Any
    workdir: Path


PrepareHook = Callable[[TrainingJob, JobConfig, RunnerContext], Awaitable[dict[str, Any]]]
RegisterHook = Callable[[TrainingJob, dict[str, Any], RunnerContext], Awaitable[str | None]]
EntryPoint = Callable[[dict[str, Any], Callable[[str, dict[str, Any]], None], Callable[[], bool]], dict[str, Any]]


def job_config(job: TrainingJob) -> JobConfig:
    """The job's hyper-parameters as a ``JobConfig`` (stored jobs carry them as a dict)."""
    return JobConfig(**job.config) if isinstance(job.config, dict) else job.config


async def split_rows(job: TrainingJob, config: JobConfig, ctx: RunnerContext) -> dict[str, list[Row]]:
    """The job's dataset version as chat rows per split (train, val, test): messages, with the tool schemas when an
    example offered tools (``TrainingExample.chat_row``).

    Raises:
        L07Error: E7028/E7031 for the dataset, E7031 when its train split is empty.
    """
    dataset = await ctx.curator.get_dataset(job.dataset_id, job.dataset_version)
    rows = {split: dataset_rows(dataset, split, config.system_prompt) for split in ("train", "val", "test")}
    if not rows["train"]:
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE,
                       f"dataset {job.dataset_id} {dataset.version} has an empty train split")
    return rows

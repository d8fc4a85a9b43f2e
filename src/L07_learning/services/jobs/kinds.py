"""The job kinds: one closed table from ``JobType`` to how a job of that type runs.

Each kind is three files with parallel names: ``services/jobs/<kind>.py`` (worker side: prepare the spec, register
the output), ``pipelines/<kind>_pipeline.py`` (child side: ``entry``) and the public engine in ``services/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...models.training_job import JobType
from ...pipelines import distillation_pipeline, rlhf_pipeline, sft_pipeline
from . import distillation, rlhf, sft
from .context import EntryPoint, PrepareHook, RegisterHook


@dataclass(frozen=True)
class JobKind:
    """How one job type runs.

    Attributes:
        entry: Called in the child as ``entry(spec, emit, should_cancel) -> dict`` with
            ``{"adapter_dir" | "output_dir", "metrics", "cancelled"}``.
        prepare: Builds the JSON spec handed to ``entry`` (runs in the worker, may use the DB).
        register: Registers the output and returns its ``model_id``.
    """

    entry: EntryPoint
    prepare: PrepareHook
    register: RegisterHook


JOB_KINDS: dict[JobType, JobKind] = {
    JobType.SFT: JobKind(sft_pipeline.entry, sft.prepare, sft.register),
    JobType.RLHF: JobKind(rlhf_pipeline.entry, rlhf.prepare, rlhf.register),
    JobType.DISTILLATION: JobKind(distillation_pipeline.entry, distillation.prepare, distillation.register),
}

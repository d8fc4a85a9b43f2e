"""Loop policies (contract §9): which examples form a training group, when the group trains, and what it runs.

A policy file is YAML with a ``policies:`` list. Durations take ``90s``, ``30m``, ``24h``, ``7d`` or seconds. A trigger
field left out follows the settings (``L07_LOOP_MIN_NEW_EXAMPLES``, ``L07_LOOP_MAX_INTERVAL``,
``L07_MINIMUM_DATASET_SIZE``), so the default policy needs no file. ``task_type: "*"`` makes one group per task type
seen among the ACCEPTED examples, each with its own dataset, model track and breaker.

.. code-block:: yaml

    policies:
      - name: support
        group: {agent_id: agent-support-03}
        trigger: {min_new_examples: 200, max_interval: 12h, cooldown: 1h}
        training: {kind: auto}          # no preset: the measured recipe (jobs/presets.select_recipe)

A job whose tuned model does not improve on its base ends FAILED with E7035 and registers nothing; the run ends
FAILED and counts toward the policy's breaker like any failed run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...models.error_codes import L07Error, L07ErrorCode
from ...settings import Settings, parse_duration

ALL_TASK_TYPES = "*"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GroupSelector(_Strict):
    """The ACCEPTED examples a policy trains on; every field given must match (no field: all examples)."""

    agent_id: str | None = None
    task_type: str | None = None
    labels: list[str] = Field(default_factory=list, description="Every label listed must be on the example")


class Trigger(_Strict):
    """When a group trains: ``min_new_examples`` new ACCEPTED examples since its last dataset, or ``max_interval``
    since then with at least ``min_dataset_size`` in the group; never within ``cooldown`` of the last run."""

    min_new_examples: int | None = Field(default=None, ge=1)
    max_interval: timedelta | None = None
    min_dataset_size: int | None = Field(default=None, ge=1)
    cooldown: timedelta = timedelta(hours=1)

    @field_validator("max_interval", "cooldown", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_duration(value)


class Training(_Strict):
    """What a triggered run trains. ``auto``: distillation when a teacher is named, RLHF when the group has at least
    ``rlhf_min_pairs`` preference pairs, SFT otherwise."""

    kind: Literal["auto", "sft", "rlhf", "distillation"] = "auto"
    rlhf_min_pairs: int = Field(default=200, ge=2)
    teacher_model_id: str | None = None
    base_model_id: str | None = None
    preset: str | None = Field(default=None, description="JobConfig preset name or YAML path (configs/sft-*.yaml); "
                                                       "default: the recipe measured for the device, the base model's "
                                                       "size and the dataset's size (jobs/presets.select_recipe)")
    config: dict[str, Any] = Field(default_factory=dict, description="JobConfig fields on top of the preset or recipe")

    @model_validator(mode="after")
    def _teacher(self) -> "Training":
        if self.kind == "distillation" and not self.teacher_model_id:
            raise ValueError("kind 'distillation' needs teacher_model_id")
        return self


class LoopPolicy(_Strict):
    """One training group and its rules."""

    name: str = Field(pattern=_NAME)
    group: GroupSelector = Field(default_factory=GroupSelector)
    trigger: Trigger = Field(default_factory=Trigger)
    training: Training = Field(default_factory=Training)
    dataset: str | None = Field(default=None, description="Dataset (and model track) name; default loop-<name>")
    enabled: bool = True

    @property
    def dataset_name(self) -> str:
        return self.dataset or f"loop-{self.name}"

    def expand(self, task_types: list[str]) -> list["LoopPolicy"]:
        """This policy, or with ``task_type: "*"`` one copy per task type (named ``<name>.<task type>``)."""
        if self.group.task_type != ALL_TASK_TYPES:
            return [self]
        out = []
        for task_type in task_types:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task_type).strip("-")[:48] or "x"
            name = f"{self.name}.{slug}"
            out.append(self.model_copy(update={
                "name": name, "group": self.group.model_copy(update={"task_type": task_type}),
                "dataset": f"{self.dataset}.{slug}" if self.dataset else None}))
        return out

    def job_kind(self, preference_pairs: int) -> str:
        """``sft``, ``rlhf`` or ``distillation`` for the next run."""
        if self.training.kind != "auto":
            return self.training.kind
        if self.training.teacher_model_id:
            return "distillation"
        return "rlhf" if preference_pairs >= self.training.rlhf_min_pairs else "sft"


class PolicySet(_Strict):
    """Every policy the loop runs; names are unique."""

    policies: list[LoopPolicy] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "PolicySet":
        names = [p.name for p in self.policies]
        if len(names) != len(set(names)):
            raise ValueError(f"policy names must be unique: {sorted(n for n in set(names) if names.count(n) > 1)}")
        return self

    def expand(self, task_types: list[str]) -> list[LoopPolicy]:
        """The concrete policies for the task types seen (disabled ones left out)."""
        return [c for p in self.policies if p.enabled for c in p.expand(task_types)]


def default_policies() -> PolicySet:
    """The out-of-the-box set: one group per task type, triggers from the settings, SFT unless pairs abound."""
    return PolicySet(policies=[LoopPolicy(name="default", group=GroupSelector(task_type=ALL_TASK_TYPES))])


def load_policies(path: str | Path | None = None) -> PolicySet:
    """The policies of a YAML file (``yaml.safe_load``), or the default set without one.

    Raises:
        L07Error: E7905 when the file does not exist; E7500 when it is not YAML or breaks the schema (each problem
            named with its field).
    """
    if path is None:
        return default_policies()
    path = Path(path)
    if not path.is_file():
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"no policy file {path}", path=str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, f"policy file {path} is not YAML: {exc}",
                       path=str(path)) from exc
    if isinstance(raw, list):
        raw = {"policies": raw}
    try:
        return PolicySet.model_validate(raw)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in exc.errors()]
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                       f"policy file {path}: " + "; ".join(f"{p['field']}: {p['error']}" for p in problems),
                       path=str(path), problems=problems) from exc


@dataclass(frozen=True)
class TriggerDecision:
    """Whether a policy runs now, why, and (when not) what would make it run."""

    fire: bool
    reason: str
    next_trigger: str


def evaluate_trigger(policy: LoopPolicy, settings: Settings, *, now: datetime, new_examples: int, group_size: int,
                     since: datetime, last_run_at: datetime | None) -> TriggerDecision:
    """The trigger rule of §9 for one policy.

    Args:
        new_examples: ACCEPTED examples of the group not yet in its dataset.
        group_size: ACCEPTED examples of the group in all.
        since: When the group's last dataset was made (or when the loop first saw the group).
        last_run_at: The last run's start, for the cool-down.
    """
    t = policy.trigger
    min_new = t.min_new_examples or settings.loop_min_new_examples
    interval = t.max_interval or settings.loop_max_interval
    min_size = t.min_dataset_size or settings.minimum_dataset_size
    due_at = since + interval
    waiting = (f"at {max(min_new - new_examples, 1)} more new examples, or after {due_at.isoformat()} "
               f"with at least {min_size} examples (now {group_size})")
    if last_run_at is not None and now < last_run_at + t.cooldown:
        until = (last_run_at + t.cooldown).isoformat()
        return TriggerDecision(False, f"cool-down until {until}", f"not before {until}; then {waiting}")
    if new_examples >= min_new:
        return TriggerDecision(True, f"{new_examples} new examples (>= {min_new})", "now")
    if new_examples > 0 and now >= due_at and group_size >= min_size:
        return TriggerDecision(True, f"{interval} since the last dataset, {group_size} examples (>= {min_size})", "now")
    return TriggerDecision(False, f"{new_examples} new examples", waiting)

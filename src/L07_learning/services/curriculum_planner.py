"""Curriculum planning: how hard each example is, and in which order the SFT engine should see them.

Difficulty of an example (0 easy … 1 hard) starts from the contract's formula (§5.3) and adds two signals:

* base: the §5.3 formula of ``models/curriculum.py``, 0.3 × ``trace_length`` (tool steps / 10, capped at 1)
  + 0.3 × ``tool_steps`` (distinct tools / 5, capped) + 0.4 × ``quality`` (1 - quality_score / 100), so an example
  with no other signal keeps the contract's value (and its 0.5 when that value cannot be computed);
* ``failure_history``: half the example's own outcome (1 when it failed) and half the failure rate of its task type
  in the same set; it moves the score towards 1 by ``weights.failure_history`` × failure × (1 - base);
* ``model_loss`` (optional): the percentile rank of the base model's own loss on the example, measured by a real
  forward pass (``pipelines/example_loss.py``). When present it takes ``weights.model_loss`` of the score.

Bands follow ``DifficultyLevel`` (EASY < 0.33 <= MEDIUM < 0.66 <= HARD), or quantiles of the target mix 30/50/20 with
``banding="quantile"``. The default schedule is easy -> easy+medium -> all, one epoch each (contract §5.7).

``training_order(examples, config)`` is what an SFT job uses (``services/jobs/sft.py``): the plan as indices per epoch,
handed to the training process, which feeds it to the Trainer in that order (``pipelines/planned_epochs.py``).
``order_examples`` returns the same plan as one stream of examples.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ..models import (
    CurriculumStage,
    DifficultyLevel,
    JobConfig,
    L07Error,
    L07ErrorCode,
    LearningPath,
    TrainingExample,
)
from ..models.curriculum import DIFFICULTY_WEIGHTS, bounded_difficulty, difficulty_terms, weighted_difficulty
from ..models.tool_calls import plain_messages
from ..observability.metrics import ERRORS
from ..pipelines.example_loss import example_losses
from .dataset_curator import DatasetCurator

log = logging.getLogger(__name__)

Pacing = Literal["staged", "ordered", "linear", "root"]
_LEVEL_ORDER = [DifficultyLevel.EASY, DifficultyLevel.MEDIUM, DifficultyLevel.HARD]
TARGET_MIX = (0.3, 0.5, 0.2)  # contract §3.7: easy/medium/hard share used by quantile banding


class DifficultyWeights(BaseModel):
    """Weights of the contract's base formula (§5.3), the pull of failure history, and the model-loss share."""

    trace_length: float = Field(default=DIFFICULTY_WEIGHTS["trace_length"], ge=0)
    tool_steps: float = Field(default=DIFFICULTY_WEIGHTS["tool_steps"], ge=0)
    quality: float = Field(default=DIFFICULTY_WEIGHTS["quality"], ge=0)
    failure_history: float = Field(default=0.3, ge=0, le=1)
    model_loss: float = Field(default=0.5, ge=0, le=1)


class CurriculumConfig(BaseModel):
    """How a curriculum is built.

    Attributes:
        pacing: ``staged`` (cumulative stages), ``ordered`` (each epoch easy -> hard), ``linear`` / ``root``
            (competence-based sampling: at progress t the easiest c(t) share is eligible, c growing linearly or as a
            square root from ``initial_competence`` to 1, after Platanios et al. 2019).
        banding: ``absolute`` (the contract's thresholds) or ``quantile`` (30/50/20 target mix).
        weights: Signal weights.
        stage_epochs: Epochs per stage; must sum to ``JobConfig.epochs`` (else E7501 and the default schedule).
        initial_competence: Starting share for the competence-based pacings.
    """

    pacing: Pacing = "staged"
    banding: Literal["absolute", "quantile"] = "absolute"
    weights: DifficultyWeights = Field(default_factory=DifficultyWeights)
    stage_epochs: list[int] | None = None
    initial_competence: float = Field(default=0.2, gt=0, le=1)


class DifficultyBreakdown(BaseModel):
    """The signals behind one example's difficulty."""

    example_id: str
    difficulty: float
    level: DifficultyLevel
    signals: dict[str, float]


def _outcome_failed(example: TrainingExample) -> bool | None:
    for label in example.labels:
        if label.lower().startswith("outcome:"):
            value = label.split(":", 1)[1].strip().upper()
            return None if value == "UNKNOWN" else value != "SUCCESS"
    return None


def _tool_names(example: TrainingExample) -> list[str]:
    names = []
    for step in example.expected_actions:
        name = step.get("action") or step.get("tool") or step.get("tool_name") or step.get("name")
        if name:
            names.append(str(name))
    return names


def _percentile_ranks(values: dict[str, float]) -> dict[str, float]:
    finite = sorted((v, k) for k, v in values.items() if math.isfinite(v))
    if len(finite) <= 1:
        return {k: 0.5 for k in values}
    ranks = {k: i / (len(finite) - 1) for i, (_, k) in enumerate(finite)}
    return {k: ranks.get(k, 0.5) for k in values}  # an unmeasurable loss counts as average


def score_examples(examples: Sequence[TrainingExample], losses: dict[str, float] | None = None,
                   weights: DifficultyWeights | None = None) -> dict[str, DifficultyBreakdown]:
    """Difficulty of every example from its signals (see the module docstring). Pure and deterministic.

    Args:
        examples: The examples (the failure-history signal uses the task-type failure rate within this set).
        losses: Optional ``example_id -> base-model loss``.
        weights: Signal weights.

    Returns:
        ``example_id -> DifficultyBreakdown`` (level from the absolute bands).
    """
    w = weights or DifficultyWeights()
    failed_by_task: dict[str, list[bool]] = defaultdict(list)
    for e in examples:
        failed = _outcome_failed(e)
        if failed is not None:
            failed_by_task[e.task_type].append(failed)
    task_rate = {t: sum(v) / len(v) for t, v in failed_by_task.items()}
    loss_rank = _percentile_ranks({e.example_id: losses[e.example_id] for e in examples if e.example_id in losses}) if losses else {}

    base_weights = {"trace_length": w.trace_length, "tool_steps": w.tool_steps, "quality": w.quality}
    if sum(base_weights.values()) <= 0:
        raise L07Error(L07ErrorCode.CURRICULUM_SCHEDULE_INVALID, "difficulty weights must not all be zero")
    out: dict[str, DifficultyBreakdown] = {}
    for e in examples:
        tools = _tool_names(e)
        steps = max(e.execution_length, len(e.expected_actions))
        own = _outcome_failed(e)
        rate = task_rate.get(e.task_type, 0.0)
        failure = rate if own is None else 0.5 * float(own) + 0.5 * rate
        signals = difficulty_terms(steps, len(set(tools)), e.quality_score)
        score = bounded_difficulty(weighted_difficulty(signals, base_weights))
        signals["failure_history"] = failure
        score += w.failure_history * failure * (1 - score)
        if e.example_id in loss_rank:
            signals["model_loss"] = loss_rank[e.example_id]
            score = (1 - w.model_loss) * score + w.model_loss * signals["model_loss"]
        score = min(max(score, 0.0), 1.0)
        out[e.example_id] = DifficultyBreakdown(example_id=e.example_id, difficulty=score,
                                                level=DifficultyLevel.from_score(score), signals=signals)
    return out


def assign_levels(scores: dict[str, float], banding: str = "absolute") -> dict[str, DifficultyLevel]:
    """Band each example: the contract's absolute thresholds, or quantiles of the 30/50/20 target mix."""
    if banding == "absolute":
        return {k: DifficultyLevel.from_score(v) for k, v in scores.items()}
    ordered = sorted(scores, key=lambda k: (scores[k], k))
    n = len(ordered)
    easy_end, medium_end = round(TARGET_MIX[0] * n), round((TARGET_MIX[0] + TARGET_MIX[1]) * n)
    return {k: (DifficultyLevel.EASY if i < easy_end else DifficultyLevel.MEDIUM if i < medium_end else DifficultyLevel.HARD)
            for i, k in enumerate(ordered)}


def default_stage_epochs(epochs: int) -> list[int]:
    """The default schedule: easy -> easy+medium -> all, one epoch each; extra epochs go to the last stage."""
    if epochs == 1:
        return [1]
    if epochs == 2:
        return [1, 1]
    return [1, 1, epochs - 2]


def _stage_levels(n_stages: int) -> list[list[DifficultyLevel]]:
    # the last stage always trains on everything; earlier stages add one band at a time from the easy end
    return [_LEVEL_ORDER[: 3 - (n_stages - 1 - i)] for i in range(n_stages)]


def build_stages(examples: Sequence[TrainingExample], config: JobConfig, curriculum: CurriculumConfig | None = None,
                 losses: dict[str, float] | None = None) -> list[CurriculumStage]:
    """Cumulative stages (example ids sorted easy -> hard inside each stage).

    A ``stage_epochs`` schedule that does not sum to ``config.epochs`` is replaced by the default one (E7501,
    logged and counted, not raised: the contract marks it degraded).
    """
    cur = curriculum or CurriculumConfig()
    stage_epochs = cur.stage_epochs
    if stage_epochs is not None and (sum(stage_epochs) != config.epochs or not 1 <= len(stage_epochs) <= 3
                                     or any(e < 1 for e in stage_epochs)):
        log.warning("E7501 curriculum schedule %s does not fit %d epochs; default schedule used", stage_epochs, config.epochs)
        ERRORS.labels(error_code=L07ErrorCode.CURRICULUM_SCHEDULE_INVALID.value, error_type="curriculum").inc()
        stage_epochs = None
    stage_epochs = stage_epochs or default_stage_epochs(config.epochs)
    breakdown = score_examples(examples, losses, cur.weights)
    scores = {k: b.difficulty for k, b in breakdown.items()}
    levels = assign_levels(scores, cur.banding)
    ranked = sorted(scores, key=lambda k: (scores[k], k))
    progression = config.difficulty_progression or [0.5]
    stages: list[CurriculumStage] = []
    for i, (stage_levels, epochs) in enumerate(zip(_stage_levels(len(stage_epochs)), stage_epochs)):
        ids = [k for k in ranked if levels[k] in stage_levels]
        stages.append(CurriculumStage(stage_index=i, levels=stage_levels, epochs=epochs,
                                      target_mean_difficulty=progression[min(i, len(progression) - 1)], example_ids=ids))
    # A stage left empty by the bands (e.g. no EASY example at all) would train on nothing: start from the first
    # non-empty one instead, keeping the epoch total.
    while len(stages) > 1 and not stages[0].example_ids:
        empty = stages.pop(0)
        stages[0].epochs += empty.epochs
    for i, s in enumerate(stages):
        s.stage_index = i
    return stages


def curriculum_mode(config: JobConfig, curriculum: CurriculumConfig | None = None) -> str:
    """``none``, ``ordered``, ``staged``, ``linear`` or ``root``: what the job's settings ask of the planner."""
    return _mode(config, curriculum)


def _mode(config: JobConfig, curriculum: CurriculumConfig | None) -> str:
    if config.curriculum is not None:
        return config.curriculum if config.curriculum != "staged" else (curriculum.pacing if curriculum else "staged")
    if not config.use_curriculum:
        return "none"
    return curriculum.pacing if curriculum else "staged"


def plan_epochs(examples: Sequence[TrainingExample], config: JobConfig, curriculum: CurriculumConfig | None = None,
                losses: dict[str, float] | None = None) -> list[list[TrainingExample]]:
    """The examples to train on in each epoch, in order, for the job's curriculum setting.

    ``JobConfig.curriculum`` decides (``None`` means ``staged`` when ``use_curriculum`` else ``none``):

    * ``none``: every example each epoch, shuffled per epoch with ``config.seed`` when ``config.shuffle``;
    * ``ordered``: every example each epoch, easy -> hard;
    * ``staged``: the cumulative stages (``CurriculumConfig.pacing`` may turn it into ``ordered``, ``linear`` or
      ``root``); inside a stage the order is shuffled when ``config.shuffle``, else easy -> hard.

    Competence-based pacings return ``config.epochs`` lists of ``len(examples)`` draws each.
    """
    examples = list(examples)
    if not examples:
        return [[] for _ in range(config.epochs)]
    mode = _mode(config, curriculum)
    if mode == "none":
        out = []
        for epoch in range(config.epochs):
            order = list(examples)
            if config.shuffle:
                random.Random(config.seed + epoch).shuffle(order)
            out.append(order)
        return out
    cur = curriculum or CurriculumConfig()
    breakdown = score_examples(examples, losses, cur.weights)
    ranked = sorted(examples, key=lambda e: (breakdown[e.example_id].difficulty, e.example_id))
    if mode == "ordered":
        return [list(ranked) for _ in range(config.epochs)]
    if mode in ("linear", "root"):
        return _competence_epochs(ranked, config, cur.initial_competence, mode)
    by_id = {e.example_id: e for e in examples}
    out = []
    for stage in build_stages(examples, config, cur, losses):
        for epoch in range(stage.epochs):
            order = [by_id[i] for i in stage.example_ids]
            if config.shuffle:
                random.Random(config.seed * 1009 + stage.stage_index * 31 + epoch).shuffle(order)
            out.append(order)
    return out


def _competence_epochs(ranked: list[TrainingExample], config: JobConfig, c0: float, mode: str) -> list[list[TrainingExample]]:
    n = len(ranked)
    total = n * config.epochs
    rng = random.Random(config.seed)
    out: list[list[TrainingExample]] = []
    for epoch in range(config.epochs):
        draws = []
        for j in range(n):
            t = (epoch * n + j) / max(total - 1, 1)
            c = min(1.0, c0 + (1 - c0) * t) if mode == "linear" else min(1.0, math.sqrt(t * (1 - c0 ** 2) + c0 ** 2))
            draws.append(ranked[rng.randrange(max(1, math.ceil(c * n)))])
        out.append(draws)
    return out


def order_examples(examples: Sequence[TrainingExample], config: JobConfig, curriculum: CurriculumConfig | None = None,
                   losses: dict[str, float] | None = None) -> list[TrainingExample]:
    """The whole training stream (all epochs concatenated) for ``config``'s curriculum setting.

    The SFT pipeline trains one pass over this list without its own shuffling: epochs and order are already in it.
    """
    return [e for epoch in plan_epochs(examples, config, curriculum, losses) for e in epoch]


def training_order(examples: Sequence[TrainingExample], config: JobConfig, curriculum: CurriculumConfig | None = None,
                   losses: dict[str, float] | None = None) -> list[list[int]] | None:
    """The job's curriculum as indices into ``examples``, one list per epoch; None when the job has no curriculum.

    This is what an SFT job hands its training process (``spec["train_order"]``, see ``pipelines/planned_epochs.py``):
    with ``use_curriculum`` off (or ``curriculum="none"``) the Trainer keeps its own seeded shuffle, so None.
    """
    if curriculum_mode(config, curriculum) == "none":
        return None
    index = {e.example_id: i for i, e in enumerate(examples)}
    if len(index) != len(examples):
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, "example ids repeat inside the train split")
    return [[index[e.example_id] for e in epoch] for epoch in plan_epochs(examples, config, curriculum, losses)]


class CurriculumPlanner:
    """Builds learning paths for datasets and the per-example difficulty behind them.

    Args:
        curator: ``DatasetCurator`` used to load datasets; default one built from settings.
        config: Curriculum options.
    """

    def __init__(self, curator: object | None = None, config: CurriculumConfig | None = None) -> None:
        self._curator = curator
        self.config = config or CurriculumConfig()

    def _get_curator(self):  # type: ignore[no-untyped-def]
        if self._curator is None:
            self._curator = DatasetCurator()
        return self._curator

    async def model_losses(self, model_dir: str | Path, examples: Sequence[TrainingExample],
                           batch_size: int = 8) -> dict[str, float]:
        """The model's own loss on each example (real forward passes, in a worker thread).

        Raises:
            L07Error: E7032 when the model cannot be loaded.
        """
        try:
            values = await asyncio.to_thread(example_losses, model_dir, [plain_messages(e.chat_row()) for e in examples], batch_size)
        except (OSError, ValueError) as exc:
            raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot score examples with {model_dir}: {exc}") from None
        return {e.example_id: v for e, v in zip(examples, values)}

    async def build_path(self, examples: Sequence[TrainingExample], dataset_id: str, dataset_version: str,
                         job_config: JobConfig | None = None, losses: dict[str, float] | None = None) -> LearningPath:
        """A learning path over ``examples`` for ``job_config`` (default ``JobConfig()``)."""
        config = job_config or JobConfig()
        signals = ["trace_length", "tool_steps", "quality_score", "failure_history"] + (["model_loss"] if losses else [])
        stages = build_stages(examples, config, self.config, losses)
        return LearningPath(dataset_id=dataset_id, dataset_version=dataset_version, stages=stages,
                            difficulty_signals=signals, total_epochs=sum(s.epochs for s in stages),
                            pacing=_mode(config, self.config))

    async def plan(self, dataset_id: str, version: str | None = None, job_config: JobConfig | None = None,
                   model_dir: str | Path | None = None, split: str = "train") -> LearningPath:
        """Learning path for one split of a stored dataset; with ``model_dir`` the model's loss joins the signals.

        Raises:
            L07Error: E7028 for an unknown dataset (from the curator), E7020 when the split is empty.
        """
        dataset = await self._get_curator().get_dataset(dataset_id, version)
        examples = dataset.split_examples(split)
        if not examples:
            raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES, f"split '{split}' of dataset {dataset_id} is empty")
        losses = await self.model_losses(model_dir, examples) if model_dir else None
        return await self.build_path(examples, dataset.dataset_id, dataset.version, job_config, losses)

    def difficulties(self, examples: Sequence[TrainingExample], losses: dict[str, float] | None = None) -> dict[str, DifficultyBreakdown]:
        """Per-example difficulty and the signals behind it."""
        return score_examples(examples, losses, self.config.weights)

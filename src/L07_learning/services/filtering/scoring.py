"""Composite example score (contract §5.1), for one example or a whole batch with the same floats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...models.curriculum import difficulty, difficulty_terms, weighted_difficulty
from ...models.training_example import TrainingExample
from .pool import ExamplePool


def _composite(quality: Any, confidence: Any, diversity: Any, difficulty_value: Any, steps: Any,
               minimum: Callable[[Any, Any], Any]) -> Any:
    """§5.1 on 0-100, unclamped; ``minimum`` is ``min`` for one example, ``numpy.minimum`` for a batch."""
    informativeness = 0.5 * difficulty_value + 0.5 * minimum(steps / 5, 1)
    return 100 * (0.6 * quality / 100 + 0.2 * confidence + 0.1 * diversity + 0.1 * informativeness)


def composite_score(quality: float, confidence: float | None, diversity: float, difficulty: float, steps: int) -> float:
    """Contract §5.1 composite on 0-100 (a missing confidence counts as 0)."""
    return max(0.0, min(100.0, _composite(quality, confidence or 0.0, diversity, difficulty, steps, min)))


def example_score(example: TrainingExample, pool: ExamplePool) -> float:
    """``composite_score`` of one example against ``pool``."""
    return composite_score(
        example.quality_score, example.confidence, pool.diversity(example),
        difficulty(example.execution_length, example.tool_count, example.quality_score), example.execution_length,
    )


def batch_scores(examples: list[TrainingExample], pool: ExamplePool) -> np.ndarray:
    """``example_score`` of every example at once (same operations in the same order, so the same floats).

    The examples passed the completeness rule (quality in 0-100, counts >= 0), so the §5.3 difficulty needs none of
    the clamping ``models.curriculum.difficulty`` applies to unchecked input.
    """
    q = np.array([ex.quality_score for ex in examples], dtype=float)
    c = np.array([ex.confidence or 0.0 for ex in examples], dtype=float)
    steps = np.array([ex.execution_length for ex in examples], dtype=float)
    tools = np.array([ex.tool_count for ex in examples], dtype=float)
    if pool.empty:
        diversity = np.full(len(examples), 0.5)
    else:
        diversity = np.array([pool.diversity(ex) for ex in examples], dtype=float)
    hardness = weighted_difficulty(difficulty_terms(steps, tools, q, np.minimum))
    return np.clip(_composite(q, c, diversity, hardness, steps, np.minimum), 0.0, 100.0)

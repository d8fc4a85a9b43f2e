"""Statistics of one dataset version (contract §3.2): counts per split, task type, domain, difficulty and source,
quality and length distributions, class balance."""

from __future__ import annotations

import math
import statistics as st
from collections import Counter

from ...models.dataset import DatasetStatistics
from ...models.training_example import TrainingExample

_QUALITY_BUCKETS = ((0, 60), (60, 70), (70, 80), (80, 90), (90, 101))


def _quantiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def q(p: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))])

    return {"min": float(ordered[0]), "p50": q(0.5), "p90": q(0.9), "max": float(ordered[-1]),
            "mean": round(st.fmean(ordered), 2)}


def compute_statistics(examples: list[TrainingExample], splits: dict[str, list[str]], min_examples: int) -> DatasetStatistics:
    """Statistics of ``examples`` arranged in ``splits``."""
    split_of = {eid: s for s, ids in splits.items() for eid in ids}
    qualities = [ex.quality_score for ex in examples]
    confidences = [ex.confidence for ex in examples if ex.confidence is not None]
    task_counts = Counter(ex.task_type for ex in examples)
    n = len(examples)
    by_split: dict[str, Counter[str]] = {}
    for ex in examples:
        by_split.setdefault(split_of.get(ex.example_id, "train"), Counter())[ex.task_type] += 1
    histogram = {
        f"{lo}-{min(hi, 100)}": sum(1 for q in qualities if lo <= q < hi) for lo, hi in _QUALITY_BUCKETS
    }
    entropy = -sum(c / n * math.log2(c / n) for c in task_counts.values()) if n else 0.0
    lengths = {f"input_{k}": v for k, v in _quantiles([len(ex.input_text) for ex in examples]).items()}
    lengths.update({f"output_{k}": v for k, v in _quantiles([len(ex.output_text) for ex in examples]).items()})
    return DatasetStatistics(
        total_examples=n,
        train_split_count=len(splits.get("train", [])),
        val_split_count=len(splits.get("val", [])),
        test_split_count=len(splits.get("test", [])),
        examples_by_difficulty=dict(Counter(
            (ex.difficulty_level.value if hasattr(ex.difficulty_level, "value") else str(ex.difficulty_level)).lower()
            for ex in examples
        )),
        examples_by_task_type=dict(task_counts),
        examples_by_domain=dict(Counter(ex.domain for ex in examples)),
        examples_by_source_type=dict(Counter(ex.source_type.value for ex in examples)),
        task_type_by_split={s: dict(c) for s, c in by_split.items()},
        min_quality_score=min(qualities) if qualities else None,
        avg_quality_score=round(st.fmean(qualities), 4) if qualities else None,
        quality_score_stddev=round(st.pstdev(qualities), 4) if qualities else None,
        avg_confidence=round(st.fmean(confidences), 4) if confidences else None,
        length_chars=lengths,
        quality_histogram=histogram,
        max_class_share=round(max(task_counts.values()) / n, 4) if n else 0.0,
        label_entropy=round(entropy, 4),
        below_minimum=n < min_examples,
    )

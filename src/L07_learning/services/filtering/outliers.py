"""Outlier term of the filter (contract §5.2 rule 8, §8 #19): IsolationForest on [execution_length, quality,
confidence] with ``predict == -1`` as the decision, plus quality more than k sigma from its agent's mean."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

log = logging.getLogger(__name__)


def isolation_outliers(features: np.ndarray, contamination: float, n_estimators: int, seed: int) -> np.ndarray:
    """Boolean mask of rows IsolationForest calls outliers.

    Raises:
        ValueError: propagated from scikit-learn on unusable input; the filter turns it into E7023 and skips.
    """
    from sklearn.ensemble import IsolationForest  # imported here: scikit-learn costs ~0.5 s to import

    forest = IsolationForest(n_estimators=n_estimators, contamination=contamination, random_state=seed)
    return forest.fit_predict(features) == -1


def agent_quality_outliers(agent_ids: list[str | None], qualities: list[float], sigma: float, min_n: int) -> set[int]:
    """Indices whose quality lies more than ``sigma`` standard deviations from their agent's batch mean."""
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, agent in enumerate(agent_ids):
        groups[agent].append(i)
    out: set[int] = set()
    for idxs in groups.values():
        if len(idxs) < min_n:
            continue
        q = np.asarray([qualities[i] for i in idxs], dtype=float)
        std = float(q.std())
        if std == 0.0:
            continue
        mean = float(q.mean())
        out.update(i for i, v in zip(idxs, q) if abs(v - mean) > sigma * std)
    return out

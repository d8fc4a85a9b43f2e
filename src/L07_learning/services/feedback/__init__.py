"""Production feedback (contract §4.2, §9): per-model outcome series, the release watch and its automatic rollback.

``outcomes`` answers ``l07 models outcomes`` and ``GET /api/v1/models/{id}/outcomes``; ``watch.ReleaseWatch`` runs on
every loop tick and on demand; ``stats`` is the statistical test and states its false-alarm rate.
"""

from .outcomes import model_outcomes
from .stats import Summary, Thresholds, Verdict, judge_window, window_alpha
from .watch import ReleaseWatch

__all__ = ["ReleaseWatch", "Summary", "Thresholds", "Verdict", "judge_window", "model_outcomes", "window_alpha"]

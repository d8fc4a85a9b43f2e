"""The canary verdict (contract §4.2, §8 #9): during L04's canary (by default 20% of traffic for 60 minutes, success
criterion "error_rate < 1%", as the release's ``model_deployment_approved`` event says), the candidate's outcomes
are compared with the incumbent's (its predecessor, serving the rest) over the same window and the same task types.

One look, ``CANARY_GRACE_S`` after the window closes (so late L06 scores are in), with three one-sided tests at
a_1 / 2 = alpha * 3/pi^2 each (``stats.judge_window`` for quality down > 5% and error rate up > 1 point, plus the
success criterion: candidate error rate above the stated limit). By the union bound a canary that meets all three is
failed with probability at most 0.92 * alpha (``watch_false_alarm_rate``); the long-run watch spends its own alpha,
so a release within every threshold is rolled back with probability at most about 2 * alpha over its life. Fewer
than ``watch_canary_min_samples`` scored outcomes on either side makes the canary INCONCLUSIVE (no rollback; the
long-run watch goes on).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any

from .stats import Summary, Thresholds, judge_window

CANARY_GRACE_S = 300.0
_CRITERION = re.compile(r"^\s*error_rate\s*<\s*([0-9]*\.?[0-9]+)\s*%\s*$")


def error_limit(config: dict[str, Any]) -> float | None:
    """The error-rate limit of ``success_criteria`` (``"error_rate < 1%"`` -> 0.01); None when there is none."""
    match = _CRITERION.match(str(config.get("success_criteria") or ""))
    return float(match.group(1)) / 100.0 if match else None


def canary_window(config: dict[str, Any], started_at: datetime) -> dict[str, Any]:
    """The stored canary phase of a release that starts at ``started_at``."""
    minutes = float(config.get("duration_minutes") or 60)
    return {"config": config, "ends_at": (started_at + timedelta(minutes=minutes)).isoformat(),
            "error_limit": error_limit(config)}


def judge_canary(candidate: Summary, incumbent: Summary, thresholds: Thresholds, limit: float | None) -> dict[str, Any]:
    """The canary's three tests; ``rollback`` is True when any is significant."""
    verdict = judge_window(candidate, incumbent, 1, thresholds)
    out = {**verdict.to_dict(), "criterion_limit": limit, "criterion_breached": False, "criterion_z": None}
    if limit is not None:
        p = (candidate.errors + 0.5) / (candidate.n + 1)
        z = (candidate.error_rate - limit) / math.sqrt(p * (1 - p) / candidate.n)
        out.update(criterion_z=z, criterion_breached=z > verdict.critical_z)
    reasons = [verdict.reason] if verdict.rollback else []
    if out["criterion_breached"]:
        reasons.append(f"error rate {candidate.error_rate:.2%} breaks the criterion error_rate < {limit:.2%} "
                       f"(z={out['criterion_z']:.2f})")
    out["rollback"] = bool(reasons)
    out["reason"] = "; ".join(reasons) or "canary within thresholds"
    return out

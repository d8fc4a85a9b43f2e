"""The watch's test measured against the false-alarm rate its docstring states (services/feedback/stats.py):
simulated releases at the §4.2 thresholds are rolled back at most ``alpha`` of the time over 10,000 outcomes each,
releases inside them essentially never, and a real drop is caught in its first window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from L07_learning.services.feedback.stats import Summary, Thresholds, judge_window, window_alpha

ALPHA = Thresholds().false_alarm_rate


def rollback_rate(releases: int, quality_ratio: float, error_delta: float, seed: int, windows: int = 10,
                  size: int = 1000, baseline: int = 5000) -> float:
    """Share of simulated releases (quality ~ N(80 * ratio, 10), errors ~ Bernoulli(0.02 + delta)) that any of
    their ``windows`` windows rolls back, each against its own simulated predecessor baseline."""
    rng = np.random.default_rng(seed)
    thresholds = Thresholds()
    alarms = 0
    for _ in range(releases):
        bq, be = rng.normal(80.0, 10.0, baseline), rng.random(baseline) < 0.02
        base = Summary(baseline, float(bq.mean()), float(bq.var(ddof=1)), int(be.sum()))
        cq = rng.normal(80.0 * quality_ratio, 10.0, (windows, size))
        ce = rng.random((windows, size)) < 0.02 + error_delta
        for k in range(windows):
            window = Summary(size, float(cq[k].mean()), float(cq[k].var(ddof=1)), int(ce[k].sum()))
            if judge_window(window, base, k + 1, thresholds).rollback:
                alarms += 1
                break
    return alarms / releases


def test_alpha_spending_sums_to_the_stated_rate():
    assert sum(window_alpha(k, ALPHA) for k in range(1, 100_000)) == pytest.approx(ALPHA, rel=1e-4)
    assert window_alpha(1, ALPHA) > window_alpha(2, ALPHA) > window_alpha(100, ALPHA) > 0
    with pytest.raises(ValueError):
        window_alpha(0, ALPHA)


def test_false_alarm_rate_at_the_thresholds_is_within_the_stated_rate():
    """The worst case the contract tolerates: exactly 5% lower quality and exactly 1 point more errors."""
    measured = rollback_rate(2000, 0.95, 0.01, seed=1)
    assert 0 < measured <= ALPHA, measured


def test_noise_inside_the_thresholds_never_rolls_back():
    assert rollback_rate(2000, 0.98, 0.005, seed=3) == 0.0


def test_real_drops_are_caught_in_the_first_window():
    assert rollback_rate(200, 0.90, 0.0, seed=4, windows=1) == 1.0
    assert rollback_rate(200, 1.0, 0.05, seed=5, windows=1) == 1.0


def test_verdict_numbers_and_reason():
    base = Summary.of([type("S", (), {"quality": q, "is_error": q < 60})() for q in (50, 70, 80, 90, 100)])
    assert base.n == 5 and base.mean == 78 and base.errors == 1 and math.isclose(base.var, 370.0)
    verdict = judge_window(Summary(1000, 60.0, 100.0, 20), Summary(5000, 80.0, 100.0, 100), 1, Thresholds())
    assert verdict.rollback and verdict.quality_degraded and not verdict.error_rate_up
    assert verdict.quality_ratio == pytest.approx(0.75) and "75.0% of the predecessor's" in verdict.reason
    fine = judge_window(Summary(1000, 80.0, 100.0, 20), Summary(5000, 80.0, 100.0, 100), 1, Thresholds())
    assert not fine.rollback and fine.reason == "within thresholds"

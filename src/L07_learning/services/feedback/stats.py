"""The watch's statistical test: is a released model's window of outcomes worse than its predecessor's baseline by
more than contract §4.2 allows (quality down > 5%, error rate up > 1 point)?

Each evaluation window holds ``watch_min_samples`` (default 1000) consecutive scored outcomes of the candidate, so a
drop must be sustained over at least that many samples. Window ``k`` (1, 2, ...) runs two one-sided z-tests against
the baseline (the predecessor's newest ``watch_baseline_samples`` outcomes before the release):

* quality, H0: mean_c >= (1 - d) * mean_b (d = 0.05). z = (mean_c - (1 - d) mean_b) / sqrt(var_c/n_c +
  (1 - d)^2 var_b/n_b); the drop is significant when z < -z(1 - a_k/2).
* errors, H0: p_c <= p_b + e (e = 0.01). z = (p_c - p_b - e) / sqrt(p~_c(1-p~_c)/n_c + p~_b(1-p~_b)/n_b), with
  p~ = (x + 0.5)/(n + 1) so a zero count keeps a finite variance; the rise is significant when z > z(1 - a_k/2).

The false-alarm budget ``alpha`` (``watch_false_alarm_rate``, default 0.01) is spent across windows as
a_k = alpha * 6 / (pi^2 k^2), which sums to alpha over an unlimited number of windows. By the union bound over windows
and over the two tests, a release whose true quality is at most 5% below its predecessor's and whose true error rate
is at most 1 point above it is rolled back with probability at most ``alpha`` over its whole life (normal
approximation, n >= 1000 per window). Measured (``tests/services/feedback/test_watch_stats.py``, alpha = 0.01,
quality ~ N(80, 10), 2% baseline errors, 5000 baseline samples, 10 windows = 10,000 outcomes per release): at exactly
the thresholds (5% lower quality and 1 point more errors, the worst case the contract tolerates) 0.75% of 2,000
simulated releases were rolled back; at 2% lower quality and 0.5 point more errors, none of 2,000; a 10% quality
drop was caught in its first window in 200 of 200. The price of spending alpha this way is power in late windows:
window 100 tests at a_100 = 6e-5 * alpha, which still sees a 10% drop in one window of 1000 outcomes of spread 10
(z about 11 against a critical value of about 5).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Protocol

_Z = NormalDist()


class _Sample(Protocol):
    quality: float
    is_error: bool


@dataclass(frozen=True)
class Summary:
    """Count, mean and sample variance of quality, and the error count of a set of outcomes."""

    n: int
    mean: float
    var: float
    errors: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.n if self.n else 0.0

    @classmethod
    def of(cls, samples: Iterable[_Sample]) -> "Summary":
        n, total, total_sq, errors = 0, 0.0, 0.0, 0
        for s in samples:
            n += 1
            total += s.quality
            total_sq += s.quality * s.quality
            errors += bool(s.is_error)
        mean = total / n if n else 0.0
        var = max(total_sq - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, var, errors)


@dataclass(frozen=True)
class Thresholds:
    """Contract §4.2 numbers and the false-alarm budget (from the settings)."""

    quality_drop: float = 0.05
    error_rate_rise: float = 0.01
    false_alarm_rate: float = 0.01

    @classmethod
    def from_settings(cls, settings: Any) -> "Thresholds":
        return cls(settings.watch_quality_drop, settings.watch_error_rate_rise, settings.watch_false_alarm_rate)


def window_alpha(k: int, alpha: float) -> float:
    """The false-alarm share of window ``k`` (from 1): alpha * 6 / (pi^2 k^2); the shares sum to alpha."""
    if k < 1:
        raise ValueError("windows count from 1")
    return alpha * 6.0 / (math.pi ** 2 * k * k)


@dataclass(frozen=True)
class Verdict:
    """One window's test: whether it rolls back, why, and the numbers."""

    window: int
    alpha: float
    quality_ratio: float | None
    quality_z: float
    quality_degraded: bool
    error_rate_delta: float
    error_z: float
    error_rate_up: bool
    critical_z: float

    @property
    def rollback(self) -> bool:
        return self.quality_degraded or self.error_rate_up

    @property
    def reason(self) -> str:
        parts = []
        if self.quality_degraded:
            parts.append(f"quality at {self.quality_ratio:.1%} of the predecessor's (z={self.quality_z:.2f})")
        if self.error_rate_up:
            parts.append(f"error rate up {self.error_rate_delta * 100:.2f} points (z={self.error_z:.2f})")
        return "; ".join(parts) or "within thresholds"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rollback": self.rollback, "reason": self.reason}


def judge_window(candidate: Summary, baseline: Summary, k: int, thresholds: Thresholds) -> Verdict:
    """Window ``k``'s two one-sided tests at a_k / 2 each (module docstring)."""
    alpha = window_alpha(k, thresholds.false_alarm_rate)
    critical = _Z.inv_cdf(1.0 - alpha / 2.0)
    keep = 1.0 - thresholds.quality_drop
    se_q = math.sqrt(candidate.var / candidate.n + keep * keep * baseline.var / baseline.n)
    z_q = (candidate.mean - keep * baseline.mean) / max(se_q, 1e-9)
    pc = (candidate.errors + 0.5) / (candidate.n + 1)
    pb = (baseline.errors + 0.5) / (baseline.n + 1)
    se_e = math.sqrt(pc * (1 - pc) / candidate.n + pb * (1 - pb) / baseline.n)
    delta = candidate.error_rate - baseline.error_rate
    z_e = (delta - thresholds.error_rate_rise) / se_e
    ratio = candidate.mean / baseline.mean if baseline.mean else None
    return Verdict(window=k, alpha=alpha, quality_ratio=ratio, quality_z=z_q, quality_degraded=z_q < -critical,
                   error_rate_delta=delta, error_z=z_e, error_rate_up=z_e > critical, critical_z=critical)

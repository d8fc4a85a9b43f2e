"""Reward signals and preference pairs for RLHF (contract §5.5, §3.6, §8 #20).

Two pure functions turn L06 feedback into training signal:

* ``compute_rewards`` applies the four-step reward pipeline (normalise, weight by confidence, penalise bad
  outcomes, standardise over the batch and clip to ±2). Signals below the confidence floor are dropped *with a
  reason* and counted, never silently.
* ``build_preference_pairs`` pairs examples of the same normalised input (or, when no input repeats, the same
  task type) whose quality differs by at least 10 points; the higher-scored answer is ``chosen``.
  ``pair_from_correction`` turns an explicit correction into a pair (corrected answer chosen over the original).

No I/O here: the engine persists and audits what these functions return.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from itertools import combinations

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.reward_signal import PreferencePair, RewardSignal
from ...models.training_example import TrainingExample, normalise_text
from ...observability.metrics import ERRORS, REWARD_SIGNALS_DROPPED

log = logging.getLogger(__name__)

CONFIDENCE_FLOOR = 0.5
"""Signals with a confidence below this are dropped (§5.5 step 2)."""
OUTCOME_PENALTIES: dict[str, float] = {"timeout": 0.5, "error": 0.3, "constraint_violation": 0.2}
"""Subtracted from the weighted reward for each bad outcome (§5.5 step 3)."""
REWARD_CLIP = 2.0
"""Standardised rewards are clipped to ±2 (§8 #20: standardisation alone is unbounded)."""
STD_EPSILON = 1e-6
"""Below this batch standard deviation, standardisation is skipped (E7302)."""
MIN_PAIR_MARGIN = 10.0
"""Minimum quality difference (0-100 scale) for two examples to form a preference pair (§5.5)."""


@dataclass
class RewardBatch:
    """The result of ``compute_rewards``.

    Attributes:
        rewards: Kept signals with ``r_normalized``, ``r_weighted``, ``r_penalized`` and ``r_final`` filled in.
        dropped: ``(signal, reason)`` for every signal left out (``low_confidence``, ``no_confidence``).
        standardised: False when the batch had < 2 signals or zero variance (then E7302 was logged).
        mean: Batch mean of ``r_penalized`` (None when not standardised).
        std: Batch standard deviation of ``r_penalized`` (None when not standardised).
        warnings: Error codes raised as warnings (``E7302``).
    """

    rewards: list[RewardSignal]
    dropped: list[tuple[RewardSignal, str]] = field(default_factory=list)
    standardised: bool = False
    mean: float | None = None
    std: float | None = None
    warnings: list[str] = field(default_factory=list)


def _clip(value: float) -> float:
    return max(-REWARD_CLIP, min(REWARD_CLIP, value))


def _multi_objective(signal: RewardSignal, latency_target_ms: float, token_budget: float) -> float:
    """Spec Q2's composite 0.5·q/100 + 0.3·(1 − latency/target) + 0.2·(1 − token_cost/budget), rescaled to [-1, 1]."""
    latency = signal.metrics.get("latency_ms")
    cost = signal.metrics.get("token_cost")
    if latency is None or cost is None:
        raise L07Error(
            L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
            "multi_objective rewards need metrics.latency_ms and metrics.token_cost",
            signal_id=signal.signal_id,
        )
    composite = 0.5 * signal.quality_score / 100 + 0.3 * (1 - latency / latency_target_ms) + 0.2 * (1 - cost / token_budget)
    # The composite lives on [0, 1] for on-target answers; map it onto r_norm's [-1, 1] scale so the later steps
    # (confidence weighting, penalties, clipping) mean the same thing in both modes.
    return 2 * composite - 1


def compute_rewards(
    signals: list[RewardSignal],
    mode: str = "pipeline",
    latency_target_ms: float = 1000.0,
    token_budget: float = 1.0,
) -> RewardBatch:
    """Apply the §5.5 reward pipeline to one batch of signals.

    ``r_norm = (q − 50)/50``; ``r_w = r_norm × c`` (c < 0.5 dropped); ``r_pen = r_w − 0.5·timeout − 0.3·error −
    0.2·constraint_violation``; ``r_final = clip((r_pen − mean)/std, −2, 2)``. With fewer than two kept signals or a
    standard deviation below 1e-6, standardisation is skipped, ``r_final = clip(r_pen)`` and E7302 is logged.

    Args:
        signals: The batch. Input objects are not modified; copies are returned.
        mode: ``pipeline`` (default) or ``multi_objective`` (spec Q2, needs ``latency_ms``/``token_cost`` metrics).
        latency_target_ms: Latency target for ``multi_objective``.
        token_budget: Token-cost budget for ``multi_objective``.

    Returns:
        A ``RewardBatch``.

    Raises:
        L07Error: E7500 for an unknown mode; E7110 when ``multi_objective`` metrics are missing.
    """
    if mode not in {"pipeline", "multi_objective"}:
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, f"unknown reward mode {mode!r}", mode=mode)
    kept: list[RewardSignal] = []
    dropped: list[tuple[RewardSignal, str]] = []
    for signal in signals:
        c = signal.confidence_level
        if c is None or c < CONFIDENCE_FLOOR:
            reason = "no_confidence" if c is None else "low_confidence"
            dropped.append((signal, reason))
            REWARD_SIGNALS_DROPPED.labels(reason=reason).inc()
            continue
        if mode == "pipeline":
            r_norm = (signal.quality_score - 50.0) / 50.0
        else:
            r_norm = _multi_objective(signal, latency_target_ms, token_budget)
        r_w = r_norm * c
        r_pen = r_w - OUTCOME_PENALTIES.get(signal.outcome.lower(), 0.0)
        kept.append(signal.model_copy(update={"r_normalized": r_norm, "r_weighted": r_w, "r_penalized": r_pen}))

    batch = RewardBatch(rewards=kept, dropped=dropped)
    values = [s.r_penalized for s in kept]
    mean = sum(values) / len(values) if values else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else 0.0
    if len(values) < 2 or std < STD_EPSILON:
        batch.warnings.append(L07ErrorCode.REWARD_SIGNAL_NOISE_HIGH.value)
        ERRORS.labels(error_code=L07ErrorCode.REWARD_SIGNAL_NOISE_HIGH.value, error_type="W").inc()
        log.warning(
            "E7302 reward standardisation skipped (%d signals, std %.3g): r_final = clip(r_pen)", len(values), std
        )
        for s in kept:
            s.r_final = _clip(s.r_penalized)
        return batch
    batch.standardised, batch.mean, batch.std = True, mean, std
    for s in kept:
        s.r_final = _clip((s.r_penalized - mean) / std)
    return batch


def _pairs_in_group(group: list[TrainingExample], min_margin: float, shared_prompt: bool) -> list[PreferencePair]:
    pairs: list[PreferencePair] = []
    for a, b in combinations(group, 2):
        hi, lo = (a, b) if a.quality_score >= b.quality_score else (b, a)
        margin = hi.quality_score - lo.quality_score
        if margin < min_margin or normalise_text(hi.output_text) == normalise_text(lo.output_text):
            continue
        pairs.append(
            PreferencePair(
                # Within an input group both answers share the prompt; in the task-type fallback the chosen
                # example's input is the prompt (§5.5 allows pairing by task type when no input repeats).
                prompt=hi.input_text,
                chosen=hi.output_text,
                rejected=lo.output_text,
                chosen_example_id=hi.example_id,
                rejected_example_id=lo.example_id,
                margin=margin,
                task_type=hi.task_type,
                source="extractor" if shared_prompt else "extractor_task_type",
            )
        )
    return pairs


def build_preference_pairs(examples: list[TrainingExample], min_margin: float = MIN_PAIR_MARGIN) -> list[PreferencePair]:
    """Build preference pairs from scored examples (contract §5.5).

    Examples are grouped by normalised input; when no input occurs twice, they are grouped by ``task_type`` instead.
    Within a group, every two examples whose quality differs by ``>= min_margin`` form a pair, the higher score
    ``chosen``. Pairs with identical answers are skipped (they teach nothing).

    Args:
        examples: Scored examples (quality 0-100).
        min_margin: Minimum quality difference.

    Returns:
        Pairs in a deterministic order (group order of first appearance, then input order).
    """
    by_input: dict[str, list[TrainingExample]] = {}
    for ex in examples:
        by_input.setdefault(normalise_text(ex.input_text), []).append(ex)
    shared = [g for g in by_input.values() if len(g) > 1]
    if shared:
        return [p for g in shared for p in _pairs_in_group(g, min_margin, shared_prompt=True)]
    by_task: dict[str, list[TrainingExample]] = {}
    for ex in examples:
        by_task.setdefault(ex.task_type, []).append(ex)
    return [p for g in by_task.values() for p in _pairs_in_group(g, min_margin, shared_prompt=False)]


def pair_from_correction(example: TrainingExample, corrected_output: str, corrected_score: float = 100.0) -> PreferencePair:
    """A preference pair from explicit feedback: the corrected answer is preferred over the original one.

    Args:
        example: The example that was corrected.
        corrected_output: The correction (non-empty, different from the original).
        corrected_score: Quality the correction stands for (default 100); the margin is its gap to the original.

    Raises:
        L07Error: E7110 when the correction is empty or equals the original answer.
    """
    if not corrected_output.strip() or normalise_text(corrected_output) == normalise_text(example.output_text):
        raise L07Error(
            L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
            "a correction must be non-empty and differ from the original answer",
            example_id=example.example_id,
        )
    return PreferencePair(
        prompt=example.input_text,
        chosen=corrected_output,
        rejected=example.output_text,
        rejected_example_id=example.example_id,
        margin=max(0.0, corrected_score - example.quality_score),
        task_type=example.task_type,
        source="correction",
    )


def answer_scores(
    examples: list[TrainingExample],
    mode: str = "pipeline",
    latency_target_ms: float = 1000.0,
    token_budget: float = 1.0,
) -> dict[str, float]:
    """The score (0-100) that ranks two answers to one goal, by reward mode (``RLHFConfig.reward_mode``).

    ``pipeline``: L06's quality score q, as §5.5 pairs them. ``multi_objective``: spec Q2's composite
    ``0.5·q/100 + 0.3·(1 − latency/target) + 0.2·(1 − token_cost/budget)`` × 100, clipped to [0, 100], from the
    example's ``metadata.latency_ms`` and ``metadata.token_cost``; a slower or dearer answer loses to a quick one of
    similar quality. The ≥ 10-point pairing margin applies on this scale in both modes.

    Raises:
        L07Error: E7500 for an unknown mode; E7110 naming the first example without latency / cost metrics.
    """
    if mode not in {"pipeline", "multi_objective"}:
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, f"unknown reward mode {mode!r}", mode=mode)
    if mode == "pipeline":
        return {e.example_id: e.quality_score for e in examples}
    out: dict[str, float] = {}
    for e in examples:
        metrics = {k: float(e.metadata[k]) for k in ("latency_ms", "token_cost") if e.metadata.get(k) is not None}
        signal = RewardSignal(quality_score=e.quality_score, confidence_level=e.confidence, metrics=metrics,
                              task_type=e.task_type, execution_id=e.execution_id)
        try:
            r_norm = _multi_objective(signal, latency_target_ms, token_budget)
        except L07Error as exc:
            raise L07Error(exc.code, f"example {e.example_id}: {exc.message}", example_id=e.example_id) from None
        out[e.example_id] = min(100.0, max(0.0, 50.0 + 50.0 * r_norm))
    return out

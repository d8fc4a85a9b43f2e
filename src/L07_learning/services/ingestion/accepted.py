"""What an example's acceptance adds to RLHF data (contract §5.5): its answer on its reward signal, and preference
pairs.

Pairs are the default reward-model and DPO training data, so they are made from what the quality filter let through,
never at ingestion: an answer the filter quarantined (a secret, poisoning, too much PII) or has not decided yet
(PENDING) never becomes a pair, and the text a pair holds is the example as the filter stored it (secrets masked, PII
redacted), redacted once more for storage.

* Two executions of one task: an ACCEPTED answer is paired with the most recent earlier ACCEPTED answer to the same
  normalised prompt whose quality differs by at least ``MIN_PAIR_MARGIN`` (both sides accepted).
* A reviewer's correction: when its QUALITY_FEEDBACK example is ACCEPTED, the reference answer is chosen over the
  original answer of that execution, taken from the original's stored row. The original was usually scored low and so
  REJECTED or sent to REVIEW for its quality; that is what a rejected side is for. An original that is QUARANTINED or
  still PENDING gives no pair.

``record_accepted`` runs in the transaction that stores the filter's decisions. An example accepted later by another
path (a reviewer approving a REVIEW item) must call it in the transaction that changes its status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ...models.error_codes import L07Error
from ...models.reward_signal import PreferencePair
from ...models.training_example import ExampleSource, ExampleStatus, TrainingExample, normalise_text
from ...store.repositories.examples import ExampleRepository
from ...store.repositories.rewards import RewardRepository
from ..filtering.redaction import redact_for_storage
from . import examples as build
from .rewards import MIN_PAIR_MARGIN, pair_from_correction

NO_CORRECTION_PAIR = (ExampleStatus.QUARANTINED, ExampleStatus.PENDING)
"""Statuses of an original answer that never become the rejected side of a correction pair."""


async def record_accepted(session: AsyncSession, examples: list[TrainingExample],
                          redact: Callable[[Any], Any] = redact_for_storage) -> int:
    """Attach the ACCEPTED ``examples``' answers to their reward signals and store the preference pairs they make.

    Args:
        session: The transaction that records the examples as ACCEPTED.
        examples: Accepted examples as stored (the filter's masked and redacted text); others are ignored.
        redact: Storage form of the answers and pairs.

    Returns:
        The number of new pairs.
    """
    accepted = [ex for ex in examples if _status(ex) is ExampleStatus.ACCEPTED]
    if not accepted:
        return 0
    repo = RewardRepository(session, redact=redact)
    pairs = await _repeat_pairs(repo, [ex for ex in accepted if ex.source_type is ExampleSource.EXECUTION_TRACE])
    pairs += await _correction_pairs(session, [ex for ex in accepted
                                               if ex.source_type is ExampleSource.QUALITY_FEEDBACK])
    return await repo.add_pairs(pairs)


def _status(ex: TrainingExample) -> ExampleStatus:
    return ex.status if isinstance(ex.status, ExampleStatus) else ExampleStatus(str(ex.status))


async def _repeat_pairs(repo: RewardRepository, traces: list[TrainingExample]) -> list[PreferencePair]:
    """Each answer paired with the most recent earlier accepted answer to its prompt (one partner per answer keeps
    hot prompts linear), then recorded on its signal as the newest accepted answer to that prompt."""
    if not traces:
        return []
    hashes = [build.prompt_hash(ex.input_text) for ex in traces]
    recent = await repo.answers_by_prompt(hashes)
    pairs: list[PreferencePair] = []
    answers: list[tuple[str, str, dict[str, Any]]] = []
    for h, ex in zip(hashes, traces):
        earlier = recent.setdefault(h, [])
        new_out = normalise_text(ex.output_text)
        for other in earlier:
            margin = abs(ex.quality_score - other["quality_score"])
            if (other["example_id"] != ex.example_id and margin >= MIN_PAIR_MARGIN
                    and normalise_text(other["output_text"]) != new_out):
                pairs.append(_pair(ex, other, margin))
                break
        answer = {"example_id": ex.example_id, "output_text": ex.output_text, "prompt": ex.input_text}
        earlier.insert(0, {**answer, "quality_score": ex.quality_score})
        del earlier[5:]
        evaluation_id = ex.metadata.get("evaluation_id")
        if ex.execution_id and evaluation_id:
            answers.append((build.signal_id(ex.execution_id, evaluation_id), h, answer))
    await repo.attach_answers(answers)
    return pairs


def _pair(ex: TrainingExample, other: dict[str, Any], margin: float) -> PreferencePair:
    new = {"example_id": ex.example_id, "output_text": ex.output_text, "quality_score": ex.quality_score}
    chosen, rejected = (new, other) if ex.quality_score > other["quality_score"] else (other, new)
    return PreferencePair(
        pair_id=build.example_id_for(ExampleSource.EXECUTION_TRACE, f"pair:{chosen['example_id']}:{rejected['example_id']}"),
        prompt=ex.input_text, chosen=chosen["output_text"], rejected=rejected["output_text"],
        chosen_example_id=chosen["example_id"], rejected_example_id=rejected["example_id"], margin=margin,
        task_type=ex.task_type, source="extractor",
    )


async def _correction_pairs(session: AsyncSession, feedback: list[TrainingExample]) -> list[PreferencePair]:
    if not feedback:
        return []
    original_ids = {ex.example_id: build.example_id_for(ExampleSource.EXECUTION_TRACE, ex.execution_id or "")
                    for ex in feedback}
    stored = {o.example_id: o for o in await ExampleRepository(session).get_many(sorted(set(original_ids.values())))}
    pairs = []
    for fb in feedback:
        original = stored.get(original_ids[fb.example_id])
        if original is None or _status(original) in NO_CORRECTION_PAIR:
            continue
        try:
            pair = pair_from_correction(original, fb.output_text, corrected_score=fb.quality_score)
        except L07Error:
            continue  # the reference equals the original answer: nothing to prefer
        pairs.append(pair.model_copy(update={
            "pair_id": build.example_id_for(ExampleSource.QUALITY_FEEDBACK, f"pair:correction:{fb.example_id}"),
            "chosen_example_id": fb.example_id, "prompt": fb.input_text}))
    return pairs

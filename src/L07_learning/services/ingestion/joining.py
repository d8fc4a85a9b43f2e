"""Step 2 of a batch, without I/O: traces, planning records and scores meet in their join rows and complete examples
(contract §1.7, §1.10) and reward signals (§5.5).

``Joiner.apply`` works on a ``BatchState`` (the batch's join rows, loaded by the caller). It is deterministic in the
rows and the events, which is what lets ``prescan`` run it once ahead of the transaction on rows read there, so the
examples the transaction composes are the ones already scanned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...events.cloudevent import PLAN, SCORE, TRACE
from ...models.reward_signal import RewardSignal
from ...models.training_example import ExampleSource, TrainingExample
from ...store.repositories.joins import PLAN_PREFIX, JoinRow
from . import examples as build
from .parsing import Parsed
from .results import ItemResult
from .rewards import compute_rewards


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the pipeline's bookkeeping keys (so hashes depend on content only)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def join_keys(work: list[Parsed]) -> list[str]:
    """The join rows the events of ``work`` can touch: their execution's and its plan's."""
    keys: list[str] = []
    for p in work:
        ex_id = p.record.get("execution_id") if p.record else None
        if ex_id:
            keys += [ex_id, PLAN_PREFIX + ex_id]
    return keys


@dataclass
class BatchState:
    """The join rows of one batch and the reward signals its scores make."""

    now: datetime
    rows: dict[str, JoinRow]
    signals: list[tuple[RewardSignal, dict[str, Any] | None]] = field(default_factory=list)

    def row(self, key: str) -> JoinRow:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = JoinRow(key=key, first_seen_at=self.now, dirty=True)
        return row

    def scored(self, ex: TrainingExample, score: dict[str, Any], outcome: str) -> None:
        self.signals.append((build.reward_signal(score, outcome, ex.task_type, processed=True), None))

    def rewards(self) -> list[tuple[RewardSignal, dict[str, Any] | None]]:
        """The batch's scores as reward signals (§5.5 pipeline); low-confidence ones are dropped with a reason."""
        raw_signals = [s for s, _ in self.signals]
        if not raw_signals:
            return []
        kept = {s.signal_id: s for s in compute_rewards(raw_signals).rewards}
        return [(kept[s.signal_id], None) for s in raw_signals if s.signal_id in kept]


def apply(st: BatchState, p: Parsed, items: dict[int, ItemResult], seq: int) -> None:
    """Join one parsed event into ``st``; the examples it completes go on its ``items`` entry. Raises ``L07Error`` or
    ``ValidationError`` when an example cannot be built from what the event carries."""
    rec = dict(p.record)
    rec["_event_id"] = p.event.id
    rec["_seq"] = seq
    item = items[p.index]
    if p.kind == TRACE:
        row = st.row(rec["execution_id"])
        if row.trace is not None:
            # A second trace event (new id) for an execution already traced: nothing new to learn.
            items[p.index] = ItemResult("duplicate")
            return
        row.trace, row.trace_at, row.dirty = rec, st.now, True
        if row.scores:
            item.examples += _complete_trace(st, row)
        else:
            item.status = "pending"
    elif p.kind == SCORE:
        ex_id = rec["execution_id"]
        row = st.row(ex_id)
        row.scores.append(rec)
        row.score_at, row.dirty = st.now, True
        if row.trace is not None and row.status == "expired":
            # Past the late-join TTL the trace no longer takes scores: the score is kept as an unprocessed signal.
            task_type = row.trace.get("task_type") or rec.get("task_type") or "general"
            st.signals.append((build.reward_signal(rec, row.trace["outcome"], task_type, processed=False), None))
        elif row.trace is not None and row.status == "joined":
            item.examples += _late_score(st, row, rec)
        elif row.trace is not None:
            item.examples += _complete_trace(st, row)
        else:
            item.status = "pending"
        plan_row = st.rows.get(PLAN_PREFIX + ex_id)
        if plan_row is not None and plan_row.trace is not None and plan_row.status != "joined":
            item.examples += _complete_plan(plan_row, row.scores)
    elif p.kind == PLAN:
        if not (rec.get("execution_id") and rec.get("goal") and rec.get("plan_steps")):
            return  # stored as processed; only goal + steps + execution_id make an SFT example (§1.4)
        plan_row = st.row(PLAN_PREFIX + rec["execution_id"])
        if plan_row.trace is not None:
            items[p.index] = ItemResult("duplicate")
            return
        plan_row.trace, plan_row.trace_at, plan_row.dirty = rec, st.now, True
        scores = st.rows.get(rec["execution_id"])
        if scores is not None and scores.scores:
            item.examples += _complete_plan(plan_row, scores.scores)
        else:
            item.status = "pending"
    # RESPONSE events feed cost/latency statistics only (§1.5): recorded as processed.
    if item.examples:
        item.status = "extracted"


def _complete_trace(st: BatchState, row: JoinRow) -> list[TrainingExample]:
    trace = row.trace
    score, conflict = build.pick_score(row.scores)
    event_ids = [trace["_event_id"]] + [s["_event_id"] for s in row.scores]
    ex = build.trace_example(public(trace), score, event_ids, score_conflict=conflict)
    row.status, row.dirty = "joined", True
    out = [ex]
    st.scored(ex, score, trace["outcome"])
    if score["evaluation_method"] == "human_review" and score.get("reference_output"):
        out.append(_feedback(trace, score, event_ids))
    return out


def _late_score(st: BatchState, row: JoinRow, score: dict[str, Any]) -> list[TrainingExample]:
    """A score for an execution already joined: a reward signal, and a correction when a reviewer gave one."""
    trace = row.trace
    task_type = trace.get("task_type") or score.get("task_type") or "general"
    st.signals.append((build.reward_signal(score, trace["outcome"], task_type, processed=True), None))
    if score["evaluation_method"] == "human_review" and score.get("reference_output"):
        return [_feedback(trace, score, [trace["_event_id"], score["_event_id"]])]
    return []


def _feedback(trace: dict[str, Any], score: dict[str, Any], event_ids: list[str]) -> TrainingExample:
    """QUALITY_FEEDBACK example (contract §1.10): the reviewer's reference answer is the output.

    Its quality is 100: the answer was written by the human reviewer, it is not an estimate of the agent's work
    (the reviewer's own score rates the original answer and stays on that example).
    """
    ref = score["reference_output"]
    # Its correction pair (reference chosen over the original answer) is made when the filter accepts it.
    return build.trace_example(public(trace), {**score, "quality_score": 100.0}, event_ids,
                               source_type=ExampleSource.QUALITY_FEEDBACK, output_text=ref)


def _complete_plan(plan_row: JoinRow, scores: list[dict[str, Any]]) -> list[TrainingExample]:
    score, _ = build.pick_score(scores)
    plan = plan_row.trace
    ex = build.plan_example(public(plan), score, [plan["_event_id"]] + [s["_event_id"] for s in scores])
    plan_row.status, plan_row.dirty = "joined", True
    return [ex]

"""Behaviour-pattern mining: which tool-call sequences go with success (or failure) per agent and task type.

For each (agent type, task type) group the miner

1. finds frequent tool-call subsequences with PrefixSpan (gaps allowed, support counted once per trace),
2. keeps only closed patterns (a pattern with a super-pattern of equal support describes the same traces),
3. compares the success rate of the traces containing a pattern with those that do not (Fisher's exact test),
4. corrects for the many patterns tested with Benjamini-Hochberg over the whole run, and keeps q < ``fdr_alpha``.

PrefixSpan is written here (about twenty lines) instead of taken from the ``prefixspan`` package because the
significance test needs the set of supporting traces of each pattern, which that package does not return, and a
length cap that prunes the search.

Patterns are stored with a deterministic id, so a daily re-run updates rows instead of piling up duplicates.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ..events.publisher import EventPublisher
from ..models import BehavioralPattern, L07Error, L07ErrorCode, PatternConfidence, TrainingExample
from ..observability.metrics import PATTERN_TRACES_REJECTED, PATTERNS_DISCOVERED
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from ..store.repositories.audit import audit
from ..store.repositories.patterns import PatternRepository

log = logging.getLogger(__name__)

_PATTERN_NS = uuid.UUID("6f1d8a52-6c0e-4a8e-9d53-3b7f0f1c2a11")
MAX_EVIDENCE_IDS = 20  # contract §2.1: evidence_execution_ids holds at most 20 ids


class TraceRecord(BaseModel):
    """One execution reduced to what pattern mining needs.

    Attributes:
        execution_id: Id of the execution (used as evidence).
        agent_type: Agent type the pattern is reported for.
        task_type: Task type; base rates and patterns are per task type.
        tools: Tool calls in order.
        success: Whether the execution succeeded.
    """

    execution_id: str = Field(min_length=1)
    agent_type: str = Field(default="unknown", min_length=1)
    task_type: str = Field(default="general", min_length=1)
    tools: list[str]
    success: bool


class PatternMiningConfig(BaseModel):
    """Thresholds of a mining run.

    Attributes:
        min_support: Fewest supporting traces for a pattern to be tested.
        min_support_fraction: ... or this share of the group's traces, whichever is larger.
        max_length: Longest tool sequence mined.
        min_group_traces: Groups (agent type, task type) with fewer traces are skipped.
        fdr_alpha: Benjamini-Hochberg false-discovery rate; patterns with q below it are kept.
        closed_only: Drop patterns that a longer pattern with the same support already describes.
        recommend_min_traces: Contract §5.7: supporting traces a recommended behaviour needs.
        recommend_max_p: Contract §5.7: two-proportion z-test p-value a recommendation needs.
        min_confidence: Contract §3.7: below this confidence nothing is published.
    """

    min_support: int = Field(default=10, ge=1)
    min_support_fraction: float = Field(default=0.05, ge=0, le=1)
    max_length: int = Field(default=4, ge=1, le=10)
    min_group_traces: int = Field(default=30, ge=2)
    fdr_alpha: float = Field(default=0.05, gt=0, lt=1)
    closed_only: bool = True
    recommend_min_traces: int = Field(default=100, ge=1)
    recommend_max_p: float = Field(default=0.05, gt=0, lt=1)
    min_confidence: float = Field(default=0.5, ge=0, le=1)


class MiningResult(BaseModel):
    """What a mining run found and what it could not use."""

    patterns: list[BehavioralPattern] = Field(default_factory=list)
    recommended: dict[str, list[str]] = Field(default_factory=dict, description="agent_type -> recommended pattern ids")
    traces_used: int = 0
    patterns_tested: int = 0
    groups: dict[str, int] = Field(default_factory=dict, description="'agent_type/task_type' -> traces")
    skipped_groups: dict[str, int] = Field(default_factory=dict, description="groups below min_group_traces")
    rejected: dict[str, int] = Field(default_factory=dict, description="reason code -> traces not used")
    events_published: int = 0


# --- trace conversion ---------------------------------------------------------------------------------------------


def _tool_name(step: Any) -> str | None:
    if isinstance(step, str):
        return step or None
    if isinstance(step, dict):
        for key in ("action", "tool", "tool_name", "name"):
            value = step.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _outcome_from_labels(labels: Iterable[str]) -> bool | None:
    for label in labels:
        if isinstance(label, str) and label.lower().startswith("outcome:"):
            value = label.split(":", 1)[1].strip().upper()
            if value == "UNKNOWN":
                return None
            return value == "SUCCESS"
    return None


def to_trace_record(item: TraceRecord | TrainingExample | dict[str, Any]) -> TraceRecord:
    """Turn a stored example, a raw trace dict or a ``TraceRecord`` into a ``TraceRecord``.

    A dict may be a trace record (``tools``, ``success``), a stored example (``expected_actions``, ``labels``) or an
    execution-trace event's data (``execution_trace``, ``outcome``).

    Raises:
        L07Error: E7010 when no outcome or no execution id can be found, E7012 when a tool step has no name.
    """
    if isinstance(item, TraceRecord):
        return item
    if isinstance(item, TrainingExample):
        item = {
            "execution_id": item.execution_id or item.example_id, "agent_id": item.agent_id,
            "task_type": item.task_type, "expected_actions": item.expected_actions, "labels": item.labels,
            "metadata": item.metadata,
        }
    if not isinstance(item, dict):
        raise L07Error(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"trace must be a dict or TrainingExample, got {type(item).__name__}")
    metadata = item.get("metadata") or {}
    if "tools" in item:
        steps = item["tools"]
    else:
        steps = item.get("expected_actions", item.get("execution_trace"))
    if not isinstance(steps, list):
        raise L07Error(L07ErrorCode.TRACE_MISSING_FIELDS, "trace has no list of tool steps", field="tools")
    tools = [_tool_name(s) for s in steps]
    if any(t is None for t in tools):
        raise L07Error(L07ErrorCode.MALFORMED_STEP_STRUCTURE, "a tool step has no action/tool name")
    success = item.get("success")
    if success is None:
        outcome = item.get("outcome")
        if isinstance(outcome, dict):
            success = outcome.get("success")
        elif isinstance(outcome, str):
            success = outcome.lower() == "success"
        else:
            success = _outcome_from_labels(item.get("labels") or [])
    if success is None:
        raise L07Error(L07ErrorCode.TRACE_MISSING_FIELDS, "trace has no outcome", field="outcome")
    agent_type = item.get("agent_type") or metadata.get("agent_type") or item.get("agent_id") or metadata.get("agent_id") or "unknown"
    try:
        return TraceRecord(
            execution_id=str(item.get("execution_id") or item.get("example_id") or ""),
            agent_type=str(agent_type), task_type=str(item.get("task_type") or metadata.get("task_type") or "general"),
            tools=tools, success=bool(success),
        )
    except ValidationError as exc:
        raise L07Error(L07ErrorCode.TRACE_MISSING_FIELDS, f"trace record invalid: {exc.errors()[0]['msg']}") from None


# --- mining -------------------------------------------------------------------------------------------------------


def prefixspan(sequences: Sequence[Sequence[str]], min_support: int, max_length: int) -> dict[tuple[str, ...], list[int]]:
    """Frequent subsequences (gaps allowed) and the indices of the sequences that contain each.

    Args:
        sequences: The sequences.
        min_support: Fewest distinct sequences a pattern must occur in.
        max_length: Longest pattern returned.

    Returns:
        ``pattern -> sorted list of supporting sequence indices``.
    """
    found: dict[tuple[str, ...], list[int]] = {}

    def grow(prefix: tuple[str, ...], projected: list[tuple[int, int]]) -> None:
        # projected: (sequence index, position right after the prefix's earliest match)
        extensions: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for sid, start in projected:
            seen: set[str] = set()
            seq = sequences[sid]
            for pos in range(start, len(seq)):
                item = seq[pos]
                if item not in seen:
                    seen.add(item)
                    extensions[item].append((sid, pos + 1))
        for item, proj in extensions.items():
            if len(proj) < min_support:
                continue
            pattern = prefix + (item,)
            found[pattern] = [sid for sid, _ in proj]
            if len(pattern) < max_length:
                grow(pattern, proj)

    grow((), [(i, 0) for i in range(len(sequences))])
    return found


def closed_patterns(found: dict[tuple[str, ...], list[int]]) -> dict[tuple[str, ...], list[int]]:
    """Keep the patterns no one-longer super-pattern matches with equal support (that suffices by anti-monotonicity)."""
    not_closed: set[tuple[str, ...]] = set()
    for pattern, sids in found.items():
        if len(pattern) < 2:
            continue
        for i in range(len(pattern)):
            sub = pattern[:i] + pattern[i + 1:]
            if sub in found and len(found[sub]) == len(sids):
                not_closed.add(sub)
    return {p: s for p, s in found.items() if p not in not_closed}


def two_proportion_z_test(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (contract §5.7); 1.0 when it is undefined."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (s1 / n1 - s2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def pattern_id_for(agent_type: str, task_type: str, tools: Sequence[str], polarity: str) -> str:
    """Deterministic id, so re-mining the same pattern updates its row."""
    return str(uuid.uuid5(_PATTERN_NS, "\x1f".join([agent_type, task_type, polarity, *tools])))


def analyse_traces(traces: Sequence[TraceRecord], config: PatternMiningConfig | None = None) -> MiningResult:
    """Mine significant success and failure tool-call patterns from trace records (pure: no storage, no events).

    Args:
        traces: Trace records (any agent and task types; grouped here).
        config: Thresholds; defaults as documented on ``PatternMiningConfig``.

    Returns:
        The significant patterns (sorted by q-value) and the run's counts. ``recommended`` lists the patterns that
        pass the recommendation gates of contract §5.7.
    """
    from scipy.stats import false_discovery_control, fisher_exact

    cfg = config or PatternMiningConfig()
    result = MiningResult()
    groups: dict[tuple[str, str], list[TraceRecord]] = defaultdict(list)
    for t in traces:
        groups[(t.agent_type, t.task_type)].append(t)

    candidates: list[dict[str, Any]] = []
    for (agent_type, task_type), group in sorted(groups.items()):
        name = f"{agent_type}/{task_type}"
        if len(group) < cfg.min_group_traces:
            result.skipped_groups[name] = len(group)
            continue
        result.groups[name] = len(group)
        result.traces_used += len(group)
        n = len(group)
        successes = sum(t.success for t in group)
        base_rate = successes / n
        min_support = max(cfg.min_support, math.ceil(cfg.min_support_fraction * n))
        found = prefixspan([t.tools for t in group], min_support, cfg.max_length)
        if cfg.closed_only:
            found = closed_patterns(found)
        for pattern, sids in found.items():
            k = len(sids)
            if k == n:
                continue  # present in every trace: nothing to compare against
            s_in = sum(group[i].success for i in sids)
            s_out = successes - s_in
            _, p = fisher_exact([[s_in, k - s_in], [s_out, (n - k) - s_out]], alternative="two-sided")
            candidates.append({
                "agent_type": agent_type, "task_type": task_type, "tools": list(pattern), "k": k, "n": n,
                "s_in": s_in, "s_out": s_out, "base_rate": base_rate, "p": float(p),
                "evidence": [group[i].execution_id for i in sids[:MAX_EVIDENCE_IDS]],
            })
    result.patterns_tested = len(candidates)
    if not candidates:
        return result

    qvalues = false_discovery_control([c["p"] for c in candidates], method="bh")
    recommended: dict[str, list[str]] = defaultdict(list)
    for c, q in zip(candidates, qvalues):
        q = float(q)
        if q >= cfg.fdr_alpha:
            continue
        k, n, s_in, s_out = c["k"], c["n"], c["s_in"], c["s_out"]
        rate = s_in / k
        rest_rate = s_out / (n - k)
        polarity = "success" if rate > rest_rate else "failure"
        confidence = 1.0 - q  # the pattern's probability of not being a false discovery, by BH's reading
        seq = " -> ".join(c["tools"])
        pattern = BehavioralPattern(
            pattern_id=pattern_id_for(c["agent_type"], c["task_type"], c["tools"], polarity),
            agent_type=c["agent_type"], task_type=c["task_type"], pattern_type="tool_sequence",
            description=(f"{'success' if polarity == 'success' else 'failure'} pattern in {c['task_type']}: {seq} "
                         f"succeeds {rate:.0%} of {k} times vs base rate {c['base_rate']:.0%}"),
            tool_sequence=c["tools"], support_count=k, success_rate=rate, baseline_success_rate=c["base_rate"],
            improvement=rate - c["base_rate"], lift=(rate / c["base_rate"]) if c["base_rate"] > 0 else 0.0,
            p_value=min(1.0, c["p"]), q_value=q, confidence=confidence,
            confidence_level=PatternConfidence.from_score(confidence), polarity=polarity,
            evidence_execution_ids=c["evidence"],
        )
        result.patterns.append(pattern)
        z_p = two_proportion_z_test(s_in, k, s_out, n - k)
        if (polarity == "success" and k >= cfg.recommend_min_traces and z_p < cfg.recommend_max_p
                and confidence >= cfg.min_confidence):
            recommended[c["agent_type"]].append(pattern.pattern_id)
    result.patterns.sort(key=lambda p: (p.q_value or 0.0, -p.support_count))
    result.recommended = dict(recommended)
    return result


class PatternExtractor:
    """Finds, stores and publishes behaviour patterns (contract §2.1, §3.7, §5.7).

    Args:
        db: Database; default the configured one.
        settings: Settings; default ``get_settings()``.
        config: Mining thresholds.
        publisher: Event publisher (outbox).
    """

    def __init__(self, db: Database | None = None, settings: Settings | None = None,
                 config: PatternMiningConfig | None = None, publisher: EventPublisher | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self.config = config or PatternMiningConfig()
        self.publisher = publisher or EventPublisher()

    @staticmethod
    def to_records(items: Iterable[Any]) -> tuple[list[TraceRecord], dict[str, int]]:
        """Convert raw traces, never raising per record: unusable ones are counted by error code."""
        records: list[TraceRecord] = []
        rejected: dict[str, int] = defaultdict(int)
        for item in items:
            try:
                records.append(to_trace_record(item))
            except L07Error as exc:
                rejected[exc.code.value] += 1
                PATTERN_TRACES_REJECTED.labels(reason=exc.code.value).inc()
        return records, dict(rejected)

    async def mine(self, traces: Iterable[Any] | None = None, agent_type: str | None = None,
                   task_type: str | None = None, publish: bool = True) -> MiningResult:
        """Mine patterns, store them and publish ``behavior_pattern_discovered`` / ``_recommended``.

        Args:
            traces: Trace records, raw trace dicts or ``TrainingExample``s; default the stored examples.
            agent_type: With stored examples, only this agent (``agent_id``).
            task_type: With stored examples, only this task type.
            publish: Write the events to the outbox (in the same transaction as the stored patterns).

        Returns:
            The mining result, including how many traces were rejected and why.
        """
        if traces is None:
            async with self.db.session() as session:
                traces = await PatternRepository(session).trace_rows(agent_type=agent_type, task_type=task_type)
        records, rejected = self.to_records(traces)
        result = analyse_traces(records, self.config)
        result.rejected = rejected
        by_id = {p.pattern_id: p for p in result.patterns}
        async with self.db.session() as session:
            repo = PatternRepository(session)
            for pattern in result.patterns:
                await repo.save(pattern)
                PATTERNS_DISCOVERED.labels(polarity=pattern.polarity).inc()
                if publish and pattern.confidence >= self.config.min_confidence:
                    await self.publisher.publish(session, "learning.behavior_pattern_discovered",
                                                 _discovered_data(pattern), subject=pattern.pattern_id)
                    result.events_published += 1
            if publish:
                for agent, ids in sorted(result.recommended.items()):
                    patterns = [by_id[i] for i in ids]
                    trace_count = sum(n for g, n in result.groups.items() if g.split("/", 1)[0] == agent)
                    await self.publisher.publish(session, "learning.behavior_pattern_recommended",
                                                 _recommended_data(agent, patterns, trace_count), subject=agent)
                    result.events_published += 1
            await audit(session, "patterns.mine", "behavior_pattern", None, details={
                "traces_used": result.traces_used, "patterns": len(result.patterns), "tested": result.patterns_tested,
                "rejected": rejected, "recommended": {a: len(v) for a, v in result.recommended.items()}})
        log.info("pattern mining: %d traces, %d tested, %d significant, rejected %s",
                 result.traces_used, result.patterns_tested, len(result.patterns), rejected)
        return result

    async def list_patterns(self, agent_type: str | None = None, limit: int = 1000) -> list[BehavioralPattern]:
        """Stored patterns, newest first."""
        async with self.db.session() as session:
            return await PatternRepository(session).list(agent_type=agent_type, limit=limit)


def _discovered_data(p: BehavioralPattern) -> dict[str, Any]:
    return {
        "pattern_id": p.pattern_id, "agent_type": p.agent_type, "pattern_type": p.pattern_type,
        "description": p.description, "support_count": p.support_count, "success_rate": p.success_rate,
        "baseline_success_rate": p.baseline_success_rate, "confidence": p.confidence,
        "evidence_execution_ids": p.evidence_execution_ids[:MAX_EVIDENCE_IDS],
        # optional extensions (no version bump needed, contract §2)
        "task_type": p.task_type, "tool_sequence": p.tool_sequence, "polarity": p.polarity, "p_value": p.p_value,
        "q_value": p.q_value, "lift": p.lift,
    }


def _recommended_data(agent_type: str, patterns: list[BehavioralPattern], trace_count: int) -> dict[str, Any]:
    # The evidence block reports the weakest recommended pattern (largest p, smallest improvement): a conservative
    # summary, since every listed behaviour individually passed the gates.
    return {
        "agent_type": agent_type,
        "recommended_behaviors": [
            {"pattern_id": p.pattern_id, "task_type": p.task_type, "tool_sequence": p.tool_sequence,
             "description": p.description} for p in patterns
        ],
        "confidence_scores": {p.pattern_id: p.confidence for p in patterns},
        "evidence": {
            "trace_count": trace_count,
            "p_value": max(p.p_value for p in patterns),
            "improvement": min(p.improvement for p in patterns),
        },
    }

"""Turning joined records into training examples, reward signals and preference pairs (contract §1.10, §5.3, §5.5).

Pure functions over the dict records of ``events.records``: no I/O, so the extractor, the benchmark and the tests
share exactly one definition of what an example looks like.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime
from typing import Any

from ...events.json_text import canonical_dumps
from ...models._base import utcnow
from ...models.curriculum import DifficultyLevel, difficulty
from ...models.reward_signal import RewardSignal
from ...models.training_example import ExampleLabel, ExampleSource, TrainingExample, normalise_text
from .conversation import corrected_trace, trace_input, trace_messages, trace_tools, transcript_text

EXTRACTOR_VERSION = "1.0"
EXTRACTED_BY = "TrainingDataExtractor/1.0"
_EXAMPLE_NS = uuid.UUID("0c6f7c2e-4c1b-4b8e-9a57-1d07e0000002")
_EXAMPLE_NS_BYTES = _EXAMPLE_NS.bytes

OUTCOME_LABELS = {
    "success": ExampleLabel.SUCCESS,
    "failure": ExampleLabel.FAILURE,
    "constraint_violation": ExampleLabel.CONSTRAINT_VIOLATION,
    "timeout": ExampleLabel.TIMEOUT,
    "error": ExampleLabel.ERROR,
}
# Reward outcome per trace outcome when L06 gave no failure_classification (contract §3.6 lists four values;
# a plain functional failure carries no penalty of its own and is scored by q alone).
REWARD_OUTCOMES = {"success": "success", "failure": "success", "timeout": "timeout", "error": "error",
                   "constraint_violation": "constraint_violation"}

# Domain keywords of contract §5.3, first match wins.
_DOMAINS: list[tuple[str, re.Pattern[str]]] = [
    ("travel", re.compile(r"\b(flights?|hotels?|booking|book|trips?|destinations?)\b")),
    ("coding", re.compile(r"\b(code|program|debug|algorithm|functions?)\b")),
    ("qa", re.compile(r"\b(questions?|answer|know|research|facts?)\b")),
    ("planning", re.compile(r"\b(schedule|plan|organi[sz]e|timeline|events?)\b")),
]

PLANNING_SYSTEM_PROMPT = "You are the platform's planner. Write the plan for the user's goal, one step per line."


def classify_domain(text: str, hint: str | None = None) -> str:
    """Domain by keyword (contract §5.3); the event's hint, else ``general`` (E7026) when nothing matches."""
    low = text.lower()
    for name, pattern in _DOMAINS:
        if pattern.search(low):
            return name
    return hint or "general"


def task_complexity(tool_steps: int) -> str:
    """``single_step`` (0 tool steps), ``multi_step`` (1–3), ``reasoning`` (> 3)."""
    if tool_steps == 0:
        return "single_step"
    return "multi_step" if tool_steps <= 3 else "reasoning"


def canonical_json(value: Any) -> str:
    """Sorted-key compact JSON, the canonical form used for hashes and prompts (finite numbers only, as records are)."""
    return canonical_dumps(value)


def prompt_hash(input_text: str) -> str:
    """sha256 of the normalised input: the key under which executions of the same task are paired (§5.5)."""
    return hashlib.sha256(normalise_text(input_text).encode("utf-8")).hexdigest()


def pick_score(scores: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The winning score (human_review beats automated, then latest) and whether two scores conflict (> 20 points).

    A winning human review is the person's call already made, so it settles a conflict instead of sending it to
    REVIEW again."""
    best = max(scores, key=lambda s: (s["evaluation_method"] == "human_review", s.get("timestamp") or "", s["_seq"]))
    qs = [s["quality_score"] for s in scores]
    conflict = len(qs) > 1 and max(qs) - min(qs) > 20 and best["evaluation_method"] != "human_review"
    return best, conflict


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_EXAMPLE_NS, name))`` without building UUID objects (two to three ids per example)."""
    digest = bytearray(hashlib.sha1(_EXAMPLE_NS_BYTES + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def example_id_for(source_type: ExampleSource, key: str) -> str:
    """Deterministic id, so a replayed join produces the same example id."""
    return _uuid5(f"{source_type.value}:{key}")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def trace_example(
    trace: dict[str, Any], score: dict[str, Any], event_ids: list[str], *, score_conflict: bool = False,
    source_type: ExampleSource = ExampleSource.EXECUTION_TRACE, output_text: str | None = None,
) -> TrainingExample:
    """An SFT example from a trace joined with its score: the agent's conversation with its tool calls and the tool
    schemas it was offered (``conversation.py``), or, for a reviewer's correction, the goal and the corrected
    answer."""
    steps = trace["steps"]
    tool_steps = [s for s in steps if s["action_type"] == "tool_call"]
    tools = {s["tool"] for s in tool_steps}
    quality = score["quality_score"]
    diff = difficulty(len(steps), len(tools), quality)
    task_type = trace.get("task_type") or score.get("task_type") or "general"
    input_text = trace_input(trace)
    taught = trace if output_text is None else corrected_trace(trace, output_text)
    messages = trace_messages(taught)
    output = transcript_text(messages)
    domain = classify_domain(trace["goal"], trace.get("domain"))
    label = OUTCOME_LABELS.get(trace["outcome"], ExampleLabel.UNKNOWN)
    if source_type is ExampleSource.QUALITY_FEEDBACK:
        label = ExampleLabel.SUCCESS
    reasoning = "\n".join(s["reasoning"] for s in steps if s["reasoning"])
    metadata = {
        "agent_id": trace["agent_id"],
        "task_type": task_type,
        "trace_id": trace["execution_id"],
        "timestamp": trace.get("end_time"),
        "pii_redacted": False,
        "score_conflict": score_conflict,
        "scan_flags": [],
        "evaluation_method": score["evaluation_method"],
        "evaluation_id": score["evaluation_id"],
        # "trace": the agent sent its schemas; "derived": inferred from this trace's calls (merged per task type
        # when a dataset is trained or judged, ``TrainingExample.chat_row``).
        "tools_source": "trace" if trace.get("tools") or trace.get("messages") else "derived",
    }
    if trace.get("context_invalid"):
        metadata["context_error"] = "E7017"
    if trace.get("tokens_used") is not None:
        metadata["tokens_used"] = trace["tokens_used"]
    key = trace["execution_id"]
    return TrainingExample(
        example_id=example_id_for(source_type, key),
        source_type=source_type,
        input_text=input_text,
        output_text=output,
        quality_score=quality,
        confidence=score["confidence"],
        metadata=metadata,
        labels=[domain, f"outcome:{label.value}"],
        execution_id=trace["execution_id"],
        task_id=trace.get("task_id"),
        agent_id=trace["agent_id"],
        task_type=task_type,
        task_complexity=task_complexity(len(tool_steps)),
        domain=domain,
        difficulty=diff,
        difficulty_level=DifficultyLevel.from_score(diff),
        execution_length=len(steps),
        tool_count=len(tools),
        input_structured=trace.get("context") or {},
        expected_actions=[
            {"type": s["action_type"], "tool": s["tool"], "params": s["parameters"], "reasoning": s["reasoning"]}
            for s in steps
        ],
        final_answer=taught["final_answer"],
        reasoning=reasoning,
        execution_timestamp=_parse_time(trace.get("end_time")),
        extraction_version=EXTRACTOR_VERSION,
        extracted_by=EXTRACTED_BY,
        source_trace_hash=hashlib.sha256(canonical_json(trace).encode("utf-8")).hexdigest(),
        source_event_ids=event_ids,
        messages=messages,
        tools=trace_tools(taught),
    )


def plan_example(plan: dict[str, Any], score: dict[str, Any], event_ids: list[str]) -> TrainingExample:
    """A PLANNING_TRACE example: goal + constraints in, plan steps out (contract §1.10)."""
    constraints = [f"{c.get('type', 'constraint')} (priority {c.get('priority', 1)})" for c in plan["constraints"]]
    input_text = plan["goal"] + ("\nConstraints: " + ", ".join(constraints) if constraints else "")
    output_text = "\n".join(f"{i}. {s}" for i, s in enumerate(plan["plan_steps"], 1))
    quality = score["quality_score"]
    n = len(plan["plan_steps"])
    diff = difficulty(n, 0, quality)
    task_type = plan.get("task_type") or score.get("task_type") or "planning"
    domain = classify_domain(plan["goal"], "planning")
    success = (plan.get("outcome") or {}).get("success")
    label = ExampleLabel.UNKNOWN if success is None else (ExampleLabel.SUCCESS if success else ExampleLabel.FAILURE)
    return TrainingExample(
        example_id=example_id_for(ExampleSource.PLANNING_TRACE, plan["plan_id"]),
        source_type=ExampleSource.PLANNING_TRACE,
        input_text=input_text,
        output_text=output_text,
        quality_score=quality,
        confidence=score["confidence"],
        metadata={
            "agent_id": plan.get("agent_id") or "planner",
            "task_type": task_type,
            "trace_id": plan["execution_id"],
            "plan_id": plan["plan_id"],
            "pii_redacted": False,
            "score_conflict": False,
            "scan_flags": [],
            "evaluation_method": score["evaluation_method"],
        },
        labels=[domain, f"outcome:{label.value}"],
        execution_id=plan["plan_id"],
        agent_id=plan.get("agent_id") or "planner",
        task_type=task_type,
        task_complexity=task_complexity(n),
        domain=domain,
        difficulty=diff,
        difficulty_level=DifficultyLevel.from_score(diff),
        execution_length=n,
        input_constraints=constraints,
        final_answer=output_text,
        source_trace_hash=hashlib.sha256(canonical_json(plan).encode("utf-8")).hexdigest(),
        source_event_ids=event_ids,
        messages=[
            {"role": "system", "content": PLANNING_SYSTEM_PROMPT},
            {"role": "user", "content": input_text},
            {"role": "assistant", "content": output_text},
        ],
    )


def signal_id(execution_id: str, evaluation_id: str) -> str:
    """Deterministic id of the reward signal of one evaluation of one execution."""
    return _uuid5(f"reward:{execution_id}:{evaluation_id}")


def reward_signal(score: dict[str, Any], outcome: str | None, task_type: str, processed: bool) -> RewardSignal:
    """The score as an unprocessed RewardSignal; ``services.reward_signals.compute_rewards`` fills the r values."""
    reward_outcome = score.get("failure_classification") or REWARD_OUTCOMES.get(outcome or "success", "success")
    return RewardSignal(
        signal_id=signal_id(score["execution_id"], score["evaluation_id"]),
        execution_id=score["execution_id"],
        evaluation_id=score["evaluation_id"],
        quality_score=score["quality_score"],
        confidence_level=score["confidence"],
        outcome=reward_outcome,
        task_type=task_type,
        metrics=score.get("metrics") or {},
        evaluation_method=score["evaluation_method"],
        timestamp=_parse_time(score.get("timestamp")) or utcnow(),
        processed_by_learning=processed,
    )

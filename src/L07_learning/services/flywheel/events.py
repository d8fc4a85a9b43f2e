"""An attempt as the platform reports it: the L02 trace (with the serving model in ``metadata``) and the L06 score the
evaluator derives from the checker's verdict, as CloudEvents lines for ``l07 run``'s watched folder."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .environment import SYSTEM_PROMPT, TASK_TYPE, TOOLS, Task, Verdict, execute

TRACE = "com.agentic.execution.trace_generated"
SCORE = "com.agentic.evaluation.quality_score_computed"
L02 = "https://agentic.local/layers/l02"
L06 = "https://agentic.local/layers/l06"


@dataclass(frozen=True)
class Attempt:
    """Who answered a task (``served_by``: a registry model id, or the expert's name), what it called, the
    verdict and how long the answer took."""

    task: Task
    agent_id: str
    served_by: str
    registered: bool
    calls: list[tuple[str, Any]]
    verdict: Verdict
    latency_s: float
    at: datetime


def _envelope(type_: str, source: str, data: dict[str, Any], at: datetime) -> str:
    return json.dumps({"specversion": "1.0", "type": type_, "source": source, "id": str(uuid.uuid4()),
                       "time": at.isoformat().replace("+00:00", "Z"), "datacontenttype": "application/json",
                       "data": data})


def attempt_lines(a: Attempt, task_type: str = TASK_TYPE) -> list[str]:
    """The trace and score lines of one attempt; ``task_type`` lets the fault injection file its corrupted labels
    apart from the live task type."""
    execution_id = f"exec-{a.task.task_id}"
    steps = [{"step": i + 1, "action": name, "parameters": args if isinstance(args, dict) else {"raw": str(args)},
              "output": execute(name, args if isinstance(args, dict) else {})}
             for i, (name, args) in enumerate(a.calls)]
    if not steps:
        steps = [{"step": 1, "action": "answer", "parameters": {}, "output": "no tool call"}]
    at = a.at.isoformat()
    # The serving model: a registry id joins the outcome series of that release; the expert is an external name.
    served = {"model_id": a.served_by} if a.registered else {"model_name": a.served_by}
    trace = {"execution_id": execution_id, "agent_id": a.agent_id, "task_id": a.task.task_id, "task_type": task_type,
             "task_definition": {"goal": a.task.goal, "system_prompt": SYSTEM_PROMPT, "tools": TOOLS},
             "execution_trace": steps, "final_answer": steps[0]["output"],
             "outcome": "success" if a.verdict.success else "failure", "end_time": at,
             "metadata": {"execution_duration_seconds": round(a.latency_s, 4), "tool_calls": len(a.calls), **served}}
    score = {"execution_id": execution_id, "quality_score": a.verdict.quality, "confidence_level": 0.95,
             "task_type": task_type, "failure_classification": "success" if a.verdict.success else None,
             "evaluation_method": "automated", "timestamp": at,
             "metrics": {"goal_achievement_rate": 1.0 if a.verdict.success else 0.0},
             "dimensions": {"correctness": a.verdict.quality}}
    return [_envelope(TRACE, L02, trace, a.at), _envelope(SCORE, L06, score, a.at)]

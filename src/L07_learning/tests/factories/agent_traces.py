"""Clean agent examples from task families of their own (support triage, SQL reports, code fixes, travel), with
the spread of a real fleet: several agents, 0-8 steps, L06 quality 75-98 and confidence 0.85-0.99.

Written for the review-share calibration (issue 19) and deliberately unlike ``curation.make_example`` (one shape,
quality 92) and the demo's generator, so the filter defaults are measured on data they were not tuned on.
"""

from __future__ import annotations

import random

from L07_learning.models import ExampleSource, TrainingExample

FAMILIES: dict[str, tuple[str, int, str, str]] = {
    "ticket_triage": ("support", 4, "Customer {n} reports that the {a} page shows {b} after the {c} update; triage it",
                      "Looked up the account, matched KB article {k} about {a}, set priority {p} and replied"),
    "sql_report": ("analytics", 3, "Report the weekly {a} totals per {b} for the {c} region since week {n}",
                   "Ran a grouped query over {a} by {b}; {k} rows, the {c} region peaked in week {p}"),
    "code_fix": ("coding", 3, "Fix the failing test test_{a}_{b} in module {c} (issue {n})",
                 "The {a} helper ignored {b}; patched line {k} in {c}.py and the {p} tests pass"),
    "travel": ("travel", 3, "Plan a {n}-day trip to {a} for a {b} conference near {c}",
               "Booked flight {k} and a hotel {p} minutes from {c}; itinerary for {a} attached"),
}
WORDS = ("amber delta harbor kernel ledger matrix orbit prism quarry relay summit tunnel vector zenith falcon glacier "
         "lantern meadow socket timber").split()
STEPS = [0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8]


def fleet_examples(n: int, seed: int = 0, agents: int = 6, families: list[str] | None = None,
                   quality: tuple[float, float] = (75.0, 98.0),
                   confidence: tuple[float, float] = (0.85, 0.99)) -> list[TrainingExample]:
    """``n`` clean examples; ``agents=1`` is a single-agent deployment, ``families`` narrows the task mix."""
    rng = random.Random(seed)
    names = families or list(FAMILIES)
    out = []
    for i in range(n):
        family = rng.choice(names)
        domain, tools, goal, answer = FAMILIES[family]

        def word() -> str:
            return f"{rng.choice(WORDS)}{rng.randint(1, 999)}"

        steps = rng.choice(STEPS)
        out.append(TrainingExample(
            example_id=f"fleet-{seed}-{i}", source_type=ExampleSource.EXECUTION_TRACE,
            input_text=goal.format(n=rng.randint(1, 99999), a=word(), b=word(), c=word()),
            output_text=answer.format(k=rng.randint(1, 9999), p=rng.randint(1, 99), a=word(), b=word(), c=word()),
            quality_score=round(rng.uniform(*quality), 1), confidence=round(rng.uniform(*confidence), 3),
            metadata={"agent_id": f"agent-{rng.randrange(agents)}", "task_type": family},
            execution_id=f"fleet-exec-{seed}-{i}", task_type=family, domain=domain,
            execution_length=steps, tool_count=min(steps, tools),
        ))
    return out

"""A deterministic, learnable tool-selection task for SFT tests and ``benchmarks/sft.py``.

Each example asks which tool serves a user request; the answer is one tool name, fixed by the request's topic. A base
model answers in prose (exact match 0); a model that learned the mapping answers exactly.
"""

from __future__ import annotations

import random

from L07_learning.models import ExampleSource, TrainingExample

TOOLS: dict[str, list[str]] = {
    "get_weather": ["the forecast in {city}", "whether it will rain in {city}", "the temperature in {city}"],
    "send_email": ["mailing {person} the report", "an email to {person}", "writing {person} a message by mail"],
    "create_event": ["a meeting with {person} on {day}", "booking {day} for a call with {person}",
                     "a calendar slot on {day}"],
    "web_search": ["news about {topic}", "looking up {topic} online", "articles on {topic}"],
    "calculator": ["{a} times {b}", "the sum of {a} and {b}", "{a} divided by {b}"],
    "translate_text": ["putting '{phrase}' into French", "the German for '{phrase}'", "translating '{phrase}'"],
}
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Denver", "Perth", "Quito"]
PEOPLE = ["Ana", "Bob", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana"]
DAYS = ["Monday", "Tuesday", "Friday", "Sunday"]
TOPICS = ["solar power", "chess", "the stock market", "volcanoes", "jazz", "rust programming"]
PHRASES = ["good morning", "thank you", "where is the station", "see you soon"]
SYSTEM = "You route requests to tools. Reply with the tool name only."


def tool_rows(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` chat examples (system, user, assistant=tool name), balanced over tools, deterministic for a seed."""
    rng = random.Random(seed)
    names = sorted(TOOLS)
    rows = []
    for i in range(n):
        tool = names[i % len(names)]
        template = rng.choice(TOOLS[tool])
        request = template.format(city=rng.choice(CITIES), person=rng.choice(PEOPLE), day=rng.choice(DAYS),
                                  topic=rng.choice(TOPICS), phrase=rng.choice(PHRASES), a=rng.randint(2, 99),
                                  b=rng.randint(2, 99))
        rows.append([
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Which tool handles: {request}?"},
            {"role": "assistant", "content": tool},
        ])
    rng.shuffle(rows)
    return rows


def tool_examples(n: int, seed: int = 0) -> list[TrainingExample]:
    """The same task as ``TrainingExample`` objects (accepted-quality, one task type per tool)."""
    out = []
    for i, row in enumerate(tool_rows(n, seed)):
        out.append(TrainingExample(
            example_id=f"tool-{seed}-{i}",
            source_type=ExampleSource.EXECUTION_TRACE,
            input_text=row[1]["content"],
            output_text=row[2]["content"],
            quality_score=90.0,
            confidence=0.95,
            metadata={"task_type": "tool_selection", "tool": row[2]["content"]},
        ))
    return out

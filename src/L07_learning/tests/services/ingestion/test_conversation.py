"""Traces become the conversation the agent had (issue 20): the agent's system prompt and tool schemas when it sent
them, its raw transcript verbatim when present, and a clear E7110 for a malformed one."""

from __future__ import annotations

import json

import pytest

from L07_learning.models import L07ErrorCode
from L07_learning.services.training_data_extractor import TrainingDataExtractor
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.events import RejectedEventRepository
from L07_learning.tests.services.ingestion.test_extractor import cfg, score_event, trace_event  # noqa: F401 - fixture

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city and day",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "day": {"type": "string"}},
                   "required": ["city"]}}}


async def test_agent_system_prompt_and_tool_schemas_are_kept(db: Database, cfg: Settings) -> None:
    ev = trace_event("conv-1", goal="Weather in Rome on Tuesday?", answer="Sunny, 16C.")
    ev["data"]["task_definition"] = {"goal": "Weather in Rome on Tuesday?", "system_prompt": "You are WeatherBot.",
                                     "tools": [WEATHER_TOOL]}
    ev["data"]["execution_trace"] = [{"step": 1, "action": "get_weather",
                                      "parameters": {"city": "Rome", "day": "Tuesday"},
                                      "output": {"temp_c": 16, "sky": "sunny"}}]
    [ex] = await TrainingDataExtractor(db=db, settings=cfg).extract_batch([ev, score_event("conv-1")])
    assert ex.messages[0] == {"role": "system", "content": "You are WeatherBot."}
    assert ex.tools == [WEATHER_TOOL]  # as sent, description included
    call = ex.messages[2]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Rome", "day": "Tuesday"}
    tool_turn = ex.messages[3]
    assert tool_turn["role"] == "tool" and tool_turn["tool_call_id"] == call["id"]
    assert json.loads(tool_turn["content"]) == {"sky": "sunny", "temp_c": 16}
    assert ex.chat_row() == {"messages": ex.messages, "tools": [WEATHER_TOOL]}


async def test_raw_transcript_is_used_verbatim(db: Database, cfg: Settings) -> None:
    transcript = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "rain, 7C"},
        {"role": "assistant", "content": "Rain, 7C."},
    ]
    ev = trace_event("conv-2", goal="Weather in Oslo?", answer="Rain, 7C.", messages=transcript)
    [ex] = await TrainingDataExtractor(db=db, settings=cfg).extract_batch([ev, score_event("conv-2")])
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert ex.messages[1]["content"] == "Weather in Oslo?"  # content parts joined
    assert ex.messages[2]["content"] == "Let me check."
    assert ex.messages[2]["tool_calls"][0] == {"id": "call_abc", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
    assert ex.messages[-1]["content"] == "Rain, 7C."


@pytest.mark.parametrize("field,value", [
    ("messages", [{"role": "robot", "content": "hi"}]),
    ("messages", [{"role": "assistant", "content": "no user turn"}]),
    ("messages", [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"function": {}}]}]),
    ("tools", [{"type": "function", "function": {"description": "no name"}}]),
    ("system_prompt", 42),
])
async def test_malformed_transcript_fields_are_rejected_with_e7110(db: Database, cfg: Settings, field: str,
                                                                   value: object) -> None:
    ev = trace_event("conv-bad")
    if field == "messages":
        ev["data"]["messages"] = value
    else:
        ev["data"]["task_definition"][field] = value
    examples = await TrainingDataExtractor(db=db, settings=cfg).extract_batch([ev, score_event("conv-bad")])
    assert examples == []
    async with db.session() as s:
        [rejected] = await RejectedEventRepository(s).list()
    assert rejected.code == L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH.value


async def test_derived_schemas_are_merged_per_task_type_so_the_model_must_choose(db: Database, cfg: Settings) -> None:
    from L07_learning.services.curation.rows import derived_tools_by_task

    a = trace_event("conv-a", goal="Weather in Rome?", answer="Sunny.")
    a["data"]["execution_trace"] = [{"step": 1, "action": "get_weather", "parameters": {"city": "Rome"}, "output": "sun"}]
    b = trace_event("conv-b", goal="Convert 3 m to ft", answer="9.84 ft")
    b["data"]["execution_trace"] = [{"step": 1, "action": "unit_convert",
                                     "parameters": {"value": 3, "from": "m", "to": "ft"}, "output": "9.84"}]
    examples = await TrainingDataExtractor(db=db, settings=cfg).extract_batch(
        [a, score_event("conv-a"), b, score_event("conv-b")])
    assert [[t["function"]["name"] for t in ex.tools] for ex in examples] == [["get_weather"], ["unit_convert"]]
    merged = derived_tools_by_task(examples)["flight_booking"]
    for ex in examples:
        assert [t["function"]["name"] for t in ex.chat_row(derived_tools=merged)["tools"]] == [
            "get_weather", "unit_convert"]

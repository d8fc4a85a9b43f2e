"""Training examples extracted from execution, planning and feedback traces (contract §3.1)."""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field, field_validator

from ._base import L07Model, new_id, utcnow
from .curriculum import DifficultyLevel


class ExampleSource(str, Enum):
    """Where an example came from."""

    EXECUTION_TRACE = "EXECUTION_TRACE"
    PLANNING_TRACE = "PLANNING_TRACE"
    QUALITY_FEEDBACK = "QUALITY_FEEDBACK"
    # Data brought from elsewhere (an OpenAI training file, a Langfuse or LangSmith export, a Hugging Face dataset):
    # ``l07 import`` and ``/v1/files``; its provenance is in ``metadata["import"]``.
    IMPORTED = "IMPORTED"


class ExampleLabel(str, Enum):
    """Outcome label of the execution behind an example."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CONSTRAINT_VIOLATION = "CONSTRAINT_VIOLATION"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"
    UNKNOWN = "UNKNOWN"


class ExampleStatus(str, Enum):
    """Filter decision stored with an example (contract §5.2)."""

    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REVIEW = "REVIEW"
    REJECTED = "REJECTED"
    QUARANTINED = "QUARANTINED"


_WS_RE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """NFKC, lower-cased, whitespace-collapsed text: the dedup normal form of contract §5.2."""
    if text.isascii():
        # Same result, several times faster: NFKC leaves ASCII alone, and ``str.split`` breaks on exactly the
        # characters ``\s`` matches.
        return " ".join(text.lower().split())
    return _WS_RE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def compute_content_hash(input_text: str, output_text: str) -> str:
    """sha256 over the normalised ``input | output`` pair (contract §5.2 rule 4)."""
    payload = normalise_text(input_text) + "\u241f" + normalise_text(output_text)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class TrainingExample(L07Model):
    """One supervised example plus its provenance and quality signals.

    ``metadata`` must carry ``agent_id`` and ``task_type`` (the seed's smoke example puts them there); the
    top-level mirrors are filled from it when absent.
    """

    example_id: str = Field(default_factory=new_id, min_length=1)
    source_type: ExampleSource
    input_text: str = Field(min_length=1)
    output_text: str = Field(min_length=1)
    quality_score: float = Field(ge=0, le=100)
    confidence: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)

    execution_id: str | None = None
    task_id: str | None = None
    agent_id: str | None = None
    example_type: str = "supervised"
    task_type: str = "general"
    task_complexity: str = "single_step"
    domain: str = "general"
    difficulty: float = Field(default=0.5, ge=0, le=1)
    difficulty_level: DifficultyLevel | None = None
    execution_length: int = Field(default=0, ge=0)
    tool_count: int = Field(default=0, ge=0)
    input_structured: dict[str, Any] = Field(default_factory=dict)
    expected_actions: list[dict[str, Any]] = Field(default_factory=list)
    final_answer: str = ""
    reasoning: str = ""
    input_constraints: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    execution_timestamp: datetime | None = None
    extraction_version: str = "1.0"
    extracted_by: str = "TrainingDataExtractor/1.0"
    source_trace_hash: str | None = None
    content_hash: str = ""
    source_event_ids: list[str] = Field(default_factory=list)
    # The conversation the agent had, in OpenAI's chat schema (assistant ``tool_calls``, ``tool`` turns), and the
    # OpenAI tool schemas it was offered: what training renders and the validator replays (``models/tool_calls.py``).
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    status: ExampleStatus = ExampleStatus.PENDING
    tenant_id: str | None = None
    notes: str | None = None

    @field_validator("quality_score", "confidence")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("example_type")
    @classmethod
    def _example_type(cls, v: str) -> str:
        if v not in {"supervised", "rl_reward", "behavioral"}:
            raise ValueError("example_type must be supervised, rl_reward or behavioral")
        return v

    def model_post_init(self, __context: Any) -> None:
        md = self.metadata
        if self.agent_id is None and md.get("agent_id"):
            object.__setattr__(self, "agent_id", str(md["agent_id"]))
        if self.task_type == "general" and md.get("task_type"):
            object.__setattr__(self, "task_type", str(md["task_type"]))
        if self.execution_id is None and md.get("execution_id"):
            object.__setattr__(self, "execution_id", str(md["execution_id"]))
        if self.difficulty_level is None:
            object.__setattr__(self, "difficulty_level", DifficultyLevel.from_score(self.difficulty))
        if not self.content_hash:
            object.__setattr__(self, "content_hash", compute_content_hash(self.input_text, self.output_text))

    def chat_row(self, system_prompt: str | None = None,
                 derived_tools: list[dict[str, Any]] | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        """What training and evaluation consume: the chat messages, with the tool schemas when the example has
        any (``{"messages": [...], "tools": [...]}``, OpenAI's fine-tuning line format).

        Args:
            system_prompt: For examples without stored messages.
            derived_tools: Replaces schemas L07 derived from this example's own calls (``metadata.tools_source ==
                "derived"``), typically the merged schemas of its task type in the dataset.
        """
        messages = self.chat_messages(system_prompt)
        tools = self.tools
        if tools and derived_tools and self.metadata.get("tools_source") == "derived":
            tools = derived_tools
        return {"messages": messages, "tools": [dict(t) for t in tools]} if tools else messages

    def chat_messages(self, system_prompt: str | None = None) -> list[dict[str, str]]:
        """The example as chat messages (system + user + assistant) that TRL's SFTTrainer accepts as they are."""
        if self.messages:
            return [dict(m) for m in self.messages]
        msgs: list[dict[str, str]] = []
        if system_prompt:
            msgs.append({"role": "system", "content": system_prompt})
        msgs.append({"role": "user", "content": self.input_text})
        msgs.append({"role": "assistant", "content": self.output_text})
        return msgs

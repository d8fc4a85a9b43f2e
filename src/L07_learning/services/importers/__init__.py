"""Importers: data teams already hold (OpenAI fine-tuning files, Langfuse and LangSmith exports, Hugging Face
datasets) into L07 examples or preference pairs, with provenance, through the quality filter, with a per-line
report. One module per format reads records (``records.Record``); ``run.Importer`` filters and stores them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from . import hf, langfuse, langsmith, openai_chat, openai_preference
from .records import Record, Source

Reader = Callable[[Path, Source], Iterator[Record]]

FORMATS: dict[str, Reader] = {
    "openai-chat": openai_chat.read,
    "openai-preference": openai_preference.read,
    "langfuse": langfuse.read,
    "langsmith": langsmith.read,
    "hf": hf.read,
}
"""Importer per format name (``l07 import FORMAT``, ``POST /api/v1/imports``)."""

CURATED_FORMATS = frozenset({"openai-chat", "openai-preference", "hf"})
"""Formats that are training files a person assembled: their lines are the answers wanted, so they get the declared
quality by default. Traces (Langfuse, LangSmith) are what a model did; unscored ones go to REVIEW unless the caller
declares a quality."""

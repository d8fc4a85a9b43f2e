"""One loaded model answering chat requests: what ``l07 serve-model`` serves (the HTTP side is ``api/serving.py``).

Loading and generation go through the same inference backend validation uses (``pipelines/backends``: an adapter is
merged onto its base, decoding is greedy), and prompts through the one tool-call format (``models/tool_calls.py``), so a
served model answers as it did when it was validated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...models.tool_calls import render_chat
from ...pipelines.backends import InferenceBackend, TransformersBackend, load_backend
from ...pipelines.generation import GenerationResult


class ServedModel:
    """A model in one inference engine (``L07_INFERENCE_BACKEND``: llama.cpp when installed on a CPU, vLLM on a GPU,
    else transformers). Not re-entrant: :class:`~.batcher.Batcher` runs one generation at a time.

    Args:
        tokenizer: The model's tokenizer.
        model: A loaded transformers model, or an :class:`InferenceBackend` (then it brings its own tokenizer).
    """

    def __init__(self, tokenizer: Any, model: Any) -> None:
        self.backend: InferenceBackend = model if isinstance(model, InferenceBackend) else TransformersBackend(
            tokenizer, model)
        self.tokenizer = self.backend.tokenizer

    @classmethod
    def load(cls, model_dir: str, adapter_dir: str | None, backend: str | None = None) -> "ServedModel":
        """Load verified files from ``model_dir`` (and merge the adapter in ``adapter_dir`` when given)."""
        loaded = load_backend(model_dir, adapter_dir, backend)
        return cls(loaded.tokenizer, loaded)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        """The prompt text for a chat and its tools, generation prompt included."""
        return render_chat(self.tokenizer, messages, tools)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate_batch(self, texts: list[str], limits: list[int]) -> list[GenerationResult]:
        """Greedy answers to rendered prompts, in one batch."""
        return self.backend.generate_rendered(texts, max(limits), limits)

    def stream(self, text: str, limit: int) -> Iterator[str]:
        """Greedy answer to one rendered prompt, yielded as text pieces while it is produced."""
        yield from self.backend.stream(text, limit)

"""One loaded model answering chat requests: what ``l07 serve-model`` serves (the HTTP side is ``api/serving.py``).

Loading goes through the evaluation pipeline's loader (an adapter is merged onto its base) and generation through the
same greedy decoder validation uses, and prompts through the one tool-call format (``models/tool_calls.py``), so a
served model answers as it did when it was validated.
"""

from __future__ import annotations

from collections.abc import Iterator
from threading import Thread
from typing import Any

from ...models.tool_calls import render_chat
from ...pipelines.evaluation_pipeline import load_for_eval
from ...pipelines.generation import GenerationResult, generate_rendered


class ServedModel:
    """A tokenizer and model in memory. Not re-entrant: :class:`~.batcher.Batcher` runs one forward pass at a time.

    Args:
        tokenizer: The model's tokenizer.
        model: The loaded model.
    """

    def __init__(self, tokenizer: Any, model: Any) -> None:
        self.tokenizer = tokenizer
        self.model = model

    @classmethod
    def load(cls, model_dir: str, adapter_dir: str | None) -> "ServedModel":
        """Load verified files from ``model_dir`` (and merge the adapter in ``adapter_dir`` when given)."""
        tokenizer, model = load_for_eval(model_dir, adapter_dir)
        return cls(tokenizer, model)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        """The prompt text for a chat and its tools, generation prompt included."""
        return render_chat(self.tokenizer, messages, tools)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate_batch(self, texts: list[str], limits: list[int]) -> list[GenerationResult]:
        """Greedy answers to rendered prompts, in one forward batch."""
        return generate_rendered(self.tokenizer, self.model, texts, max(limits), limits)

    def stream(self, text: str, limit: int) -> Iterator[str]:
        """Greedy answer to one rendered prompt, yielded as text pieces while it is produced."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = Thread(target=generate_rendered, args=(self.tokenizer, self.model, [text], limit),
                        kwargs={"streamer": streamer}, daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            worker.join()

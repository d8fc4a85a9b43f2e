"""The reference engine: transformers ``generate`` (what every other backend's answers are compared against)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any

from ..generation import generate_rendered, load_model
from .base import InferenceBackend


class TransformersBackend(InferenceBackend):
    """A transformers model (LoRA adapter merged) in eval mode.

    Args:
        tokenizer: The model's tokenizer (left padding).
        model: The loaded model.
    """

    name = "transformers"

    def __init__(self, tokenizer: Any, model: Any) -> None:
        self.tokenizer = tokenizer
        self.model = model

    @classmethod
    def load(cls, model_dir: str | Path, adapter_dir: str | Path | None = None) -> "TransformersBackend":

        tokenizer, model = load_model(model_dir, adapter_dir)
        if adapter_dir is not None and hasattr(model, "merge_and_unload"):
            # Merged, so latency compares like with like across candidates and engines.
            model = model.merge_and_unload()
            model.eval()
        return cls(tokenizer, model)

    def generate_rendered(self, texts: list[str], max_new_tokens: int, limits: list[int] | None = None,
                          ignore_stop: bool = False) -> list[Any]:

        return generate_rendered(self.tokenizer, self.model, texts, max_new_tokens, limits, ignore_stop=ignore_stop)

    def stream(self, text: str, limit: int) -> Iterator[str]:
        from transformers import TextIteratorStreamer


        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = Thread(target=generate_rendered, args=(self.tokenizer, self.model, [text], limit),
                        kwargs={"streamer": streamer}, daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            worker.join()

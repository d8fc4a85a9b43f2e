"""One loaded model answering chat requests: what ``l07 serve-model`` serves (the HTTP side is ``api/serving.py``).

Loading goes through the evaluation pipeline's loader (an adapter is merged onto its base) and generation through the
same greedy decoder validation uses, so a served model answers as it did when it was validated.
"""

from __future__ import annotations

from typing import Any

from ...pipelines.evaluation_pipeline import load_for_eval
from ...pipelines.generation import GenerationResult, generate_with


class ServedModel:
    """A tokenizer and model in memory (not re-entrant: callers run one generation at a time).

    Args:
        tokenizer: The model's tokenizer (with a chat template).
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

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Number of tokens the chat template makes of ``messages``, generation prompt included."""
        return len(self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))

    def generate(self, messages: list[dict[str, Any]], max_tokens: int) -> GenerationResult:
        """The greedy answer to one chat."""
        return generate_with(self.tokenizer, self.model, [messages], max_tokens, 1)[0]

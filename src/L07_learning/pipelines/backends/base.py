"""What every inference engine offers the validator and ``serve-model``: greedy answers to rendered prompts.

Prompts are rendered and counted with the model's own Hugging Face tokenizer whatever the engine, so every backend
sees the same token ids and a served answer can be compared token for token across engines.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...models.error_codes import L07Error, L07ErrorCode

if TYPE_CHECKING:
    from ..generation import GenerationResult


class InferenceBackend(ABC):
    """One loaded model behind one engine. Not re-entrant: callers run one generation at a time.

    Attributes:
        name: The engine's setting value (``transformers``, ``llama_cpp``, ``vllm``).
        tokenizer: The model's Hugging Face tokenizer (rendering, counting and decoding).
    """

    name: str = ""
    tokenizer: Any

    @abstractmethod
    def generate_rendered(self, texts: list[str], max_new_tokens: int, limits: list[int] | None = None,
                          ignore_stop: bool = False) -> list["GenerationResult"]:
        """Greedy answers to prompt texts already rendered; ``limits`` caps each row below ``max_new_tokens``.
        ``ignore_stop`` decodes exactly ``max_new_tokens`` past any end-of-turn token (fixed work, for timing)."""

    @abstractmethod
    def stream(self, text: str, limit: int) -> Iterator[str]:
        """Greedy answer to one rendered prompt, yielded as text pieces while it is produced."""

    def prompt_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        """Free the engine's memory (engines that hold native memory override this)."""


def cut_at_stop(ids: list[int], stops: list[int], limit: int | None) -> list[int]:
    """New token ids up to ``limit`` and up to and including the first end-of-turn token, as transformers counts."""
    ids = ids[:limit] if limit is not None else list(ids)
    for i, tok in enumerate(ids):
        if tok in stops:
            return ids[: i + 1]
    return ids


# generation_config.json settings that change transformers' greedy answer and that the native engines do not apply.
_UNSUPPORTED_RULES = ("suppress_tokens", "begin_suppress_tokens", "bad_words_ids", "no_repeat_ngram_size",
                      "forced_bos_token_id", "forced_eos_token_id", "sequence_bias", "min_new_tokens", "min_length")


def refuse_decoding_rules(model_dir: Path, engine: str) -> None:
    """Raise E7208 when the model's generation config asks for decoding rules ``engine`` would silently ignore."""
    path = model_dir / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    rules = [k for k in _UNSUPPORTED_RULES if config.get(k) not in (None, [], 0)]
    if config.get("repetition_penalty") not in (None, 1, 1.0):
        rules.append("repetition_penalty")
    if rules:
        raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY,
                       f"{model_dir} asks for decoding rules the {engine} backend does not apply: {', '.join(rules)}")
